"""Sweeps as DVC experiments: overrides, the CLI, parsing `dvc exp show --json`, a real sweep."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.sweep import (
    best_experiment,
    cxr_sweep,
    expand_grid,
    format_value,
    parse_cli,
    parse_exp_show,
    run_cache_blind,
    set_params_args,
)
from tasks.artifacts import SWEEP_KEY, sweep_rows
from tests.conftest import dvc, git
from tests.flows.repos import clone_pipeline_repo

EXP_SHOW = Path(__file__).parent / "fixtures" / "exp_show.json"
PATHS = {
    "train": "metrics/train.json",
    "live": "dvclive/train",
    "evaluate": "metrics/evaluate.json",
}


def test_grid_expands_as_a_product_in_key_order():
    grid = {"train.lr": [0.001, 0.002], "train.focal_gamma": [1.0, 2.0], "train.epochs": [1]}
    assert expand_grid(grid) == [
        {"train.lr": 0.001, "train.focal_gamma": 1.0, "train.epochs": 1},
        {"train.lr": 0.001, "train.focal_gamma": 2.0, "train.epochs": 1},
        {"train.lr": 0.002, "train.focal_gamma": 1.0, "train.epochs": 1},
        {"train.lr": 0.002, "train.focal_gamma": 2.0, "train.epochs": 1},
    ]
    assert expand_grid(None) == []
    with pytest.raises(ValueError, match="no values for \\['train.lr'\\]"):
        expand_grid({"train.lr": []})


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


def test_a_size_param_is_refused_unless_forced():
    # DVC's run cache leaves params named size/nfiles out of the stage hash (treeverse/dvc#10296)
    assert run_cache_blind({"train.size": 96, "train.lr": 0.1, "train.batch_size": 8}) == [
        "train.size"
    ]
    assert run_cache_blind({"params.yaml:preprocess.size": 224}) == ["params.yaml:preprocess.size"]
    with pytest.raises(ValueError, match=r"ignores params named size/nfiles \(train.size"):
        cxr_sweep.fn(grid={"train.size": [64, 96]}, repo=".")
    assert parse_cli(["--grid", "train.size=64,96", "--force"])["force"] is True


def test_cli_grid_and_experiments():
    params = parse_cli(
        [
            "--grid",
            "train.lr=0.001,0.002",
            "--grid",
            "augment.scale=[0.9,1.1],[0.95,1.05]",
            "--exp",
            "train.lr=0.004 train.focal_gamma=1 train.resume=true",
            "--target",
            "evaluate",
            "--repo",
            "/data/cxr",
        ]
    )
    assert params == {
        "overrides": [{"train.lr": 0.004, "train.focal_gamma": 1, "train.resume": True}],
        "grid": {"train.lr": [0.001, 0.002], "augment.scale": [[0.9, 1.1], [0.95, 1.05]]},
        "targets": ["evaluate"],
        "repo": "/data/cxr",
        "jobs": 1,
        "name": None,
        "timeout_s": None,
        "force": False,
    }
    with pytest.raises(SystemExit):
        parse_cli(["--repo", "."])  # nothing to sweep


def test_exp_show_parsing_on_dvc_3_output():
    # `dvc exp show --json` of DVC 3.67 after two queued experiments on the toy-scale DAG
    shown = json.loads(EXP_SHOW.read_text())
    found = parse_exp_show(shown, ["noted-jota", "agape-vega", "never-ran"], PATHS)
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


def test_exp_show_falls_back_to_dvclive_and_reports_errors():
    shown = json.loads(EXP_SHOW.read_text())
    exp = next(e for e in shown[1]["experiments"] if e["name"] == "agape-vega")["revs"][0]
    del exp["data"]["metrics"]["metrics/train.json"]
    del exp["data"]["metrics"]["metrics/evaluate.json"]
    exp["error"] = {"msg": "Experiment run failed", "type": ""}
    found = parse_exp_show(shown, ["agape-vega"], PATHS)["agape-vega"]
    assert found["val_macro_auroc"] == pytest.approx(
        0.5844488945666101
    )  # dvclive's val/macro_auroc
    assert found["test_macro_auroc"] is None
    assert found["error"] == "Experiment run failed"


def test_best_is_the_max_of_the_experiments_that_succeeded():
    rows = [
        {"experiment": "a", "val_macro_auroc": 0.61, "status": "ok"},
        {"experiment": "b", "val_macro_auroc": 0.74, "status": "ok"},
        {"experiment": "c", "val_macro_auroc": 0.99, "status": "failed: error: ..."},
        {"experiment": "d", "val_macro_auroc": None, "status": "no val_macro_auroc"},
    ]
    assert best_experiment(rows)["experiment"] == "b"
    assert best_experiment(rows[2:]) is None
    table = sweep_rows(
        [
            {
                "experiment": "b",
                "overrides": {"train.lr": 0.002},
                "val_macro_auroc": 0.743219,
                "test_macro_auroc": None,
                "status": "ok",
                "rev": "abc1234",
            }
        ],
        best="b",
    )
    assert table == [
        {
            "experiment": "b",
            "best": "yes",
            "overrides": "train.lr=0.002",
            "val_macro_auroc": 0.7432,
            "test_macro_auroc": "not evaluated",
            "status": "ok",
            "rev": "abc1234",
        }
    ]


async def _artifacts(flow_run_id):
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


@pytest.mark.slow
def test_sweep_of_two_experiments_on_the_real_dag(prefect_harness, pipeline_repo, tmp_path):
    repo = clone_pipeline_repo(pipeline_repo, tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD").stdout
    start = time.monotonic()
    state = cxr_sweep(
        grid={"train.lr": [0.001, 0.004]},
        targets=["evaluate"],
        repo=str(repo),
        name="tiny",
        timeout_s=900,
        return_state=True,
    )
    elapsed = time.monotonic() - start
    result = state.result()
    rows = result["experiments"]
    assert [(r["experiment"], r["overrides"], r["status"]) for r in rows] == [
        ("tiny-1", {"train.lr": 0.001}, "ok"),
        ("tiny-2", {"train.lr": 0.004}, "ok"),
    ]
    for row in rows:
        assert 0.0 <= row["val_macro_auroc"] <= 1.0
        assert 0.0 <= row["test_macro_auroc"] <= 1.0
    assert result["best"]["val_macro_auroc"] == max(r["val_macro_auroc"] for r in rows)

    # the experiments exist in DVC, and nothing was applied to the workspace
    shown = dvc(repo, "exp", "show", "--json")
    assert "tiny-1" in shown.stdout and "tiny-2" in shown.stdout
    assert git(repo, "rev-parse", "HEAD").stdout == head
    assert git(repo, "status", "--porcelain", "--untracked-files=no").stdout == ""
    # the comparison table artifact of this flow run
    mine = asyncio.run(_artifacts(state.state_details.flow_run_id))
    assert [a.key for a in mine] == [SWEEP_KEY]
    table = json.loads(mine[0].data)
    assert [r["experiment"] for r in table] == ["tiny-1", "tiny-2"]
    assert [r["val_macro_auroc"] for r in table] == [round(r["val_macro_auroc"], 4) for r in rows]
    assert [r["best"] for r in table].count("yes") == 1
    assert f"dvc exp apply {result['best']['experiment']}" in mine[0].description
    print(f"sweep of 2 experiments: {elapsed:.0f} s")


def test_dvc_run_cache_is_blind_to_a_param_named_size(mini_dvc_repo):
    """Why the sweep refuses `size` params: DVC restores stale outputs (treeverse/dvc#10296).

    When this test fails, the installed DVC hashes such params again: drop RUN_CACHE_BLIND.
    """
    script = "import yaml\np = yaml.safe_load(open('params.yaml'))['make']\n"
    script += "open('numbers.txt', 'w').write(f\"{p['size']} {p['count']}\")\n"
    (mini_dvc_repo / "make.py").write_text(script)
    params = mini_dvc_repo / "params.yaml"
    params.write_text("make:\n  size: 3\n  count: 3\n")
    assert dvc(mini_dvc_repo, "repro", "make").returncode == 0
    params.write_text("make:\n  size: 5\n  count: 3\n")
    out = dvc(mini_dvc_repo, "repro", "make")
    assert "is cached - skipping run" in out.stdout
    assert (mini_dvc_repo / "numbers.txt").read_text() == "3 3"  # stale: size 5 never ran
    params.write_text("make:\n  size: 5\n  count: 4\n")  # any other param is seen
    assert "Running stage 'make'" in dvc(mini_dvc_repo, "repro", "make").stdout
    assert (mini_dvc_repo / "numbers.txt").read_text() == "5 4"
