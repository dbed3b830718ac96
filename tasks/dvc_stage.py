"""Prefect tasks around DVC: read the stage graph, run one stage, wait on DVC's lock.

DVC owns caching and versions: a task asks ``dvc status`` whether its stage is up to date and
returns a ``Skipped`` state when it is, otherwise runs ``dvc repro --single-item`` with the
stage's output streamed line by line into the Prefect log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from pipelines.errors import UserError
from tasks.process import run_captured, stream

LOCK_MARKERS = ("Unable to acquire lock", "is busy, it is being blocked by")


class StageFailed(UserError):
    """A DVC stage exited non-zero; the message carries the stage name and its error lines."""


class DvcLockTimeout(RuntimeError):
    """DVC's workspace lock stayed held longer than the wait allowed."""


@dataclass(frozen=True)
class StageInfo:
    """A stage of ``dvc.yaml`` and the stages it depends on."""

    name: str
    upstream: tuple[str, ...]


def dvc_executable() -> str:
    """The ``dvc`` beside the running interpreter (the project's venv), else on PATH."""
    candidate = Path(sys.executable).with_name("dvc")
    return str(candidate) if candidate.exists() else "dvc"


def read_stage_graph(repo: str | Path = ".", targets: list[str] | None = None) -> list[StageInfo]:
    """Stages of ``dvc.yaml`` in run order (dependencies first, then file order).

    Args:
        repo: the DVC repository root.
        targets: run only these stages and what they depend on (``None``: all).

    Raises:
        ValueError: a target is not a stage of the repository.
    """
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(repo)) as dvc_repo:
        # dvc.yaml's stages only: a `dvc add`ed input (a .dvc file) is data, not a task
        stages = [s for s in dvc_repo.index.stages if isinstance(s, PipelineStage)]
        graph = dvc_repo.index.graph.subgraph(stages)  # edges: stage -> the stage it needs
        names = {stage: stage.name for stage in graph.nodes}
        position = {stage.name: i for i, stage in enumerate(stages)}
        dag = nx.relabel_nodes(graph, names).reverse()  # edges: dependency -> dependent
    if targets:
        unknown = sorted(set(targets) - set(dag.nodes))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {sorted(dag.nodes)}")
        keep = set(targets).union(*(nx.ancestors(dag, t) for t in targets))
        dag = dag.subgraph(keep)
    order = nx.lexicographical_topological_sort(dag, key=lambda n: f"{position.get(n, 0):06d}")
    return [StageInfo(n, tuple(sorted(dag.predecessors(n), key=position.get))) for n in order]


def _is_lock_error(output: str) -> bool:
    return any(marker in output for marker in LOCK_MARKERS)


def stage_is_up_to_date(name: str, repo: Path, lock_wait_s: float = 600.0) -> bool:
    """True when ``dvc status <stage>`` reports nothing changed (waits on DVC's lock)."""
    deadline = time.monotonic() + lock_wait_s
    while True:
        proc = run_captured([dvc_executable(), "status", name, "--json"], repo)
        code, out = proc.returncode, proc.stdout + proc.stderr
        if code == 0:
            text = out.strip().splitlines()
            data = json.loads(text[-1]) if text else {}
            return not data
        if not _is_lock_error(out) or time.monotonic() > deadline:
            raise StageFailed(f"dvc status {name} failed: {out.strip()[-2000:]}")
        time.sleep(2.0)


def stream_stage(
    name: str,
    repo: Path,
    force: bool,
    timeout_s: float | None,
    lock_wait_s: float,
    logger: logging.Logger | logging.LoggerAdapter,
) -> None:
    """Run ``dvc repro --single-item <stage>``, logging each output line; retry on DVC's lock.

    Args:
        name: the stage.
        repo: the DVC repository root.
        force: rerun it even when DVC finds it up to date.
        timeout_s: wall-clock limit per attempt (``None``: none).
        lock_wait_s: how long to keep retrying while another run holds DVC's lock.
        logger: where each output line goes (``<stage> | <line>``).

    Raises:
        StageFailed: the stage exited non-zero (message: stage name + its last error lines).
        DvcLockTimeout: the workspace lock did not free within ``lock_wait_s``.
        TimeoutError: the stage ran past ``timeout_s`` (killed with what it started).
    """
    cmd = [dvc_executable(), "repro", "--single-item", name] + (["--force"] if force else [])
    deadline = time.monotonic() + lock_wait_s
    while True:
        result = stream(
            cmd,
            repo,
            on_line=lambda line: logger.info("%s | %s", name, line),
            timeout_s=timeout_s,
            label=f"stage '{name}'",
        )
        if result.returncode == 0:
            return
        if _is_lock_error(result.output) and time.monotonic() < deadline:
            logger.warning("stage '%s': DVC workspace is locked by another run; waiting", name)
            time.sleep(5.0)
            continue
        if _is_lock_error(result.output):
            raise DvcLockTimeout(f"stage '{name}': DVC lock still held after {lock_wait_s:.0f} s")
        raise StageFailed(
            f"stage '{name}' failed (exit {result.returncode}): " + " | ".join(result.error_lines())
        )


@task(
    name="dvc-stage",
    task_run_name="{name}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=[10],
    retry_condition_fn=lambda task, run, state: _transient(state),
)
def run_dvc_stage(
    name: str,
    repo: str = ".",
    force: bool = False,
    timeout_s: float | None = None,
    lock_wait_s: float = 3600.0,
) -> State | str:
    """Run one DVC stage, or report it skipped when DVC's cache is up to date."""
    logger = get_run_logger()
    root = Path(repo)
    if not force and stage_is_up_to_date(name, root, lock_wait_s):
        logger.info("stage '%s' is up to date: skipped (DVC cache)", name)
        return Completed(message=f"{name}: up to date, skipped by DVC", name="Skipped")
    stream_stage(name, root, force, timeout_s, lock_wait_s, logger)
    return "ran"


def _transient(state: State) -> bool:
    """Retry only failures that may pass on their own (not a stage failing on its data)."""
    try:
        state.result()
    except (StageFailed, ValueError):
        return False
    except (DvcLockTimeout, TimeoutError, OSError):
        return True
    except Exception:
        return False
    return False
