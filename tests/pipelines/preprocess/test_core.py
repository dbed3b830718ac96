"""preprocess: end to end on a tiny studies table, rejections, determinism, outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.config import parse_section
from pipelines.data import ShardDataset, read_index
from pipelines.errors import ConfigError, UserError
from pipelines.imaging import prepare_image
from pipelines.labels import FINDINGS
from pipelines.preprocess import (
    PreprocessParams,
    preprocess_studies,
    run_preprocess,
)
from tests.pipelines.preprocess.helpers import (
    SIZE,
    digest,
    params,
    study,
)
from tests.pipelines.test_imaging import PHI, phantom, write_dicom


def test_end_to_end(dataset, tmp_path):
    studies, root = dataset
    out = tmp_path / "prepared"
    result = preprocess_studies(studies, root, out, params())
    s = result.summary
    assert s["studies_in"] == {"train": 4, "val": 2, "test": 1}
    assert s["studies_out"] == {"train": 3, "val": 2, "test": 1}
    assert s["dual_view_out"] == {"train": 1, "val": 2, "test": 1}
    assert s["studies_dropped"] == 1 and s["laterals_dropped"] == 1
    assert s["images_decoded"] == 6 + 4  # 6 frontals, 4 laterals
    # s5's lateral decodes, but goes with its study: listed, so that images in = out + rejected
    assert s["rejected_by_reason"] == {"truncated": 1, "missing_file": 1, "frontal_rejected": 1}
    assert s["images_in"] == 7 + 6 == s["images_decoded"] + s["images_rejected"]
    assert s["shards"] == 2 + 1 + 1  # train 3 studies in shards of 2

    rej = result.rejected.set_index(["study_key", "view"])
    assert rej.loc[("s5", "frontal"), "action"] == "study_dropped"
    assert rej.loc[("s5", "lateral"), "action"] == "study_dropped"
    assert rej.loc[("s5", "lateral"), "path"] == "l5.png"
    assert rej.loc[("s2", "lateral"), "action"] == "lateral_dropped"
    assert rej.loc[("s2", "lateral"), "path"] == "missing.png"
    assert not result.rejected.astype(str).apply(lambda c: c.str.contains(PHI[0])).any().any()

    index = read_index(out)
    assert index["size"] == SIZE and [e["n"] for e in index["splits"]["train"]] == [2, 1]
    # laterals stored only where decoded: s0's in the first shard, none in the second (s2's failed)
    assert [e["laterals"] for e in index["splits"]["train"]] == [1, 0]
    assert np.load(out / "train-00000.images.npy").shape == (2 + 1, SIZE, SIZE)
    assert np.load(out / "train-00001.images.npy").shape == (1, SIZE, SIZE)
    ds = ShardDataset(out, "train")
    assert list(ds.meta["study_key"]) == ["s0", "s1", "s2"]  # sorted by key within the split
    assert list(ds.meta["sex"]) == ["M", "F", "M"]  # evaluate's subgroups ride in the meta
    assert list(ds.meta["age_band"]) == ["10-19", "20-29", "30-39"]
    # pixels: exactly what prepare_image gives, lateral zeros where missing or failed
    for i, (f, lat) in enumerate([("f0.dcm", "l0.png"), ("f1.dcm", None), ("f2.dcm", None)]):
        sample = ds[i]
        np.testing.assert_array_equal(sample["frontal"][0].numpy(), prepare_image(root / f, SIZE))
        if lat:
            expected = prepare_image(root / lat, SIZE)
            np.testing.assert_array_equal(sample["lateral"][0].numpy(), expected)
            assert bool(sample["has_lateral"])
        else:
            assert sample["lateral"].sum() == 0 and not bool(sample["has_lateral"])
    labels = ds[0]["labels"].numpy()
    assert labels[FINDINGS.index("Cardiomegaly")] == 1 and labels[FINDINGS.index("Effusion")] == 0
    assert np.isnan(labels[FINDINGS.index("Hernia")])
    assert len(result.grid) == 4 and all(g["lateral"] is not None for g in result.grid)


def test_monochrome1_and_2_studies_prepare_alike(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    px = phantom(64, 48, bits=12)
    write_dicom(root / "m1.dcm", (4095 - px).astype(np.uint16), "MONOCHROME1")
    write_dicom(root / "m2.dcm", px, "MONOCHROME2")
    df = pd.DataFrame([study("a", "train", "m1.dcm"), study("b", "train", "m2.dcm")])
    preprocess_studies(df, root, tmp_path / "out", params())
    ds = ShardDataset(tmp_path / "out", "train")
    a, b = ds[0]["frontal"].int(), ds[1]["frontal"].int()
    assert (a - b).abs().max() <= 1 and a.float().std() > 20


def test_byte_identical_across_runs_and_worker_counts(dataset, tmp_path):
    studies, root = dataset
    preprocess_studies(studies, root, tmp_path / "a", params(workers=1))
    shuffled = studies.sample(frac=1.0, random_state=3)  # input row order must not matter
    shuffled.attrs = studies.attrs
    preprocess_studies(shuffled, root, tmp_path / "b", params(workers=2, chunk=1))
    ha, hb = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert ha == hb and len(ha) == 2 * 4 + 1


def test_rerun_removes_stale_shards(dataset, tmp_path):
    studies, root = dataset
    out = tmp_path / "p"
    preprocess_studies(studies, root, out, params(shard_size=1))
    assert len(list(out.glob("*.npy"))) == 6
    preprocess_studies(studies, root, out, params(shard_size=10))
    assert len(list(out.glob("*.npy"))) == 3


def test_run_preprocess_writes_outputs(dataset, tmp_path):
    studies, _ = dataset
    table = tmp_path / "studies.parquet"
    studies.to_parquet(table)
    p = params(studies=str(table), out=str(tmp_path / "prep"), rejected=str(tmp_path / "rej.csv"))
    summary = run_preprocess(p, metrics=tmp_path / "m.json", grid=tmp_path / "grid.png")
    assert json.loads((tmp_path / "m.json").read_text())["images_decoded"] == 10
    assert summary["seconds"] > 0 and summary["images_per_s"] > 0
    rej = pd.read_csv(tmp_path / "rej.csv")
    assert list(rej.columns[:4]) == ["source", "path", "reason", "detail"] and len(rej) == 3
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[0] > 300 and im.size[1] > 100


def test_bad_inputs_are_user_errors(dataset, tmp_path):
    studies, root = dataset
    with pytest.raises(UserError, match="lacks columns"):
        preprocess_studies(studies.drop(columns="split"), root, tmp_path / "o", params())
    with pytest.raises(UserError, match="unknown splits"):
        bad = studies.assign(split="holdout")
        preprocess_studies(bad, root, tmp_path / "o", params())
    with pytest.raises(UserError, match="studies table not found"):
        run_preprocess(params(studies=str(tmp_path / "nope.parquet")))
    with pytest.raises(ConfigError, match=r"preprocess\.image_size"):
        parse_section(PreprocessParams, "preprocess", {"preprocess": {"image_size": 2}})


def test_each_source_reads_from_its_own_root_and_bits_come_from_the_metadata(tmp_path):
    """Two sources in two folders with the same relative path; an 11-bit PNG in a 16-bit file."""
    from pipelines.schema import ImageRoots

    ramp = (np.arange(64 * 64).reshape(64, 64) % 2048).astype(np.uint16)  # 11 bits used
    for site, value in (("a", ramp), ("b", (ramp // 2).astype(np.uint16))):
        (tmp_path / site).mkdir()
        Image.fromarray(value).save(tmp_path / site / "img.png")
    rows = [
        study("s0", "train", "img.png") | {"source": "site-a"},
        study("s1", "test", "img.png") | {"source": "site-b"},
    ]
    table = pd.DataFrame(rows)
    table.attrs = {
        "data_roots": {"site-a": str(tmp_path / "a"), "site-b": str(tmp_path / "b")},
        "sources": {"site-a": {"reader": "csv", "synthetic": False}},
    }
    roots = ImageRoots.from_attrs(table.attrs)
    table["frontal_bits"], table["lateral_bits"] = [11, 11], [0, 0]  # as the source's CSV says
    out = tmp_path / "prep"
    preprocess_studies(table, roots, out, params(size=64))
    train, test = (ShardDataset(out, s) for s in ("train", "test"))
    a, b = train[0]["frontal"].numpy(), test[0]["frontal"].numpy()
    assert a.max() == 255  # scaled by the 11 bits the metadata gives, not by 16
    assert abs(int(b.max()) - 128) <= 1  # the other folder's half-bright image
    index = read_index(out)
    assert index["sources"] == {
        "site-a": {
            "reader": "csv",
            "synthetic": False,
            "studies": {"train": 1, "val": 0, "test": 0},
        },
        "site-b": {
            "reader": "site-b",
            "synthetic": None,
            "studies": {"train": 0, "val": 0, "test": 1},
        },
    }
    # without bits in the table the depth is detected from the data: the smallest of 10, 12,
    # 14, 16 bits that holds the maximum, here 12, so the image is half as bright
    no_bits = table.drop(columns=["frontal_bits", "lateral_bits"])
    preprocess_studies(no_bits, roots, out, params(size=64))
    assert abs(int(ShardDataset(out, "train")[0]["frontal"].numpy().max()) - 128) <= 1


def _many_studies(root, n: int) -> pd.DataFrame:
    """``n`` train studies of 64 px PNGs (one file per view, written once), half with a lateral."""
    import io

    buf = io.BytesIO()
    Image.fromarray(phantom(64, 64, bits=8).astype(np.uint8)).save(buf, format="PNG")
    root.mkdir(exist_ok=True)
    (root / "f.png").write_bytes(buf.getvalue())
    (root / "l.png").write_bytes(buf.getvalue())
    rows = [study(f"s{i:05d}", "train", "f.png", "l.png" if i % 2 else "") for i in range(n)]
    return pd.DataFrame(rows).astype({f: "float32" for f in FINDINGS})


@pytest.mark.slow  # tracemalloc slows the decoding loop about 4x: ~5 s on 2 cores
def test_memory_does_not_grow_with_the_number_of_studies(tmp_path):
    """Pixels stream through one shard buffer per split: 10x the studies, the same peak
    allocation up to the studies table itself (~0.2 KB a study, against 6 KB of pixels)."""
    import tracemalloc

    peaks = {}
    for n in (40, 400):
        studies = _many_studies(tmp_path / "raw", n)
        p = params(size=64, shard_size=20, grid=2)
        tracemalloc.start()
        result = preprocess_studies(studies, tmp_path / "raw", tmp_path / f"out{n}", p)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert result.summary["studies_out"]["train"] == n
    per_study = (peaks[400] - peaks[40]) / 360
    assert per_study < 1_500, (peaks, per_study)  # pixels kept would add 6 KB a study
    assert peaks[400] < 4 * 2**20  # two 20-study buffers of 64 px are 0.16 MB
