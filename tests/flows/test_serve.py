"""A real `prefect server start`, served deployments on a cron schedule, triggered runs, the UI.

One server for the module. Checks through the Prefect API:
- the mini repo's deployment: its cron schedule exists; two triggered runs complete with one task
  run per DVC stage and the second waits for the first (their stage task runs never overlap);
- the real DAG (conftest's ``pipeline_repo``): a triggered run of the served deployment completes
  with one task run per stage of dvc.yaml (all ``Skipped``: DVC's cache is up to date) and the
  evaluate / export artifacts, whose contents hold no PHI;
- headless Chromium renders the UI page of that flow run with its task runs (skipped when
  Chromium is not installed).
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.serve import free_port, local_server
from tasks.artifacts import (
    ARTIFACT_KEY,
    EVALUATE_AUROC,
    EVALUATE_GATE,
    EVALUATE_SUMMARY,
    EXPORT_PARITY,
    LATERAL_GAIN,
)
from tasks.workspace import scoped
from tests.conftest import dicom_phi_values

pytestmark = pytest.mark.slow

STAGES = ["synthesize", "ingest", "pair", "preprocess", "augment", "train", "evaluate", "export"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """One real ``prefect server start`` on a free loopback port for the module."""
    home = tmp_path_factory.mktemp("prefect-server")
    # local_server points the UI at its own port (the screenshot test shows it reaching the API)
    with (
        local_server(port=free_port(), home=home) as api,
        temporary_settings({PREFECT_API_URL: api}),
    ):
        yield api


@contextmanager
def served(repo: Path, api: str, home: Path) -> Iterator[subprocess.Popen]:
    """``python -m flows.serve`` in ``repo`` against ``api`` (its schedule from params.yaml)."""
    env = os.environ | {"PREFECT_API_URL": api, "PREFECT_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.serve"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _deployment(name: str):
    async with get_client() as client:
        return await client.read_deployment_by_name(name)


def wait_deployment(name: str, proc: subprocess.Popen, timeout_s: float = 90):
    """The deployment once the served process has registered it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return asyncio.run(_deployment(name))
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(1)


async def _runs(flow_run_ids):
    async with get_client() as client:
        flows = [await client.read_flow_run(i) for i in flow_run_ids]
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids)))
        )
    return flows, tasks


