"""`cxr pair --official-split` (SPLIT=LIST items or one table) and `--holdout-source`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.errors import UserError
from pipelines.labels import FINDINGS
from pipelines.pair import official_split_option
from pipelines.schema import conform_manifest

runner = CliRunner()


def write_manifest(folder: Path) -> Path:
    """20 'nih' patients (images n<p>.png) and 5 'openi' patients (images o<p>.png)."""
    rows = [
        {
            "image_id": f"{src[0]}{p}",
            "patient_key": f"{src}-{p}",
            "study_key": f"{src}-s{p}",
            "source": src,
            "path": f"images/{src[0]}{p}.png",
            "view": "PA",
            "view_raw": "PA",
            "width": 10,
            "height": 10,
            "bits": 8,
            "photometric": "MONOCHROME2",
            **{f: 0.0 for f in FINDINGS},
        }
        for src, n in (("nih", 20), ("openi", 5))
        for p in range(n)
    ]
    path = folder / "manifest.parquet"
    conform_manifest(pd.DataFrame(rows)).to_parquet(path, index=False)
    return path


def pair(tmp_path: Path, *args: str):
    manifest = write_manifest(tmp_path)
    out = tmp_path / "studies"
    result = runner.invoke(app, ["pair", "--manifest", str(manifest), "--out", str(out), *args])
    return result, out


def test_official_split_option_forms() -> None:
    assert official_split_option([]) is None
    assert official_split_option(["test=a/test_list.txt", "TRAIN= train_val_list.txt"]) == {
        "test": "a/test_list.txt",
        "train": "train_val_list.txt",
    }
    assert official_split_option(["validate=v.txt"]) == {"val": "v.txt"}
    assert official_split_option(["mimic-cxr-2.0.0-split.csv.gz"]) == "mimic-cxr-2.0.0-split.csv.gz"
    # text before '=' that is no split name: a file name
    assert official_split_option(["runs/seed=1/split.csv"]) == "runs/seed=1/split.csv"


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (["test=t.txt", "split.csv"], r"not both \('split\.csv' has no SPLIT= prefix\)"),
        (["a.csv", "b.csv"], "at most one table with a split column, got 2"),
        (["test=a.txt", "test=b.txt"], "the test split is given twice"),
        (["val=a.txt", "valid=b.txt"], "the val split is given twice"),
        (["test="], "no list file after '='"),
    ],
)
def test_official_split_option_errors(items: list[str], match: str) -> None:
    with pytest.raises(UserError, match=match):
        official_split_option(items)


def test_cli_pins_with_lists(tmp_path: Path) -> None:
    (tmp_path / "test_list.txt").write_text("n0.png\nn1.png\nn2.png\n")
    (tmp_path / "train_val_list.txt").write_text("n3.png\nmissing.png\n")
    result, out = pair(
        tmp_path,
        "--official-split", f"test={tmp_path / 'test_list.txt'}",
        "--official-split", f"train={tmp_path / 'train_val_list.txt'}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    files = summary["official_split"]["files"]
    assert files[str(tmp_path / "test_list.txt")]["matched"] == 3
    assert files[str(tmp_path / "train_val_list.txt")]["unmatched"] == 1
    studies = pd.read_parquet(out / "studies.parquet").set_index("patient_key")["split"]
    assert list(studies[["nih-0", "nih-1", "nih-2", "nih-3"]]) == ["test"] * 3 + ["train"]


def test_cli_pins_with_a_table_and_holds_out_a_source(tmp_path: Path) -> None:
    table = tmp_path / "split.csv.gz"
    pd.DataFrame({"Image Index": ["n0.png", "n1.png"], "split": ["validate", "test"]}).to_csv(
        table, index=False
    )
    result, out = pair(tmp_path, "--official-split", str(table), "--holdout-source", "openi")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["holdout_source"] == "openi"
    assert summary["studies_by_source"]["test"] == {"nih": 1, "openi": 5}
    assert "openi" not in summary["studies_by_source"]["train"]
    assert "openi" not in summary["studies_by_source"]["val"]
    studies = pd.read_parquet(out / "studies.parquet").set_index("patient_key")["split"]
    assert studies["nih-0"] == "val" and studies["nih-1"] == "test"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--official-split", "test=t.txt", "--official-split", "s.csv"], "not both"),
        (["--official-split", "test=nope.txt"], "nope.txt: official 'test' list not found"),
        (["--holdout-source", "mimic"], "no source 'mimic'; its sources are nih, openi"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result, out = pair(tmp_path, *args)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and message in result.output
    assert "Traceback" not in result.output and not (out / "studies.parquet").exists()
