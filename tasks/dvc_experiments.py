"""Prefect tasks around DVC experiments: queue them, run the queue, read their metrics.

An experiment is queued with its params overrides (``dvc exp run --queue -S key=value ...``),
the queue runs in temporary copies of the repository (``dvc exp run --run-all``, its log
streamed into the task's), and the metrics come from ``dvc.api.exp_show``: one flat row per
experiment. The flow ``cxr-sweep`` (``flows/sweep.py``) sequences them; no ML happens here.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipelines.config import load_params, parse_section
from tasks.dvc_stage import dvc_executable
from tasks.process import ERROR_PREFIXES, run_captured, stream

EXPERIMENT_LINE = re.compile(r"^Reproducing experiment '([^']+)'")


class ExperimentError(RuntimeError):
    """A DVC experiment command failed; the message carries its last output lines."""


# ------------------------------------------------------------------------------ queue


def format_value(value: Any) -> str:
    """A params value as DVC's ``-S key=value`` parses it (YAML-like; commas quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, separators=(",", ":"))
    text = str(value)
    # a bare comma would make DVC (Hydra's grammar) read a sweep of several values
    if any(c in text for c in ",[]{}()'\" =:") or not text:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def set_params_args(overrides: Mapping[str, Any]) -> list[str]:
    """``-S key=value`` arguments for one experiment."""
    args: list[str] = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={format_value(value)}"]
    return args


def _dvc(repo: Path, *args: str) -> str:
    """Run ``dvc <args>`` in ``repo`` and return its stdout.

    Raises:
        ExperimentError: dvc exited non-zero.
    """
    proc = run_captured([dvc_executable(), *args], repo)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-10:]
        raise ExperimentError(
            f"dvc {' '.join(args[:3])} failed (exit {proc.returncode}): " + " | ".join(tail)
        )
    return proc.stdout


@task(name="queue-experiment", task_run_name="queue {name}", cache_policy=NO_CACHE)
def queue_experiment(
    repo: str,
    name: str,
    overrides: dict[str, Any],
    targets: list[str] | None = None,
    force: bool = False,
) -> str:
    """Queue one DVC experiment with its params overrides; returns its name."""
    args = ["exp", "run", "--queue", "-n", name, *(["--force"] if force else [])]
    args += [*set_params_args(overrides), *(targets or [])]
    out = _dvc(Path(repo), *args)
    get_run_logger().info("%s", out.strip() or f"queued {name}")
    return name


