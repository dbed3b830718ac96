"""cxr-preprocess-parallel under Prefect's test harness: parts as tasks, merge, dvc commit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.scale import StepFailed, cxr_preprocess_parallel, preprocess_parallel
from pipelines.preprocess import PARTS_DIR, PreprocessParams, preprocess_studies
from tests.conftest import dvc
from tests.pipelines.preprocess.helpers import assert_same_prepared, make_dataset

pytestmark = pytest.mark.slow

PARAMS = {"image_size": 32, "shard_size": 2, "workers": 1, "grid": 4}
DVC_YAML = """stages:
  preprocess:
    cmd: python -m pipelines.preprocess
    deps: [data/studies/studies.parquet]
    params: [preprocess]
    outs: [data/prepared, data/prepared_rejected.csv]
    metrics: [metrics/preprocess.json]
    plots: [plots/preprocess/grid.png]
"""


@pytest.fixture
def preprocess_repo(tmp_path: Path) -> Path:
    """A git + DVC repo whose one stage is this project's preprocess, on 7 tiny studies."""
    import subprocess

    studies, _ = make_dataset(tmp_path)  # images in tmp_path/raw, the table's data_root
    repo = tmp_path / "repo"
    (repo / "data" / "studies").mkdir(parents=True)
    studies.to_parquet(repo / "data" / "studies" / "studies.parquet")
    (repo / "params.yaml").write_text(yaml.safe_dump({"preprocess": PARAMS}))
    (repo / "dvc.yaml").write_text(DVC_YAML)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert dvc(repo, "init", "-q").returncode == 0
    return repo


def single_process(repo: Path, out: Path) -> None:
    """The stage in one process, on the repo's table and params, into ``out``."""
    import pandas as pd

    studies = pd.read_parquet(repo / "data" / "studies" / "studies.parquet")
    preprocess_studies(studies, studies.attrs["data_root"], out, PreprocessParams(**PARAMS))


async def _task_runs(flow_run_id):
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name: r for r in runs}


def check_outputs(repo: Path, tmp_path: Path, parts: int) -> None:
    single_process(repo, tmp_path / "single")
    assert_same_prepared(tmp_path / "single", repo / "data" / "prepared")
    assert len(list((repo / "data" / "prepared" / PARTS_DIR).iterdir())) == parts
    status = dvc(repo, "status", "preprocess", "--json")
    assert status.returncode == 0 and json.loads(status.stdout.strip().splitlines()[-1]) == {}
    assert "data/prepared" in (repo / "dvc.lock").read_text()


def test_flow_runs_parts_in_parallel_merges_and_commits(prefect_harness, preprocess_repo, tmp_path):
    state = cxr_preprocess_parallel(parts=2, repo=str(preprocess_repo), return_state=True)
    assert state.is_completed(), state.message
    metrics = state.result()
    assert metrics["parts"] == 2 and metrics["committed"] and metrics["images_decoded"] == 10
    runs = asyncio.run(_task_runs(state.state_details.flow_run_id))
    assert sorted(n.rsplit("-", 1)[0] if n[-4] == "-" else n for n in runs) == [
        "dvc-commit",
        "part-0-of-2",
        "part-1-of-2",
        "preprocess-merge",
    ]
    assert all(r.state.is_completed() for r in runs.values())
    part_runs = [runs["part-0-of-2"], runs["part-1-of-2"]]  # they overlapped in time
    assert max(r.start_time for r in part_runs) < min(r.end_time for r in part_runs)
    check_outputs(preprocess_repo, tmp_path, parts=2)


def test_a_failing_part_fails_the_flow_naming_it_without_retry(prefect_harness, preprocess_repo):
    (preprocess_repo / "data" / "studies" / "studies.parquet").unlink()
    state = cxr_preprocess_parallel(parts=1, repo=str(preprocess_repo), return_state=True)
    assert state.is_failed()
    with pytest.raises(StepFailed, match=r"part 0 failed \(exit 2\).*studies table not found"):
        state.result()
    runs = asyncio.run(_task_runs(state.state_details.flow_run_id))
    assert runs["part-0-of-1"].state.is_failed() and runs["part-0-of-1"].run_count == 1
    assert not any(n.startswith(("preprocess-merge", "dvc-commit")) for n in runs)


def test_dask_local_cluster_with_two_workers(prefect_harness, preprocess_repo, tmp_path):
    """The DaskTaskRunner path, by scheduler address as for a remote cluster."""
    pytest.importorskip("prefect_dask")
    distributed = pytest.importorskip("distributed")
    # in-process workers start in a second; the parts are subprocesses either way
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        state = preprocess_parallel(
            2,
            str(preprocess_repo),
            commit=False,
            dask_address=cluster.scheduler_address,
            return_state=True,
        )
        assert state.is_completed(), state.message
        ran = {
            t.key
            for t in cluster.scheduler.transition_log
            if t.finish == "memory" and str(t.key).startswith("preprocess_part")
        }
    assert len(ran) == 2  # both parts ran as Dask tasks
    assert state.result()["parts"] == 2 and not (preprocess_repo / "dvc.lock").exists()
    single_process(preprocess_repo, tmp_path / "single")
    assert_same_prepared(tmp_path / "single", preprocess_repo / "data" / "prepared")
