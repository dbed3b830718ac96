"""A real `prefect server start`, the served deployment on a cron schedule, triggered runs.

Checks through the Prefect API: the schedule exists; two triggered runs complete with one task
run per DVC stage; the second run waits for the first (their stage task runs never overlap).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.serve import local_server

pytestmark = pytest.mark.slow


async def _deployment(name: str):
    async with get_client() as client:
        return await client.read_deployment_by_name(name)


async def _runs(flow_run_ids):
    async with get_client() as client:
        flows = [await client.read_flow_run(i) for i in flow_run_ids]
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids)))
        )
    return flows, tasks


def test_served_deployment_on_a_real_server(mini_dvc_repo, tmp_path):
    # a slow first stage, so that the second triggered run has to wait for the first
    (mini_dvc_repo / "make.py").write_text(
        "import time, yaml\n"
        "n = yaml.safe_load(open('params.yaml'))['make']['n']\n"
        "time.sleep(4)\n"
        "open('numbers.txt', 'w').write('\\n'.join(map(str, range(n))))\n"
    )
    (mini_dvc_repo / "params.yaml").write_text(
        "make:\n  n: 3\n"
        "schedule:\n  deployment: nightly-test\n  cron: '30 3 * * *'\n  timezone: Europe/Paris\n"
        f"  repo: {mini_dvc_repo}\n  force: true\n"
    )
    with local_server(home=tmp_path / "prefect-home") as api:
        env = os.environ | {"PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "ph")}
        server = subprocess.Popen(
            [sys.executable, "-m", "flows.serve"],
            cwd=mini_dvc_repo,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with temporary_settings({PREFECT_API_URL: api}):
                deadline = time.monotonic() + 90
                while True:
                    try:
                        deployment = asyncio.run(_deployment("cxr-pipeline/nightly-test"))
                        break
                    except Exception:
                        if time.monotonic() > deadline or server.poll() is not None:
                            raise
                        time.sleep(1)
                crons = [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules]
                assert crons == [("30 3 * * *", "Europe/Paris")]

                first = run_deployment("cxr-pipeline/nightly-test", timeout=0)
                second = run_deployment("cxr-pipeline/nightly-test", timeout=0)
                ids = [first.id, second.id]
                deadline = time.monotonic() + 240
                while True:
                    flows, tasks = asyncio.run(_runs(ids))
                    if all(f.state.is_final() for f in flows) or time.monotonic() > deadline:
                        break
                    time.sleep(2)
        finally:
            server.terminate()
            server.wait(timeout=30)

    assert [f.state.type.value for f in flows] == ["COMPLETED", "COMPLETED"]
    per_flow = {i: sorted(t.name for t in tasks if t.flow_run_id == i) for i in ids}
    assert per_flow == {i: ["count", "make"] for i in ids}
    spans = sorted(
        (
            min(t.start_time for t in tasks if t.flow_run_id == i),
            max(t.end_time for t in tasks if t.flow_run_id == i),
        )
        for i in ids
    )
    assert spans[0][1] <= spans[1][0], f"the two runs overlapped: {spans}"
