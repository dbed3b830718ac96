"""Sweeps: params overrides run as DVC experiments, compared in a Prefect table artifact.

The flow ``cxr-sweep`` takes a list of overrides (``[{"train.lr": 0.001}, ...]``) and / or a
grid (``{"train.lr": [0.001, 0.002], "train.focal_gamma": [1.0, 2.0]}``, expanded as a product),
and then:

1. queues one DVC experiment per override set (``dvc exp run --queue -S key=value ... -n name
   [targets]``), named ``<prefix>-<i>``;
2. runs the queue (``dvc exp run --run-all -j <jobs>``): each experiment runs in its own temporary
   copy of the repository, so the workspace is left as it is, and stages whose inputs did not
   change are restored from DVC's cache (a sweep over ``train.*`` reruns train and what follows);
3. collects their metrics (``dvc.api.exp_show``): validation macro AUROC from the train
   stage's metrics (``val_macro_auroc``, or dvclive's ``val/macro_auroc``) and test macro AUROC
   from the evaluate stage's (``macro_auroc``, when ``evaluate`` was a target);
4. publishes the comparison as the table artifact ``cxr-<workspace>-sweep`` and returns the
   best experiment by validation macro AUROC.

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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger
from prefect.concurrency.sync import concurrency

from flows.pipeline import workspace_limit_name
from pipelines.config import RUN_CACHE_BLIND_KEYS
from tasks.artifacts import SWEEP, publish_sweep, sweep_rows
from tasks.dvc_experiments import (
    collect_experiments,
    finite_number,
    metric_paths,
    queue_experiment,
    run_queue,
)
from tasks.prefect_admin import ensure_concurrency_limit

BEST_METRIC = "val_macro_auroc"


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


def run_cache_blind(overrides: Mapping[str, Any]) -> list[str]:
    """The overridden params DVC's run cache cannot see (named ``size`` or ``nfiles``).

    An experiment changing only such a param restores the baseline's outputs
    (treeverse/dvc#10296).
    """
    return [k for k in overrides if k.rsplit(".", 1)[-1].split(":")[-1] in RUN_CACHE_BLIND_KEYS]


def best_experiment(rows: list[dict[str, Any]], metric: str = BEST_METRIC) -> dict | None:
    """The ``ok`` row with the highest ``metric`` (the first of equals); None when none has one."""
    scored = [
        r
        for r in rows
        if r.get("status", "ok") == "ok" and finite_number(r.get(metric)) is not None
    ]
    return max(scored, key=lambda r: r[metric]) if scored else None


# ------------------------------------------------------------------------------ flow


def plan_runs(
    overrides: list[dict[str, Any]] | None, grid: dict[str, list[Any]] | None, force: bool
) -> list[dict[str, Any]]:
    """The experiments' overrides: ``overrides`` then the grid's combinations.

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
    return runs


def experiment_row(
    name: str, overrides: dict[str, Any], result: Mapping[str, Any] | None, error: str | None
) -> dict[str, Any]:
    """One experiment's row of the comparison: its metrics and ``status``.

    Args:
        name: the experiment.
        overrides: its params overrides.
        result: what :func:`parse_exp_show` found for it (None: DVC does not know it).
        error: the error lines it printed while the queue ran, if any.
    """
    found = result or {}
    status = "ok"
    if result is None or found.get("error") or error:
        status = f"failed: {error or found.get('error') or 'not found'}"
    elif found["val_macro_auroc"] is None:
        status = f"no {BEST_METRIC}"
    return {
        "experiment": name,
        "rev": found.get("rev"),
        "overrides": overrides,
        "val_macro_auroc": found.get("val_macro_auroc"),
        "test_macro_auroc": found.get("test_macro_auroc"),
        "status": status,
    }


def log_results(
    logger: Any, rows: list[dict[str, Any]], best: dict[str, Any] | None, key: str = SWEEP
) -> None:
    """Log each experiment's figures, then the best or why there is none (``key``: the
    comparison table's artifact)."""
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
        return
    logger.info(
        "best by validation macro AUROC: %s (%.4f); adopt it with `dvc exp apply %s` (artifact %s)",
        best["experiment"],
        best["val_macro_auroc"],
        best["experiment"],
        key,
    )


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
        ConfigError: the repository's ``train`` or ``evaluate`` params are not valid.
    """
    runs = plan_runs(overrides, grid, force)
    root = str(Path(repo).resolve())
    paths = metric_paths(root)  # before anything runs: a bad params file fails fast
    prefix = name or time.strftime("sweep-%m%d-%H%M%S")
    names = [f"{prefix}-{i}" for i in range(1, len(runs) + 1)]
    limit = ensure_concurrency_limit(workspace_limit_name(repo), 1)
    with concurrency(limit, occupy=1, strict=True):
        for exp_name, exp_overrides in zip(names, runs, strict=True):
            queue_experiment(root, exp_name, exp_overrides, targets, force)
        errors = run_queue(root, jobs, timeout_s)
        results = collect_experiments(root, names, paths)
    rows = [
        experiment_row(n, o, results.get(n), errors.get(n))
        for n, o in zip(names, runs, strict=True)
    ]
    best = best_experiment(rows)
    best_name = best["experiment"] if best else None
    (key,) = publish_sweep(sweep_rows(rows, best_name), best_name, BEST_METRIC, repo=root)
    log_results(get_run_logger(), rows, best, key)
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
