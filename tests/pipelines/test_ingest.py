"""ingest stage: reader dispatch, counts that add up, summary keys, outputs, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from pipelines.dicom.view import VIEWS
from pipelines.errors import ConfigError, SourceError
from pipelines.ingest import IngestParams, ingest, run_ingest
from pipelines.keys import DEMO_SALT, get_salt, salt_fingerprint
from pipelines.labels import FINDINGS
from pipelines.schema import MANIFEST_COLUMNS
from pipelines.sources import ReadOptions


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    for name, mode in [("a_pa.png", "L"), ("a_lat.png", "RGBA"), ("b_pa.jpg", "RGB")]:
        Image.fromarray(np.full((40, 30, len(mode)), 128, np.uint8).squeeze()).convert(mode).save(
            root / name,
            format="PNG",  # b_pa.jpg is a PNG named .jpg: detected from content
        )
    (root / "list.csv").write_text(
        "path,patient,study,view,labels\n"
        "a_pa.png,Mr Smith,st1,PA,Cardiomegaly\n"
        "a_lat.png,Mr Smith,st1,LL,Cardiomegaly\n"
        "b_pa.jpg,Ms Jones,st2,AP,No Finding\n"
        "missing.png,Ms Jones,st3,PA,\n"
        "a_pa.png,Mr Smith,st1,PA,Cardiomegaly\n"  # duplicate image
        "c.png,Mr X,st4,PA,Unicorn\n"  # label out of domain
    )
    return root


def test_ingest_counts_add_up_and_summary_is_stable(image_folder):
    manifest, rejected, summary = ingest(
        "csv", image_folder / "list.csv", ReadOptions(salt=get_salt())
    )
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert summary["inputs"] == 6 == len(manifest) + len(rejected)
    assert summary["images"] == 3
    assert summary["patients"] == 2
    assert summary["studies"] == 2
    assert summary["views"] == {"PA": 1, "AP": 1, "LATERAL": 1, "OTHER": 0}
    assert set(summary["views"]) == set(VIEWS)
    assert summary["rejected"] == {
        "missing_file": 1,
        "duplicate_image_id": 1,
        "label_out_of_domain": 1,
    }
    assert summary["labels"]["Cardiomegaly"] == {"positive": 2, "negative": 1, "missing": 0}
    assert {"images", "patients", "studies", "views", "rejected", "seconds"} <= set(summary)
    assert manifest.attrs["data_root"] == str(image_folder)
    sizes = manifest.set_index("path")[["width", "height"]]
    assert sizes.loc["b_pa.jpg"].tolist() == [30, 40]
    # no raw identifier reaches the manifest or the rejected file
    text = manifest.astype(str).to_csv() + rejected.to_csv()
    assert "Smith" not in text and "Jones" not in text


def test_run_ingest_writes_outputs(image_folder, tmp_path):
    out = tmp_path / "out"
    params = IngestParams(source="csv", input=str(image_folder / "list.csv"), out=str(out))
    summary = run_ingest(params)
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == summary["images"] == 3
    assert manifest.attrs["data_root"] == str(image_folder)  # kept through Parquet
    assert manifest[list(FINDINGS)].dtypes.unique().tolist() == [np.float32]
    rejected = pd.read_csv(out / "rejected.csv")
    assert list(rejected.columns) == ["source", "path", "reason", "detail"]
    assert len(rejected) == 3
    assert json.loads((out / "summary.json").read_text())["images"] == 3


def test_metadata_only_run_skips_files(image_folder):
    manifest, rejected, _ = ingest(
        "csv", image_folder / "list.csv", ReadOptions(salt=b"s", verify_files=False)
    )
    assert len(manifest) == 4  # missing.png is not looked for
    assert (manifest["width"] == 0).all()
    assert "missing_file" not in set(rejected["reason"])


def test_missing_column_names_file_and_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,patient,view\nx.png,p,PA\n")
    with pytest.raises(SourceError, match=r"bad\.csv.*study"):
        ingest("csv", bad, ReadOptions(salt=b"s"))


def test_unknown_source_and_missing_input(tmp_path):
    with pytest.raises(SourceError, match="unknown source"):
        ingest("dicomz", tmp_path, ReadOptions(salt=b"s"))
    with pytest.raises(SourceError, match="does not exist"):
        ingest("csv", tmp_path / "nope.csv", ReadOptions(salt=b"s"))


def test_the_written_summary_holds_results_not_timings(image_folder, tmp_path):
    """summary.json is a DVC output: the same inputs must give the same bytes on every run."""
    out = tmp_path / "out"
    params = IngestParams(source="csv", input=str(image_folder / "list.csv"), out=str(out))
    returned = run_ingest(params)
    written = json.loads((out / "summary.json").read_text())
    assert "seconds" in returned and "seconds" not in written
    first = (out / "summary.json").read_bytes()
    run_ingest(params)
    assert (out / "summary.json").read_bytes() == first
    assert written["salt"] == {"mode": "secret", "fingerprint": salt_fingerprint(get_salt())}


def test_the_demo_salt_is_refused_for_real_data(image_folder, tmp_path, synthetic_dicom):
    """The public demo salt only keys the synthetic dataset: with it, real keys are reversible."""
    params = IngestParams(
        source="csv", input=str(image_folder / "list.csv"), out=str(tmp_path / "o"), salt="demo"
    )
    with pytest.raises(ConfigError, match="for the embedded synthetic dataset only"):
        run_ingest(params)
    foreign = synthetic_dicom / "foreign.dcm"
    ds = pydicom.dcmread(next(synthetic_dicom.rglob("*.dcm")))
    ds.Manufacturer = "ACME radiography"
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.save_as(foreign)
    params = IngestParams(
        source="dicom", input=str(synthetic_dicom), labels=None, out=str(tmp_path / "d"),
        salt="demo", workers=1,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="foreign.dcm: not a file of the embedded synthetic"):
        run_ingest(params)
    foreign.unlink()
    summary = run_ingest(params)
    assert summary["salt"] == {"mode": "demo", "fingerprint": salt_fingerprint(DEMO_SALT)}


@pytest.fixture
def synthetic_dicom(tmp_path: Path) -> Path:
    """A few studies of the embedded dataset (DICOM only)."""
    from pipelines.synthetic import SynthesizeParams, synthesize

    out = tmp_path / "synthetic"
    synthesize(SynthesizeParams(out=out, studies=4, image_size=32, workers=1))
    (out / "labels.csv").unlink()
    return out


# --------------------------------------------------------------------------- several inputs


def test_several_inputs_make_one_manifest_with_unique_keys(image_folder, tmp_path, synthetic_dicom):
    twin = tmp_path / "twin"  # a second folder with the same patient and study ids
    twin.mkdir()
    for name in ("a_pa.png", "a_lat.png", "b_pa.jpg"):
        (twin / name).write_bytes((image_folder / name).read_bytes())
    (twin / "list.csv").write_text((image_folder / "list.csv").read_text())
    inputs = [
        {"name": "site-a", "source": "csv", "input": str(image_folder / "list.csv")},
        {"name": "site-b", "source": "csv", "input": str(twin / "list.csv"), "split": "test"},
        {"name": "demo", "source": "dicom", "input": str(synthetic_dicom / "dicom")},
    ]
    out = tmp_path / "out"
    summary = run_ingest(IngestParams(inputs=inputs, workers=1, out=str(out)))
    manifest = pd.read_parquet(out / "manifest.parquet")
    rejected = pd.read_csv(out / "rejected.csv")
    by = manifest.groupby("source")
    assert by.size().to_dict() == {
        "site-a": 3,
        "site-b": 3,
        "demo": summary["sources"]["demo"]["images"],
    }
    # the same ids in two inputs are two patients, two studies, two images
    a, b = (manifest[manifest["source"] == n] for n in ("site-a", "site-b"))
    for column in ("patient_key", "study_key", "image_id"):
        assert not set(a[column]) & set(b[column])
    assert (
        summary["patients"]
        == 2 + 2 + manifest.loc[manifest["source"] == "demo", "patient_key"].nunique()
    )
    # counts add up per input and in all
    for name, s in summary["sources"].items():
        assert s["inputs"] == s["images"] + int((rejected["source"] == name).sum())
    assert summary["inputs"] == len(manifest) + len(rejected)
    assert set(rejected["source"]) == {"site-a", "site-b"}  # named by input
    # the official split of an input, the image roots and what each source is
    assert set(b["official_split"]) == {"test"} and set(a["official_split"]) == {""}
    assert manifest.attrs["data_roots"] == {
        "site-a": str(image_folder),
        "site-b": str(twin),
        "demo": str(synthetic_dicom / "dicom"),
    }
    assert manifest.attrs["sources"] == {
        "site-a": {"reader": "csv", "synthetic": False},
        "site-b": {"reader": "csv", "synthetic": False},
        "demo": {"reader": "dicom", "synthetic": True},
    }
    assert "data_root" not in manifest.attrs  # several roots: no single one


def test_one_input_keeps_its_reader_keys(image_folder, tmp_path):
    single = IngestParams(
        source="csv", input=str(image_folder / "list.csv"), out=str(tmp_path / "1")
    )
    listed = IngestParams(
        inputs=[{"source": "csv", "input": str(image_folder / "list.csv")}], out=str(tmp_path / "2")
    )
    run_ingest(single)
    run_ingest(listed)
    one = pd.read_parquet(tmp_path / "1" / "manifest.parquet")
    two = pd.read_parquet(tmp_path / "2" / "manifest.parquet")
    pd.testing.assert_frame_equal(one, two)
    manifest, _, _ = ingest("csv", image_folder / "list.csv", ReadOptions(salt=get_salt()))
    assert one["patient_key"].tolist() == manifest["patient_key"].tolist()
    assert set(one["source"]) == {"csv"}  # an unnamed input is named by its layout


def test_per_input_options_override_the_section(image_folder, tmp_path):
    inputs = [
        {"name": "checked", "source": "csv", "input": str(image_folder / "list.csv")},
        {
            "name": "unchecked",
            "source": "csv",
            "input": str(image_folder / "list.csv"),
            "verify_files": False,
        },
    ]
    summary = run_ingest(IngestParams(inputs=inputs, out=str(tmp_path / "o")))
    assert summary["sources"]["checked"]["rejected"]["missing_file"] == 1
    assert "missing_file" not in summary["sources"]["unchecked"]["rejected"]  # never opened


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({}, "either one input"),
        ({"input": "x.csv", "inputs": [{"input": "y.csv"}]}, "not both"),
        ({"inputs": [{"input": "a.csv"}, {"input": "b.csv"}]}, "must be distinct"),
        ({"inputs": [{"name": "a b", "input": "a.csv"}]}, "letters, digits"),
        ({"inputs": []}, "must be distinct, non-empty"),
    ],
)
def test_input_lists_are_checked(values, match):
    with pytest.raises(ValueError, match=match):
        IngestParams(**values)


def test_the_demo_salt_is_refused_when_any_input_is_real(image_folder, tmp_path, synthetic_dicom):
    inputs = [
        {"name": "demo", "source": "dicom", "input": str(synthetic_dicom / "dicom")},
        {"name": "real", "source": "csv", "input": str(image_folder / "list.csv")},
    ]
    params = IngestParams(inputs=inputs, salt="demo", workers=1, out=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="not for source 'csv'"):
        run_ingest(params)
