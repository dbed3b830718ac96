"""Sweeps: params overrides run as DVC experiments, compared in a Prefect table artifact.

The flow ``cxr-sweep`` takes a list of overrides (``[{"train.lr": 0.001}, ...]``) and / or a
grid (``{"train.lr": [0.001, 0.002], "train.focal_gamma": [1.0, 2.0]}``, expanded as a product),
and then:

1. queues one DVC experiment per override set (``dvc exp run --queue -S key=value ... -n name
   [targets]``), named ``<prefix>-<i>``;
2. runs the queue (``dvc exp run --run-all -j <jobs>``): each experiment runs in its own temporary
   copy of the repository, so the workspace is left as it is, and stages whose inputs did not
   change are restored from DVC's cache (a sweep over ``train.*`` reruns train and what follows);
3. collects their metrics (``dvc exp show --json``): validation macro AUROC from the train
   stage's metrics (``val_macro_auroc``, or dvclive's ``val/macro_auroc``) and test macro AUROC
   from the evaluate stage's (``macro_auroc``, when ``evaluate`` was a target);
4. publishes the comparison as the table artifact ``cxr-sweep`` and returns the best experiment
   by validation macro AUROC.

Nothing is applied to the workspace. To adopt the best experiment, apply it yourself and commit::

    dvc exp apply <name>          # params, dvc.lock and outputs of the experiment
    git add -A && git commit -m "adopt <name>"   # or: dvc exp branch <name> <branch>

From a shell (``--grid`` and ``--exp`` may repeat; values are YAML: 0.001, true, null, [1, 2])::

    python -m flows.sweep --grid train.lr=0.001,0.002 --grid train.focal_gamma=1,2 \\
        --target evaluate
    python -m flows.sweep --exp "train.lr=0.001 train.focal_gamma=1" --exp "train.lr=0.002"

A sweep holds the same Prefect concurrency slot as the pipeline flow for its workspace: queueing
snapshots the workspace, so a pipeline run and a sweep of one workspace never overlap.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from flows.pipeline import workspace_limit_name
from pipelines.config import load_params
from tasks.artifacts import SWEEP_KEY, publish_sweep, sweep_rows
from tasks.dvc_stage import dvc_executable
from tasks.prefect_admin import ensure_concurrency_limit

BEST_METRIC = "val_macro_auroc"
#: DVC's run cache leaves keys with these names out of a stage's hash, params included
#: (treeverse/dvc#10296): an experiment changing only such a param restores the baseline's outputs
RUN_CACHE_BLIND = ("size", "nfiles")
EXPERIMENT_LINE = re.compile(r"^Reproducing experiment '([^']+)'")


class SweepError(RuntimeError):
    """A DVC experiment command failed; the message carries its last output lines."""


# ------------------------------------------------------------------------------ overrides


def expand_grid(grid: Mapping[str, list[Any]] | None) -> list[dict[str, Any]]:
    """Every combination of a grid's values, in the grid's key order.

    Raises:
        ValueError: a key has no values.
    """
    if not grid:
        return []
    empty = [k for k, v in grid.items() if not isinstance(v, list | tuple) or not v]
    if empty:
        raise ValueError(f"grid: no values for {empty}")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


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


def run_cache_blind(overrides: Mapping[str, Any]) -> list[str]:
    """The overridden params DVC's run cache cannot see (named ``size`` or ``nfiles``)."""
    return [k for k in overrides if k.rsplit(".", 1)[-1].split(":")[-1] in RUN_CACHE_BLIND]


def set_params_args(overrides: Mapping[str, Any]) -> list[str]:
    """``-S key=value`` arguments for one experiment."""
    args: list[str] = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={format_value(value)}"]
    return args


# ------------------------------------------------------------------------------ dvc


