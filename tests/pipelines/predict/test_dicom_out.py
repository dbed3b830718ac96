"""``cxr predict --dicom-out DIR``: the SR equals the table, overlays become SCs, reruns rewrite.

Every object written is validated by dciodvfy (0 errors) where dicom3tools is installed. The
model is test_run's stand-in with a card that has one finding not trained.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.errors import PredictError
from pipelines.export import model_card
from pipelines.imaging import prepare_image
from pipelines.io import write_json
from pipelines.labels import FINDINGS
from pipelines.predict import predict_command
from pipelines.synthetic.params import SynthesizeParams
from pipelines.synthetic.stage import synthesize
from tests.pipelines.dicom_out.helpers import (
    IDENTIFIERS,
    dciodvfy,
    overlay_of,
    sr_findings,
    write_source,
)
from tests.pipelines.predict.test_run import SIZE, model_dir  # noqa: F401 (fixture)

UNTRAINED = "Mass"


@pytest.fixture(scope="module")
def model(model_dir) -> Path:  # noqa: F811
    """The stand-in, its card saying Mass was not trained."""
    out = model_dir.parent / "model-untrained"
    out.mkdir(exist_ok=True)
    shutil.copy(model_dir / "model.onnx", out / "model.onnx")
    thresholds = {"thresholds": {"youden": {f: 0.3 + 0.02 * i for i, f in enumerate(FINDINGS)}}}
    card = model_card(
        meta={"findings": list(FINDINGS), "untrained": {UNTRAINED: "too few labelled studies"}},
        input_size=SIZE,
        files={},
        parity={},
        parity_summary={},
        thresholds=thresholds,
        default_policy="youden",
        test_metrics=None,
        data_summary=None,
        n_params=0,
        gate=json.loads((model_dir / "metadata.json").read_text())["output"]["ood_gate"],
    )
    write_json(out / "metadata.json", card)
    return out / "model.onnx"


@pytest.fixture
def study(tmp_path) -> Path:
    write_source(tmp_path / "s" / "pa.dcm", "PA", "dx-mono1", seed=1)
    write_source(tmp_path / "s" / "ll.dcm", "LL", "cr-voi-lut", seed=2)
    return tmp_path / "s"


def edema_overlays(rows) -> dict[tuple[str, str], np.ndarray]:
    """What the explanation's hook returns: the Edema overlay on each view read."""
    first = rows.iloc[0]
    views = {"frontal": first["frontal"], "lateral": first["lateral"]}
    return {("Edema", v): overlay_of(prepare_image(p, SIZE)) for v, p in views.items() if p}


def assert_valid(paths: list[Path]) -> None:
    for path in paths:
        errors, _warnings = dciodvfy(path)
        assert errors == [], path.name


def test_the_sr_says_what_the_table_says(study, model, tmp_path):
    out = tmp_path / "dicom"
    table = json.loads(predict_command([str(study)], model=model, fmt="json", dicom_out=out))
    (sr,) = out.glob("sr-*.dcm")
    assert sorted(p.name for p in out.iterdir()) == [sr.name]  # no overlays given: no SC
    found = sr_findings(sr)
    assert list(found) == list(FINDINGS)
    for finding, row in table["studies"][0]["findings"].items():
        evaluation, probability = found[finding]
        if finding == UNTRAINED:
            assert row["status"] == "not trained" and (evaluation, probability) == (
                "Not Evaluated",
                None,
            )
            continue
        assert probability == pytest.approx(row["probability"], abs=1e-6)
        assert evaluation == ("Present" if row["positive"] else "Absent")
    assert {e for e, _p in found.values()} >= {"Not Evaluated"}
    ds = pydicom.dcmread(sr)
    for keyword, value in IDENTIFIERS.items():
        assert str(ds.get(keyword)) == value, keyword
    assert_valid([sr])


def test_overlays_become_scs_and_a_rerun_rewrites_the_same_objects(study, model, tmp_path):
    out = tmp_path / "dicom"
    predict_command([str(study)], model=model, dicom_out=out, overlays_for=edema_overlays)
    first = {p.name: pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()}
    assert len(first) == 3 and sum(n.startswith("sc-") for n in first) == 2
    assert all(PATIENT not in n for n in first for PATIENT in IDENTIFIERS.values())
    lateral = next(out.glob("sc-*-Edema-lateral.dcm"))
    ref = pydicom.dcmread(lateral).SourceImageSequence[0].ReferencedSOPInstanceUID
    assert ref == pydicom.dcmread(study / "ll.dcm").SOPInstanceUID
    assert_valid(sorted(out.iterdir()))
    predict_command([str(study)], model=model, dicom_out=out, overlays_for=edema_overlays)
    assert {p.name: pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()} == first


def test_png_and_csv_inputs_are_refused_in_one_line(tmp_path, model):
    png = tmp_path / "front.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (tmp_path / "s.csv").write_text("frontal\nfront.png\n")
    for given, kind in ((png, "a PNG image"), (tmp_path / "s.csv", "a CSV of studies")):
        with pytest.raises(PredictError, match=f"needs DICOM inputs; this is {kind}") as err:
            predict_command([str(given)], model=model, dicom_out=tmp_path / "out")
        assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cxr_predict_on_an_embedded_study_writes_valid_dicom(tmp_path, model):
    """The issue's check: a study of the embedded synthetic set, through the command."""
    synthesize(
        SynthesizeParams(
            out=tmp_path / "syn",
            studies=3,
            size=64,
            cr=0.5,
            monochrome1=0.5,
            voi_lut=0.5,
            lateral_missing=0.0,
            workers=1,
            seed=5,
        )
    )
    study = sorted(p for p in (tmp_path / "syn" / "dicom").glob("*/*") if p.is_dir())[0]
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["predict", str(study), "--model", str(model), "--dicom-out", str(out)]
    )
    assert result.exit_code == 0, result.output
    (sr,) = out.glob("sr-*.dcm")
    assert_valid([sr])
    assert len(sr_findings(sr)) == len(FINDINGS)


def test_the_real_cr_study_gives_a_valid_sr_and_sc(real_cxr, model, tmp_path):
    (dcm,) = (real_cxr / "dicom").glob("*.dcm")
    folder = tmp_path / "real-study"
    folder.mkdir()
    (folder / dcm.name).symlink_to(dcm)
    out = tmp_path / "out"
    predict_command([str(folder)], model=model, dicom_out=out, overlays_for=edema_overlays)
    written = sorted(out.iterdir())
    assert [p.name[:3] for p in written] == ["sc-", "sr-"]
    assert_valid(written)
    source = pydicom.dcmread(dcm, stop_before_pixels=True)
    for path in written:
        ds = pydicom.dcmread(path)
        assert (ds.StudyInstanceUID, ds.PatientID) == (source.StudyInstanceUID, source.PatientID)
