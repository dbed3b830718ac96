"""The pipeline flow under Prefect's test harness: one task per DVC stage, skips visible."""

from __future__ import annotations

import asyncio
import re

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.pipeline import cxr_pipeline
from tasks.dvc_stage import StageFailed
from tests.conftest import dvc
from tests.flows.repos import clone_pipeline_repo

pytestmark = pytest.mark.slow


async def _task_runs(flow_run_id):
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name: r for r in runs}


def test_flow_runs_each_stage_then_skips(prefect_harness, mini_dvc_repo):
    state = cxr_pipeline(repo=str(mini_dvc_repo), return_state=True)
    assert state.is_completed()
    assert state.result() == {"make": "ran", "count": "ran"}
    runs = asyncio.run(_task_runs(state.state_details.flow_run_id))
    assert set(runs) == {"make", "count"}
    assert all(r.state.is_completed() for r in runs.values())

    again = cxr_pipeline(repo=str(mini_dvc_repo), return_state=True)
    assert again.result() == {"make": "skipped", "count": "skipped"}
    runs = asyncio.run(_task_runs(again.state_details.flow_run_id))
    assert {r.state.name for r in runs.values()} == {"Skipped"}

    # a changed param reruns its stage and what depends on it
    (mini_dvc_repo / "params.yaml").write_text("make:\n  n: 5\n")
    assert cxr_pipeline(repo=str(mini_dvc_repo)) == {"make": "ran", "count": "ran"}
    assert (mini_dvc_repo / "count.json").read_text() == '{"count": 5}'
    assert cxr_pipeline(repo=str(mini_dvc_repo), targets=["make"]) == {"make": "skipped"}


def test_failing_stage_fails_the_flow_without_retry(prefect_harness, mini_dvc_repo):
    (mini_dvc_repo / "bad.py").write_text("import sys\nsys.exit('error: no frontal view')\n")
    (mini_dvc_repo / "dvc.yaml").write_text("stages:\n  bad:\n    cmd: python3 bad.py\n")
    state = cxr_pipeline(repo=str(mini_dvc_repo), return_state=True)
    assert state.is_failed()
    # the flow's failed state names the stage and carries the stage's own error line
    assert re.search(r"stage 'bad' failed \(exit \d+\): error: no frontal view", state.message)
    with pytest.raises(StageFailed, match=r"^stage 'bad' failed \(exit \d+\): error: no frontal"):
        state.result()
    runs = asyncio.run(_task_runs(state.state_details.flow_run_id))
    assert runs["bad"].state.is_failed()
    assert runs["bad"].run_count == 1  # a data failure is not retried


def test_a_param_that_fails_a_real_stage_fails_it_once_with_its_error(
    prefect_harness, pipeline_repo, tmp_path
):
    repo = clone_pipeline_repo(pipeline_repo, tmp_path / "repo")
    assert dvc(repo, "checkout", "--with-deps", "augment").returncode == 0  # train's inputs
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # rejected by the stage's params validation. (Not `train.size: 8`: DVC's run cache ignores
    # params named `size`, treeverse/dvc#10296, and would restore the cached train outputs.)
    params["train"]["batch_size"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    state = cxr_pipeline(repo=str(repo), targets=["train"], return_state=True)
    assert state.is_failed()
    error = "error: params.yaml: train.batch_size: Input should be greater than or equal to 2"
    assert re.search(r"stage 'train' failed \(exit \d+\): " + re.escape(error), state.message)
    with pytest.raises(StageFailed, match=re.escape(error)):
        state.result()
    runs = asyncio.run(_task_runs(state.state_details.flow_run_id))
    upstream = ["synthesize", "ingest", "pair", "preprocess", "augment"]
    assert set(runs) == {*upstream, "train"}
    assert {runs[s].state.name for s in upstream} == {"Skipped"}
    assert runs["train"].state.is_failed()
    assert error in runs["train"].state.message
    assert runs["train"].run_count == 1  # a stage failing on its params is not retried