def wait_final(flow_run_ids, timeout_s: float = 240):
    """Flow runs (and their task runs) once every one is in a final state, or at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        flows, tasks = asyncio.run(_runs(flow_run_ids))
        if all(f.state.is_final() for f in flows) or time.monotonic() > deadline:
            return flows, tasks
        time.sleep(2)


async def _artifacts_and_logs(flow_run_id):
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return artifacts, logs


def test_served_deployment_on_a_real_server(server, mini_dvc_repo, tmp_path):
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
    with served(mini_dvc_repo, server, tmp_path / "ph") as proc:
        deployment = wait_deployment("cxr-pipeline/nightly-test", proc)
        crons = [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules]
        assert crons == [("30 3 * * *", "Europe/Paris")]

        first = run_deployment("cxr-pipeline/nightly-test", timeout=0)
        second = run_deployment("cxr-pipeline/nightly-test", timeout=0)
        ids = [first.id, second.id]
        flows, tasks = wait_final(ids)

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


@pytest.fixture(scope="module")
def real_dag_run(server, pipeline_repo, tmp_path_factory) -> SimpleNamespace:
    """The served deployment of the real DAG (``pipeline_repo``), triggered once, finished."""
    home = tmp_path_factory.mktemp("serve-home")
    start = time.monotonic()
    with served(pipeline_repo, server, home) as proc:
        deployment = wait_deployment("cxr-pipeline/nightly", proc)
        run = run_deployment("cxr-pipeline/nightly", timeout=0)
        (flow_run,), tasks = wait_final([run.id], timeout_s=300)
    artifacts, logs = asyncio.run(_artifacts_and_logs(run.id))
    return SimpleNamespace(
        api=server,
        repo=pipeline_repo,
        deployment=deployment,
        flow_run=flow_run,
        tasks=sorted(tasks, key=lambda t: t.start_time),
        artifacts={a.key: a for a in artifacts},
        logs=logs,
        seconds=time.monotonic() - start,
    )


def test_real_dag_run_has_one_task_per_stage(real_dag_run):
    run = real_dag_run
    assert run.flow_run.state.is_completed(), run.flow_run.state.message
    assert [t.name for t in run.tasks] == STAGES
    assert {t.state.name for t in run.tasks} == {"Skipped"}  # DVC's cache is up to date
    assert all(t.run_count == 1 for t in run.tasks)
    assert run.deployment.parameters["repo"] == str(run.repo.resolve())
    assert [s.schedule.cron for s in run.deployment.schedules] == ["0 2 * * *"]
    print(f"real DAG served run: {run.seconds:.0f} s (serve + trigger + 8 skipped stages)")


def test_real_dag_run_publishes_the_artifacts(real_dag_run):
    repo = real_dag_run.repo
    # keyed for the served checkout's workspace: the serving process and this one agree on it
    # (no subgroup table: the toy run's test split has no subgroup with 5 positives to compare)
    key = {kind: scoped(kind, repo) for kind in (EVALUATE_AUROC, EVALUATE_SUMMARY, LATERAL_GAIN,
                                                  EVALUATE_GATE, EXPORT_PARITY)}  # fmt: skip
    arts = {kind: real_dag_run.artifacts[k] for kind, k in key.items()}
    assert set(real_dag_run.artifacts) == set(key.values())
    assert all(ARTIFACT_KEY.match(k) for k in key.values())
    headline = json.loads((repo / "metrics" / "evaluate.json").read_text())
    findings = json.loads((repo / "metrics" / "evaluate_findings.json").read_text())["findings"]

    auroc = {r["finding"]: r for r in json.loads(arts[EVALUATE_AUROC].data)}
    assert set(auroc) == set(findings) | {"macro average"}
    assert len(findings) == 14
    macro = auroc["macro average"]
    assert macro["auroc"] == round(headline["macro_auroc"], 3)
    assert macro["ci_low"] <= macro["auroc"] <= macro["ci_high"]
    for name, f in findings.items():
        row = auroc[name]
        assert (row["n_pos"], row["n_neg"]) == (f["n_pos"], f["n_neg"])
        if "auroc" in f:
            assert row["auroc"] == round(f["auroc"], 3)
        else:
            assert row["auroc"] == "not estimable"

    lateral = {r["finding"]: r for r in json.loads(arts[LATERAL_GAIN].data)}
    assert lateral["macro average"]["delta"] == round(headline["lateral_gain"]["macro_delta"], 3)
    assert {r["verdict"] for r in lateral.values()} <= {
        "helps",
        "hurts",
        "neutral",
        "not estimable",
    }

    summary = arts[EVALUATE_SUMMARY].data
    assert summary.startswith("# Evaluation summary")
    gate = json.loads((repo / "metrics" / "evaluate_ood.json").read_text())
    assert f"refused: {gate['test_refused']} of {gate['test_studies']}" in arts[EVALUATE_GATE].data
    report_html = (repo / "outputs" / "evaluation" / "report.html").resolve()
    assert report_html.as_uri() in summary and report_html.is_file()

    export = json.loads((repo / "metrics" / "export.json").read_text())
    parity = {r["format"]: r for r in json.loads(arts[EXPORT_PARITY].data)}
    assert set(parity) == set(export["parity"]) | set(export.get("skipped") or {})
    for fmt in export["parity"]:
        assert parity[fmt]["passed"] == "yes"
        assert parity[fmt]["max_abs_dprob"] <= parity[fmt]["tol_max_abs_dprob"]


def test_no_phi_in_the_artifacts_or_logs(real_dag_run):
    phi = dicom_phi_values(real_dag_run.repo / "data" / "raw" / "synthetic")
    assert len(phi) > 100  # names, ids, accession numbers, birth dates, institutions, UIDs
    texts = [
        f"{a.key}\n{a.description}\n{a.data if isinstance(a.data, str) else json.dumps(a.data)}"
        for a in real_dag_run.artifacts.values()
    ]
    texts += [log.message for log in real_dag_run.logs]
    blob = "\n".join(texts)
    pattern = re.compile(
        r"(?<![\w.])(" + "|".join(map(re.escape, sorted(phi))) + r")(?![\w.])", re.IGNORECASE
    )
    leaks = sorted(set(pattern.findall(blob)))
    assert not leaks, f"PHI in the Prefect UI: {leaks[:10]}"


def _png_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float32)


def _chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on loopback pages only (no GPU, no sandbox: CI containers run as root)."""
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "--virtual-time-budget=20000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=os.environ | {"HOME": str(profile)},
    )


def test_ui_page_of_the_flow_run_renders_its_task_runs(real_dag_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    page = f"{real_dag_run.api.removesuffix('/api')}/runs/flow-run/{real_dag_run.flow_run.id}"
    shot = tmp_path / "flow-run.png"
    proc = _chromium(chromium, tmp_path / "profile", f"--screenshot={shot}", page)
    assert shot.is_file(), f"no screenshot: {proc.stderr[-2000:]}"
    if keep := os.environ.get("CXR_SCREENSHOT_DIR"):  # to look at it
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "flow-run.png")
    pixels = _png_pixels(shot)
    assert pixels.shape == (1000, 1400)
    assert shot.stat().st_size > 20_000, "the screenshot is nearly empty"
    assert pixels.std() > 10, f"the screenshot is blank (pixel std {pixels.std():.1f})"
    # text, widgets and the run graph, not one flat colour or an error toast on a blank page
    assert len(np.unique(pixels.astype(np.uint8))) > 32

    # the same page's DOM once rendered: the run's header and each stage's task-run log
    # (the run graph in the screenshot is a canvas; its node labels are not in the DOM)
    dom = _chromium(chromium, tmp_path / "profile", "--dump-dom", page)
    if keep:
        (Path(keep) / "flow-run.html").write_text(dom.stdout)
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom.stdout)))
    assert "8 Task runs" in text and "Completed" in text and "cxr-pipeline" in text
    missing = [s for s in STAGES if f"Finished in state Skipped('{s}: up to date" not in text]
    assert not missing, f"task runs not on the page: {missing}"
