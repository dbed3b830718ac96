"""Scheduled runs: the pipeline flow served as a deployment with a cron schedule from config.

``cxr serve`` starts a local Prefect server on 127.0.0.1 (telemetry off) and serves the
deployment from this process (``flow.serve`` style, for one machine). Past one machine, register
the same deployment to a work pool with ``prefect deploy`` (see ``prefect.yaml``) and run workers.
The schedule lives in the ``schedule`` section of ``params.yaml`` (no stage reads it); beside it,
the ``cxr-score`` deployment on the ``score`` section's schedule (paused until a site names its
PACS).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.pipeline import cxr_pipeline
from flows.score import build_score_deployment
from pipelines.config import StageParams, load_section
from pipelines.scoring import ScoreParams

SERVER_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_UI_ENABLED": "true",
}


class ScheduleParams(StageParams):
    """The ``schedule`` section of params.yaml."""

    deployment: str = "nightly"
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    paused: bool = False
    targets: list[str] | None = None
    force: bool = False
    stage_timeout_s: float | None = None
    repo: str = "."


def build_deployment(cfg: ScheduleParams) -> RunnerDeployment:
    """The pipeline flow as a deployment with the configured cron schedule and parameters."""
    return cxr_pipeline.to_deployment(
        name=cfg.deployment,
        schedules=[Cron(cfg.cron, timezone=cfg.timezone)],
        paused=cfg.paused,
        parameters={
            "targets": cfg.targets,
            "force": cfg.force,
            "repo": str(Path(cfg.repo).resolve()),
            "stage_timeout_s": cfg.stage_timeout_s,
        },
        tags=["cxr-dag"],
        description="cxr-dag pipeline: one task per DVC stage",
        entrypoint_type=EntrypointType.MODULE_PATH,  # runs from any working directory
    )


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(api_url: str, timeout_s: float = 90.0) -> None:
    """Poll ``<api>/health`` until the server answers.

    Raises:
        TimeoutError: the server did not answer in time.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"Prefect server at {api_url} did not become healthy in {timeout_s:.0f} s")


@contextmanager
def local_server(port: int | None = None, home: Path | None = None) -> Iterator[str]:
    """Run ``prefect server start`` on 127.0.0.1 and yield its API URL; stop it on exit."""
    port = port or free_port()
    api = f"http://127.0.0.1:{port}/api"
    # the UI calls the API at PREFECT_UI_API_URL (default :4200): point it at this port
    env = os.environ | SERVER_ENV | {"PREFECT_UI_API_URL": api}
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    prefect = Path(sys.executable).with_name("prefect")
    proc = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(api)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def serve_pipeline(cfg: ScheduleParams, score: ScoreParams | None = None) -> None:
    """Serve the scheduled pipeline (and the ``cxr-score`` deployment) until interrupted."""
    deployments = [build_deployment(cfg)]
    if score is not None:
        deployments.append(build_score_deployment(score))
    serve(*deployments)


def main() -> None:
    """``python -m flows.serve``: local server + the served deployment (Ctrl-C stops both).

    With ``PREFECT_API_URL`` set, serves against that server instead of starting one.
    """
    cfg = load_section(ScheduleParams, "schedule")
    score = load_section(ScoreParams, "score")
    if os.environ.get("PREFECT_API_URL"):
        serve_pipeline(cfg, score)
        return
    port = int(os.environ.get("CXR_PREFECT_PORT", "4200"))
    with local_server(port=port) as api, temporary_settings({PREFECT_API_URL: api}):
        print(
            f"Prefect UI: {api.removesuffix('/api')}  (deployments cxr-pipeline/{cfg.deployment}, "
            f"cxr-score/{score.deployment})"
        )
        serve_pipeline(cfg, score)


if __name__ == "__main__":
    main()
