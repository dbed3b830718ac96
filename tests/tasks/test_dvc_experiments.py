"""DVC experiment tasks: ``-S`` values, metric paths, parsing ``dvc.api.exp_show`` rows."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from tasks.dvc_experiments import format_value, metric_paths, parse_exp_show, set_params_args
from tasks.dvc_stage import dvc_executable
from tasks.process import child_env

EXP_SHOW_ROWS = Path(__file__).parents[1] / "flows" / "fixtures" / "exp_show_rows.json"
PATHS = {
    "train": "metrics/train.json",
    "live": "dvclive/train",
    "evaluate": "metrics/evaluate.json",
}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.001, "0.001"),
        (2, "2"),
        (True, "true"),
        (None, "null"),
        ("focal", "focal"),
        ([0.9, 1.1], "[0.9,1.1]"),
        ("a,b", "'a,b'"),  # a bare comma would be a DVC/Hydra sweep
        ("", "''"),
    ],
)
def test_values_format_as_dvc_set_param_reads_them(value, text):
    assert format_value(value) == text


def test_set_params_args():
    assert set_params_args({"train.lr": 0.001, "train.model.fusion": "mean"}) == [
        "-S",
        "train.lr=0.001",
        "-S",
        "train.model.fusion=mean",
    ]


def rows() -> list[dict]:
    """``dvc.api.exp_show`` rows (DVC 3.67) of the toy-scale DAG after two queued experiments:
    the trimmed ``dvc exp show --json`` of that run, tabulated by DVC's own code."""
    return json.loads(EXP_SHOW_ROWS.read_text())


def row_of(shown: list[dict], name: str) -> dict:
    return next(r for r in shown if r["Experiment"] == name)


def test_exp_show_parsing_on_dvc_3_rows():
    found = parse_exp_show(rows(), ["noted-jota", "agape-vega", "never-ran"], PATHS)
    assert found == {
        "noted-jota": {
            "rev": "0c64b44",
            "val_macro_auroc": pytest.approx(0.5556777728658437),
            "test_macro_auroc": 0.562371,
            "error": None,
        },
        "agape-vega": {
            "rev": "f13aa25",
            "val_macro_auroc": pytest.approx(0.5844488945666101),
            "test_macro_auroc": 0.493506,
            "error": None,
        },
    }


def test_exp_show_falls_back_to_dvclive():
    shown = rows()
    exp = row_of(shown, "agape-vega")
    del exp["val_macro_auroc"]  # metrics/train.json's
    exp["macro_auroc"] = "!"  # metrics/evaluate.json unreadable, as DVC marks it
    found = parse_exp_show(shown, ["agape-vega"], PATHS)["agape-vega"]
    assert found["val_macro_auroc"] == pytest.approx(
        0.5844488945666101
    )  # dvclive's val/macro_auroc
    assert found["test_macro_auroc"] is None
    assert found["error"] is None


def test_a_failed_experiment_reports_its_state_and_no_metrics():
    # DVC shows a failed experiment with the figures of the commit it started from
    shown = rows()
    row_of(shown, "agape-vega")["State"] = "Failed"
    found = parse_exp_show(shown, ["agape-vega"], PATHS)["agape-vega"]
    assert found == {
        "rev": "f13aa25",
        "val_macro_auroc": None,
        "test_macro_auroc": None,
        "error": "experiment failed in DVC's queue",
    }


def test_columns_named_with_their_file_are_read_too():
    row = {
        "Experiment": "e",
        "rev": "abc1234",
        "State": "Success",
        "m/t.json:val_macro_auroc": 0.7,
        "val_macro_auroc": 0.1,  # would be another file's: DVC prefixes both on a clash
        "m/e.json:macro_auroc": 0.6,
        "m/other.json:macro_auroc": 0.0,
    }
    paths = {"train": "m/t.json", "live": "live", "evaluate": "m/e.json"}
    found = parse_exp_show([row], ["e"], paths)["e"]
    assert (found["val_macro_auroc"], found["test_macro_auroc"]) == (0.7, 0.6)


def test_metric_paths_come_from_the_stages_params(tmp_path):
    (tmp_path / "params.yaml").write_text(
        "train:\n  metrics: m/t.json\n  live: live/t\nevaluate:\n  metrics: m/e.json\n"
    )
    assert metric_paths(tmp_path) == {"train": "m/t.json", "live": "live/t", "evaluate": "m/e.json"}
    (tmp_path / "params.yaml").write_text("base:\n  seed: 1\n")
    assert metric_paths(tmp_path) == PATHS  # the stages' own defaults
    (tmp_path / "params.yaml").write_text("train:\n  metrics_file: m/t.json\n")
    with pytest.raises(ConfigError, match="train.metrics_file"):
        metric_paths(tmp_path)


def run_dvc(repo: Path, *args: str) -> str:
    return subprocess.run(
        [dvc_executable(), *args], cwd=repo, env=child_env(), check=True, capture_output=True
    ).stdout.decode()


@pytest.mark.slow
def test_exp_show_parsing_on_a_real_repos_rows(experiments_repo):
    import dvc.api

    repo = experiments_repo
    run_dvc(repo, "exp", "run", "--queue", "-n", "good", "-S", "train.lr=0.004")
    run_dvc(repo, "exp", "run", "--queue", "-n", "bad", "-S", "train.lr=0.5")
    try:
        run_dvc(repo, "exp", "run", "--run-all", "-j", "1")
    finally:
        run_dvc(repo, "queue", "stop")
    shown = dvc.api.exp_show(repo=str(repo))
    good = row_of(shown, "good")
    assert "metrics/evaluate.json:macro_auroc" in good  # the clash named both columns
    assert "val_macro_auroc" in good and "val.macro_auroc" in good  # no clash: bare keys
    found = parse_exp_show(shown, ["good", "bad", "never-queued"], metric_paths(repo))
    assert found["good"] == {
        "rev": good["rev"],
        "val_macro_auroc": pytest.approx(0.4),
        "test_macro_auroc": pytest.approx(0.2),
        "error": None,
    }
    assert found["bad"]["error"] == "experiment failed in DVC's queue"
    assert (found["bad"]["val_macro_auroc"], found["bad"]["test_macro_auroc"]) == (None, None)
    assert set(found) == {"good", "bad"}
