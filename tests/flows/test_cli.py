"""The `cxr` command: ingest and pair on the stage code path; user errors are one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def _csv(tmp_path: Path) -> Path:
    rows = ["path,patient,study,view,labels"]
    for p in range(12):
        rows += [f"p{p}_f.png,pat{p},st{p},PA,Effusion", f"p{p}_l.png,pat{p},st{p},L,Effusion"]
    path = tmp_path / "list.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_ingest_then_pair(tmp_path):
    listing = _csv(tmp_path)
    res = runner.invoke(
        app,
        ["ingest", "--source", "csv", "--input", str(listing), "--no-verify-files",
         "--out", str(tmp_path / "m")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["images"] == 24
    res = runner.invoke(
        app,
        ["pair", "--manifest", str(tmp_path / "m/manifest.parquet"), "--out", str(tmp_path / "s")],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "s/summary.json").read_text())
    assert summary["studies"] == summary["dual_view"] == 12
    assert {"studies", "dual_view", "frontal_only", "lateral_only", "splits"} <= set(summary)
    assert "seconds" not in summary  # a DVC metric holds results, not timings
    assert set(summary["splits"]["train"]) >= {"studies", "patients"}
    studies = pd.read_parquet(tmp_path / "s/studies.parquet")
    assert studies["has_lateral"].all()
    assert (studies["Effusion"] == 1).all()


def test_user_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,patient\nx.png,p\n")
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ingest", "--source", "csv", "--input", str(bad),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "bad.csv" in proc.stderr


def test_sweep_passes_its_arguments_to_the_sweep_flow():
    result = runner.invoke(app, ["sweep", "--help"])
    assert result.exit_code == 0
    assert "--grid KEY=V1,V2,..." in result.output and "dvc exp apply" in result.output


def test_predict_and_report_name_what_is_missing(tmp_path):
    missing = tmp_path / "nope"
    result = runner.invoke(app, ["predict", str(missing), "--model", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    result = runner.invoke(
        app, ["report", "--out", str(tmp_path / "r"), "--predictions", str(missing)]
    )
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {missing}: predictions file not found"
