"""Sharded preprocess runs: parts in any order, then a merge equal to the single-process stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.data import read_index
from pipelines.errors import UserError
from pipelines.io import write_rejected
from pipelines.preprocess import (
    PART_FILE,
    PARTS_DIR,
    main,
    merge_parts,
    part_bounds,
    part_name,
    preprocess_part,
    preprocess_studies,
)
from tests.pipelines.preprocess.helpers import (
    SIZE,
    assert_same_prepared,
    digest,
    params,
    run_parts,
)


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
    np.save(shard, np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(UserError, match="part 1-of-3: shard .* disagrees with its meta"):
        merge_parts(studies, out, params(), 3)
    assert not (out / "index.json").exists()  # nothing written on a failed check


def test_a_part_is_atomic(dataset, tmp_path, monkeypatch):
    """A part that dies midway leaves its previous complete folder (or none), never a half one."""
    import pipelines.preprocess.core as pp

    studies, root = dataset
    out = tmp_path / "sharded"
    preprocess_part(studies, root, out, params(), 0, 2)
    before = digest(out / PARTS_DIR / "0-of-2")
    real = pp.write_views
    calls = []

    def dies_on_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(pp, "write_views", dies_on_second_shard)
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