class _QueueLog:
    """Logs the queue's output and collects each experiment's error lines."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.current = ""
        self.errors: dict[str, list[str]] = {}

    def __call__(self, line: str) -> None:
        self.logger.info("%s", line)
        found = EXPERIMENT_LINE.search(line)
        if found:
            self.current = found.group(1)
        elif line.startswith(ERROR_PREFIXES) and self.current:
            self.errors.setdefault(self.current, []).append(line)


def stop_queue_tasks(repo: str) -> list[str]:
    """Drop the queue's experiments not started yet and interrupt the running ones (as Ctrl-C).

    An interrupt reaches an experiment's whole process group (its stage commands); the queue's
    workers run in their own session, so killing ``dvc exp run --run-all`` leaves them going.

    Returns:
        The names (or stash revs) of the experiments interrupted.
    """
    from dvc.repo import Repo

    with Repo(repo) as dvc_repo:
        queue = dvc_repo.experiments.celery_queue
        queue.clear(queued=True)  # else a worker starts the next one once the running one stops
        running = [entry.name or entry.stash_rev for entry in queue.iter_active()]
        if running:
            queue.kill(running)
    return running


@task(name="run-experiment-queue", task_run_name="run queue", cache_policy=NO_CACHE)
def run_queue(repo: str, jobs: int = 1, timeout_s: float | None = None) -> dict[str, str]:
    """Run every queued experiment (``dvc exp run --run-all``), streaming their logs.

    Returns:
        experiment name -> its error lines, for those that printed ``error:`` / ``ERROR``.

    Raises:
        TimeoutError: the queue ran past ``timeout_s`` (its experiments are stopped).
        ExperimentError: ``dvc exp run --run-all`` exited non-zero.
    """
    dvc, logger = dvc_executable(), get_run_logger()
    log = _QueueLog(logger)
    try:
        cmd = [dvc, "exp", "run", "--run-all", "-j", str(jobs)]
        result = stream(cmd, repo, on_line=log, timeout_s=timeout_s, label="the experiment queue")
    except BaseException:
        try:
            logger.warning("stopped experiments %s", stop_queue_tasks(repo))
        except Exception as exc:  # the first error is the one to report
            logger.warning("could not stop the queue's experiments: %s", exc)
        raise
    finally:
        # workers idle up to ~10 s before leaving on their own: stop them now
        run_captured([dvc, "queue", "stop"], repo)
    if result.returncode != 0:
        raise ExperimentError(f"dvc exp run --run-all failed (exit {result.returncode})")
    return {name: " | ".join(dict.fromkeys(lines)) for name, lines in log.errors.items()}


# ------------------------------------------------------------------------------ metrics


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _column(row: Mapping[str, Any], path: str, key: str) -> float | None:
    """A metric of one ``dvc.api.exp_show`` row, as a finite number (None: absent, ``!``, NaN).

    DVC names a column ``<key>`` (nested keys joined by ``.``) and prefixes it with its file as
    ``<file>:<key>`` only where two files (or a param) share the key.
    """
    for column in (f"{path}:{key}", f"{path.replace('/', os.sep)}:{key}", key):
        if column in row:
            return finite_number(row[column])
    return None


def parse_exp_show(
    rows: list[Mapping[str, Any]], names: list[str], metric_paths: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Metrics of the named experiments from ``dvc.api.exp_show`` rows (DVC 3.x).

    Args:
        rows: one flat dict per baseline or experiment: ``Experiment`` (its name), ``rev``,
            ``State`` (``Success``, ``Failed``, ``Queued``, ``Running``; None outside the
            queue), then the metrics and params (see :func:`_column`).
        names: the experiments wanted.
        metric_paths: ``train``, ``live`` (dvclive folder) and ``evaluate`` metrics paths.

    Returns:
        name -> ``rev``, ``val_macro_auroc``, ``test_macro_auroc``, ``error`` (absent names are
        left out: the experiment failed before it was queued). An experiment that did not
        succeed has no metrics: DVC shows it with the values of the commit it started from.
    """
    live = f"{metric_paths['live'].rstrip('/')}/metrics.json"
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row.get("Experiment")
        if name not in names or name in found:
            continue
        state = row.get("State")
        ok = state in (None, "Success")
        val = _column(row, metric_paths["train"], "val_macro_auroc")
        if val is None:
            val = _column(row, live, "val.macro_auroc")
        found[name] = {
            "rev": str(row.get("rev") or "")[:7],
            "val_macro_auroc": val if ok else None,
            "test_macro_auroc": (
                _column(row, metric_paths["evaluate"], "macro_auroc") if ok else None
            ),
            "error": None if ok else f"experiment {str(state).lower()} in DVC's queue",
        }
    return found


def metric_paths(repo: str | Path) -> dict[str, str]:
    """Where the train and evaluate stages write their metrics (the repository's params.yaml).

    Raises:
        ConfigError: the ``train`` or ``evaluate`` section is not valid for its stage.
    """
    from pipelines.evaluate import EvaluateParams  # the stages' params pull in torch
    from pipelines.train import TrainParams

    params = load_params(Path(repo) / "params.yaml")
    train = parse_section(TrainParams, "train", params)
    evaluate = parse_section(EvaluateParams, "evaluate", params)
    return {"train": train.metrics, "live": train.live, "evaluate": evaluate.metrics}


@task(name="collect-experiments", task_run_name="collect metrics", cache_policy=NO_CACHE)
def collect_experiments(
    repo: str, names: list[str], paths: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Read the experiments' metrics with ``dvc.api.exp_show``.

    Raises:
        ExperimentError: DVC could not list the experiments.
    """
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        rows = dvc.api.exp_show(repo=repo)
    except DvcException as exc:
        raise ExperimentError(f"dvc exp show failed: {exc}") from exc
    return parse_exp_show(rows, names, paths)
