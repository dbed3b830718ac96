"""preprocess stage: end to end on a tiny studies table, rejections, determinism, outputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.config import parse_section
from pipelines.data import ShardDataset, read_index
from pipelines.errors import ConfigError, UserError
from pipelines.imaging import prepare_image
from pipelines.io import write_rejected
from pipelines.labels import FINDINGS
from pipelines.preprocess import (
    PART_FILE,
    PARTS_DIR,
    PreprocessParams,
    main,
    merge_parts,
    part_bounds,
    part_name,
    preprocess_part,
    preprocess_studies,
    run_preprocess,
)
from pipelines.schema import SPLITS, STUDY_COLUMNS
from tests.pipelines.test_imaging import PHI, phantom, write_dicom

SIZE = 32


def study(key: str, split: str, frontal: str, lateral: str = "", **labels) -> dict:
    row = {
        "study_key": key,
        "patient_key": f"p-{key}",
        "source": "dicom",
        "frontal_id": f"{key}-f",
        "frontal_path": frontal,
        "frontal_view": "PA",
        "lateral_id": f"{key}-l" if lateral else "",
        "lateral_path": lateral,
        "has_lateral": bool(lateral),
        "split": split,
    }
    return row | {f: labels.get(f, np.nan) for f in FINDINGS}


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """7 studies over 3 splits: DICOM (M1 and M2) and PNG, a broken frontal, a broken lateral."""
    return make_dataset(tmp_path)


def make_dataset(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """The ``dataset`` fixture's studies table and image root, under ``tmp_path / "raw"``."""
    root = tmp_path / "raw"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        px = np.roll(phantom(60 + 4 * i, 50, bits=12), i, axis=1)
        write_dicom(root / f"f{i}.dcm", px, "MONOCHROME2" if i % 2 else "MONOCHROME1")
        lat = (rng.random((40, 56)) * 255).astype(np.uint8)
        Image.fromarray(lat).save(root / f"l{i}.png")
    (root / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    rows = [
        study("s0", "train", "f0.dcm", "l0.png", Cardiomegaly=1.0, Effusion=0.0),
        study("s1", "train", "f1.dcm", "", Atelectasis=0.0),  # frontal-only
        study("s2", "train", "f2.dcm", "missing.png", Nodule=1.0),  # lateral fails
        study("s3", "val", "f3.dcm", "l3.png"),  # all NaN labels
        study("s4", "test", "f4.dcm", "l4.png", Hernia=1.0),
        study("s5", "train", "broken.dcm", "l5.png"),  # frontal fails: dropped
        study("s6", "val", "f5.dcm", "l5.png", Mass=0.0),
    ]
    df = pd.DataFrame(rows).loc[:, list(STUDY_COLUMNS)]
    df = df.astype({f: "float32" for f in FINDINGS})
    df.attrs["data_root"] = str(root)
    return df, root


def params(**kw) -> PreprocessParams:
    return PreprocessParams(**({"size": SIZE, "shard_size": 2, "workers": 1, "grid": 4} | kw))


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


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
    ds = ShardDataset(out, "train")
    assert list(ds.meta["study_key"]) == ["s0", "s1", "s2"]  # sorted by key within the split
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


# ----------------------------------------------------------------------------------------------
# Sharded runs: parts in any order, then a merge equal to the single-process stage


def assert_same_prepared(a: Path, b: Path) -> None:
    """Two prepared folders serve the same studies, labels and pixels in the same order."""
    assert read_index(a)["size"] == read_index(b)["size"]
    for split in SPLITS:
        da, db = ShardDataset(a, split), ShardDataset(b, split)
        cols = [c for c in da.meta.columns if not c.startswith("_")]
        pd.testing.assert_frame_equal(da.meta[cols], db.meta[cols])
        ba, bb = da.get_batch(range(len(da))), db.get_batch(range(len(db)))
        for key in ba:
            np.testing.assert_array_equal(ba[key].numpy(), bb[key].numpy(), err_msg=key)


def run_parts(studies, root, out, p, parts: int) -> None:
    for i in reversed(range(parts)):  # any order: parts are independent
        preprocess_part(studies, root, out, p, i, parts)


@pytest.mark.parametrize("parts", [2, 3, 9])  # 9 parts for 7 studies: some parts are empty
def test_parts_then_merge_equal_single_process(dataset, tmp_path, parts):
    studies, root = dataset
    single = preprocess_studies(studies, root, tmp_path / "single", params())
    out = tmp_path / "sharded"
    run_parts(studies, root, out, params(workers=1), parts)
    merged = merge_parts(studies, out, params(), parts)

    assert_same_prepared(tmp_path / "single", out)
    assert sorted(p.name for p in (out / PARTS_DIR).iterdir()) == sorted(
        part_name(i, parts) for i in range(parts)
    )
    assert not list(out.glob("*.npy"))  # the index names the parts' shards
    pd.testing.assert_frame_equal(merged.rejected, single.rejected)
    write_rejected(single.rejected, tmp_path / "a.csv")
    write_rejected(merged.rejected, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    timing = {"seconds", "images_per_s", "workers", "shards", "parts", "part_seconds"}
    assert {k: v for k, v in merged.summary.items() if k not in timing} == {
        k: v for k, v in single.summary.items() if k not in timing
    }
    assert merged.summary["parts"] == parts
    assert len(merged.grid) == len(single.grid) == 4
    for g, h in zip(single.grid, merged.grid, strict=True):
        np.testing.assert_array_equal(g["frontal"], h["frontal"])
        np.testing.assert_array_equal(g["lateral"], h["lateral"])
        assert {k: g[k] for k in ("split", "view", "positive", "labelled")} == {
            k: h[k] for k in ("split", "view", "positive", "labelled")
        }


def test_part_bounds_cover_the_table_and_keep_a_study_whole():
    table = pd.DataFrame({"study_key": list("aabbbcd")})
    assert part_bounds(table, 1) == [(0, 7)]
    assert part_bounds(table, 2) == [(0, 5), (5, 7)]  # row 3 would split study b
    assert part_bounds(table, 3) == [(0, 2), (2, 5), (5, 7)]
    assert part_bounds(table.iloc[:0], 2) == [(0, 0), (0, 0)]


def test_merge_names_missing_incomplete_and_foreign_parts(dataset, tmp_path):
    studies, root = dataset
    out = tmp_path / "sharded"
    for i in (0, 2):
        preprocess_part(studies, root, out, params(), i, 3)
    with pytest.raises(UserError, match=r"part\(s\) 1-of-3 missing"):
        merge_parts(studies, out, params(), 3)
    with pytest.raises(UserError, match=r"part\(s\) 0-of-2, 1-of-2 missing"):
        merge_parts(studies, out, params(), 2)

    preprocess_part(studies, root, out, params(), 1, 3)
    (out / PARTS_DIR / "2-of-3" / PART_FILE).unlink()  # e.g. a folder copied by hand, half-way
    with pytest.raises(UserError, match="part 2-of-3 is incomplete"):
        merge_parts(studies, out, params(), 3)
    preprocess_part(studies, root, out, params(), 2, 3)
    with pytest.raises(UserError, match="part 0-of-3 was made from another .*params"):
        merge_parts(studies, out, params(size=SIZE * 2), 3)
    other = studies[studies["study_key"] != "s3"]
    with pytest.raises(UserError, match="part 0-of-3 covers other rows"):
        merge_parts(other, out, params(), 3)
    shard = next((out / PARTS_DIR / "1-of-3").glob("*.images.npy"))
    np.save(shard, np.zeros((1, 2, 4, 4), np.uint8))
    with pytest.raises(UserError, match="part 1-of-3: shard .* holds"):
        merge_parts(studies, out, params(), 3)
    assert not (out / "index.json").exists()  # nothing written on a failed check


def test_a_part_is_atomic(dataset, tmp_path, monkeypatch):
    """A part that dies midway leaves its previous complete folder (or none), never a half one."""
    import pipelines.preprocess as pp

    studies, root = dataset
    out = tmp_path / "sharded"
    preprocess_part(studies, root, out, params(), 0, 2)
    before = digest(out / PARTS_DIR / "0-of-2")
    real = pp.write_shard
    calls = []

    def dies_on_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(pp, "write_shard", dies_on_second_shard)
    with pytest.raises(OSError, match="disk full"):
        preprocess_part(studies, root, out, params(shard_size=1), 0, 2)
    with pytest.raises(OSError, match="disk full"):
        calls.clear()
        preprocess_part(studies, root, out, params(), 1, 2)
    assert [p.name for p in (out / PARTS_DIR).iterdir()] == ["0-of-2"]  # no half part, no tmp
    assert digest(out / PARTS_DIR / "0-of-2") == before
    monkeypatch.undo()

    # a SIGKILL leaves a hidden temporary folder: the merge neither reads it nor keeps it
    leftover = out / PARTS_DIR / ".1-of-2.abc.tmp"
    leftover.mkdir()
    (leftover / "train-00000.images.npy").write_bytes(b"half")
    with pytest.raises(UserError, match=r"part\(s\) 1-of-2 missing"):
        merge_parts(studies, out, params(), 2)
    preprocess_part(studies, root, out, params(), 1, 2)
    merge_parts(studies, out, params(), 2)
    assert sorted(p.name for p in (out / PARTS_DIR).iterdir()) == ["0-of-2", "1-of-2"]


def test_merge_replaces_a_single_process_run_and_the_plain_stage_removes_parts(dataset, tmp_path):
    studies, root = dataset
    out = tmp_path / "p"
    preprocess_studies(studies, root, out, params(shard_size=1))
    run_parts(studies, root, out, params(), 2)
    merge_parts(studies, out, params(), 2)
    assert not list(out.glob("*.npy")) and not list(out.glob("*.parquet"))
    assert all("/" in e["name"] for v in read_index(out)["splits"].values() for e in v)
    preprocess_studies(studies, root, out, params())
    assert not (out / PARTS_DIR).exists()
    assert_same_prepared(out, tmp_path / "p")


def test_cli_part_and_merge(dataset, tmp_path, monkeypatch, capsys):
    """``--part I --parts N`` and ``--merge N`` read params.yaml; the plain stage is unchanged."""
    import yaml

    studies, _ = dataset
    studies.to_parquet(tmp_path / "studies.parquet")
    section = params(studies="studies.parquet").model_dump(by_alias=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"preprocess": section}))
    monkeypatch.chdir(tmp_path)
    main(["--part", "1", "--parts", "2", "--workers", "1"])
    with pytest.raises(SystemExit) as exc:
        main(["--merge", "2"])
    assert exc.value.code == 2 and "part(s) 0-of-2 missing" in capsys.readouterr().err
    main(["--part", "0", "--parts", "2"])
    main(["--merge", "2"])
    merged = json.loads(Path("metrics/preprocess.json").read_text())
    rejected = Path("data/prepared_rejected.csv").read_bytes()
    assert merged["parts"] == 2 and Path("plots/preprocess/grid.png").is_file()
    Path("data/prepared").rename("sharded")
    main([])  # the stage as dvc.yaml runs it
    single = json.loads(Path("metrics/preprocess.json").read_text())
    timing = {"seconds", "images_per_s", "workers", "shards", "parts", "part_seconds"}
    assert {k: v for k, v in merged.items() if k not in timing} == {
        k: v for k, v in single.items() if k not in timing
    }
    assert Path("data/prepared_rejected.csv").read_bytes() == rejected
    assert_same_prepared(Path("data/prepared"), Path("sharded"))
    for bad in (["--part", "0"], ["--merge", "2", "--part", "0", "--parts", "2"], ["--merge", "0"]):
        with pytest.raises(SystemExit):
            main(bad)