def _env() -> dict[str, str]:
    """dvc.yaml's commands call ``python``: the interpreter running this flow (its venv)."""
    return os.environ | {
        "PYTHONUNBUFFERED": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def _dvc(repo: Path, *args: str) -> str:
    """Run ``dvc <args>`` in ``repo`` and return its stdout.

    Raises:
        SweepError: dvc exited non-zero.
    """
    proc = subprocess.run(
        [dvc_executable(), *args], cwd=repo, capture_output=True, text=True, env=_env()
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-10:]
        raise SweepError(
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


@task(name="run-experiment-queue", task_run_name="run queue", cache_policy=NO_CACHE)
def run_queue(repo: str, jobs: int = 1, timeout_s: float | None = None) -> dict[str, str]:
    """Run every queued experiment (``dvc exp run --run-all``), streaming their logs.

    Returns:
        experiment name -> its error lines, for those that printed ``error:`` / ``ERROR``.

    Raises:
        TimeoutError: the queue ran past ``timeout_s`` (its tasks are killed).
    """
    logger = get_run_logger()
    cmd = [dvc_executable(), "exp", "run", "--run-all", "-j", str(jobs)]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=repo, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    errors: dict[str, list[str]] = {}
    current = ""
    try:
        for raw in proc.stdout:
            line = raw.rstrip()
            logger.info("%s", line)
            found = EXPERIMENT_LINE.search(line)
            if found:
                current = found.group(1)
            elif line.startswith(("error:", "ERROR")) and current:
                errors.setdefault(current, []).append(line)
            if timeout_s and time.monotonic() - start > timeout_s:
                raise TimeoutError(f"the experiment queue ran past {timeout_s:.0f} s")
        if proc.wait() != 0:
            raise SweepError(f"dvc exp run --run-all failed (exit {proc.returncode})")
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(
                [dvc_executable(), "queue", "kill", "--all"], cwd=repo, env=_env(), check=False
            )
        # workers idle up to ~10 s before leaving on their own: stop them now
        subprocess.run(
            [dvc_executable(), "queue", "stop"],
            cwd=repo,
            env=_env(),
            capture_output=True,
            check=False,
        )
    return {name: " | ".join(dict.fromkeys(lines)) for name, lines in errors.items()}


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every dict with a ``name`` and a ``data`` block in ``dvc exp show --json``'s tree."""
    if isinstance(node, dict):
        if isinstance(node.get("data"), dict) and "name" in node:
            yield node
        for value in node.values():
            if isinstance(value, list | dict):
                yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _metric(metrics: Mapping[str, Any], path: str, *keys: str) -> float | None:
    block = metrics.get(path) or metrics.get(path.replace("/", os.sep)) or {}
    value: Any = block.get("data", block) if isinstance(block, dict) else None
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return _number(value)


def parse_exp_show(
    shown: Any, names: list[str], metric_paths: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Metrics of the named experiments from ``dvc exp show --json`` (DVC 3.x).

    Args:
        shown: the parsed JSON: a list of baselines, each with ``experiments`` holding
            ``revs`` whose ``data`` has ``metrics`` / ``params`` keyed by file path.
        names: the experiments wanted.
        metric_paths: ``train``, ``live`` (dvclive folder) and ``evaluate`` metrics paths.

    Returns:
        name -> ``rev``, ``val_macro_auroc``, ``test_macro_auroc``, ``error`` (absent names are
        left out: the experiment failed before it was saved).
    """
    found: dict[str, dict[str, Any]] = {}
    for node in _walk(shown):
        name = node.get("name")
        if name not in names or name in found:
            continue
        data = node["data"]
        metrics = data.get("metrics") or {}
        val = _metric(metrics, metric_paths["train"], "val_macro_auroc")
        if val is None:
            live = f"{metric_paths['live'].rstrip('/')}/metrics.json"
            val = _metric(metrics, live, "val", "macro_auroc")
        error = node.get("error") or data.get("error")
        found[name] = {
            "rev": str(node.get("rev") or data.get("rev") or "")[:7],
            "val_macro_auroc": val,
            "test_macro_auroc": _metric(metrics, metric_paths["evaluate"], "macro_auroc"),
            "error": (error.get("msg") if isinstance(error, dict) else error) or None,
        }
    return found


def metric_paths(repo: str | Path) -> dict[str, str]:
    """Where the train and evaluate stages write their metrics (the repository's params.yaml)."""
    params = load_params(Path(repo) / "params.yaml")
    train, evaluate = params.get("train") or {}, params.get("evaluate") or {}
    return {
        "train": train.get("metrics", "metrics/train.json"),
        "live": train.get("live", "dvclive/train"),
        "evaluate": evaluate.get("metrics", "metrics/evaluate.json"),
    }


@task(name="collect-experiments", task_run_name="collect metrics", cache_policy=NO_CACHE)
def collect_experiments(repo: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """Read the experiments' metrics with ``dvc exp show --json``."""
    out = _dvc(Path(repo), "exp", "show", "--json")
    start = out.find("[")  # skip any warning printed before the JSON
    return parse_exp_show(json.loads(out[start:] if start >= 0 else out), names, metric_paths(repo))


def best_experiment(rows: list[dict[str, Any]], metric: str = BEST_METRIC) -> dict | None:
    """The ``ok`` row with the highest ``metric`` (the first of equals); None when none has one."""
    scored = [
        r for r in rows if r.get("status", "ok") == "ok" and _number(r.get(metric)) is not None
    ]
    return max(scored, key=lambda r: r[metric]) if scored else None


# ------------------------------------------------------------------------------ flow


@flow(name="cxr-sweep", log_prints=True)
def cxr_sweep(
    overrides: list[dict[str, Any]] | None = None,
    grid: dict[str, list[Any]] | None = None,
    targets: list[str] | None = None,
    repo: str = ".",
    jobs: int = 1,
    name: str | None = None,
    timeout_s: float | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run params overrides as DVC experiments and compare them.

    Args:
        overrides: one dict of ``section.key -> value`` per experiment.
        grid: ``section.key -> [values]``; every combination is one experiment (after
            ``overrides``).
        targets: stages to reproduce in each experiment (default: the whole DAG); e.g.
            ``["evaluate"]`` skips export.
        repo: the DVC repository root (a git repository with a commit).
        jobs: experiments run in parallel (each is a full training run: keep 1 on one GPU).
        name: experiment name prefix (default ``sweep-<MMDD-HHMMSS>``); names are
            ``<prefix>-<i>``.
        timeout_s: wall-clock limit for running the whole queue.
        force: rerun every stage up to ``targets`` in each experiment, ignoring DVC's run cache
            (needed to sweep a param named ``size``: see below; this project names them
            ``image_size``, which DVC sees).

    Returns:
        ``{"experiments": [rows], "best": row or None}``; a row has ``experiment``, ``rev``,
        ``overrides``, ``val_macro_auroc``, ``test_macro_auroc`` and ``status``.

    Apply the best yourself: ``dvc exp apply <best>`` then commit (nothing is applied here).

    DVC's run cache does not see params named ``size`` or ``nfiles`` (treeverse/dvc#10296): an
    experiment that changes only such a param would silently get the baseline's model back. A
    sweep over such a param is refused unless ``force`` is set.

    Raises:
        ValueError: no overrides and no grid, or a ``size`` param without ``force``.
    """
    runs = [dict(o) for o in overrides or []] + expand_grid(grid)
    if not runs:
        raise ValueError("cxr-sweep: give overrides and/or a grid")
    blind = sorted({k for run in runs for k in run_cache_blind(run)})
    if blind and not force:
        raise ValueError(
            f"cxr-sweep: DVC's run cache ignores params named size/nfiles ({', '.join(blind)}; "
            "treeverse/dvc#10296), so these experiments would reuse the baseline's outputs. "
            "Run with force=True (--force) to rerun every stage of each experiment."
        )
    logger = get_run_logger()
    prefix = name or time.strftime("sweep-%m%d-%H%M%S")
    names = [f"{prefix}-{i}" for i in range(1, len(runs) + 1)]
    root = str(Path(repo).resolve())
    limit = ensure_concurrency_limit(workspace_limit_name(repo), 1)
    with concurrency(limit, occupy=1, strict=True):
        for exp_name, exp_overrides in zip(names, runs, strict=True):
            queue_experiment(root, exp_name, exp_overrides, targets, force)
        errors = run_queue(root, jobs, timeout_s)
        results = collect_experiments(root, names)
    rows = []
    for exp_name, exp_overrides in zip(names, runs, strict=True):
        result = results.get(exp_name)
        status = "ok"
        if result is None or result.get("error") or exp_name in errors:
            why = errors.get(exp_name) or (result or {}).get("error") or "not found"
            status = f"failed: {why}"
        elif result["val_macro_auroc"] is None:
            status = f"no {BEST_METRIC}"
        rows.append(
            {
                "experiment": exp_name,
                "rev": (result or {}).get("rev"),
                "overrides": exp_overrides,
                "val_macro_auroc": (result or {}).get("val_macro_auroc"),
                "test_macro_auroc": (result or {}).get("test_macro_auroc"),
                "status": status,
            }
        )
    best = best_experiment(rows)
    best_name = best["experiment"] if best else None
    publish_sweep(sweep_rows(rows, best_name), best_name, BEST_METRIC)
    for row in rows:
        logger.info(
            "%s %s: val macro AUROC %s, test macro AUROC %s (%s)",
            row["experiment"],
            row["overrides"],
            row["val_macro_auroc"],
            row["test_macro_auroc"],
            row["status"],
        )
    if best is None:
        logger.warning("no experiment reported %s; see `dvc queue logs <name>`", BEST_METRIC)
    else:
        logger.info(
            "best by validation macro AUROC: %s (%.4f); adopt it with `dvc exp apply %s` "
            "(artifact %s)",
            best["experiment"],
            best["val_macro_auroc"],
            best["experiment"],
            SWEEP_KEY,
        )
    return {"experiments": rows, "best": best}


# ------------------------------------------------------------------------------ CLI


def _split_values(text: str) -> list[str]:
    """``a,b,[1,2]`` -> ``["a", "b", "[1,2]"]`` (commas inside brackets stay)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), value.strip()


def parse_cli(argv: list[str] | None = None) -> dict[str, Any]:
    """The flow's parameters from ``python -m flows.sweep`` arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.sweep",
        description="Queue params overrides as DVC experiments, run them, compare them.",
        epilog="Nothing is applied to the workspace: adopt the best with `dvc exp apply <name>`.",
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a grid axis; the experiments are every combination of the axes",
    )
    parser.add_argument(
        "--exp",
        action="append",
        default=[],
        metavar='"KEY=V [KEY=V ...]"',
        help="one experiment's overrides (space-separated)",
    )
    parser.add_argument("--target", action="append", default=None, help="last stage(s) to run")
    parser.add_argument("--repo", default=".", help="the DVC repository (default: .)")
    parser.add_argument("--jobs", type=int, default=1, help="experiments in parallel")
    parser.add_argument("--name", default=None, help="experiment name prefix")
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the queue")
    parser.add_argument(
        "--force", action="store_true", help="rerun every stage, ignoring DVC's run cache"
    )
    args = parser.parse_args(argv)
    grid = {}
    for axis in args.grid:
        key, values = _key_value(axis)
        grid[key] = [yaml.safe_load(v) for v in _split_values(values)]
    overrides = [
        {k: yaml.safe_load(v) for k, v in map(_key_value, exp.split())} for exp in args.exp
    ]
    if not grid and not overrides:
        parser.error("give at least one --grid or --exp")
    return {
        "overrides": overrides or None,
        "grid": grid or None,
        "targets": args.target,
        "repo": args.repo,
        "jobs": args.jobs,
        "name": args.name,
        "timeout_s": args.timeout,
        "force": args.force,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.sweep``: run a sweep and print its comparison table."""
    result = cxr_sweep(**parse_cli(argv))
    for row in result["experiments"]:
        print(
            f"{row['experiment']:<28} val {row['val_macro_auroc']!s:<20} "
            f"test {row['test_macro_auroc']!s:<20} {row['overrides']} {row['status']}"
        )
    best = result["best"]
    if best:
        print(f"best: {best['experiment']}  ->  dvc exp apply {best['experiment']}")


if __name__ == "__main__":
    main()
