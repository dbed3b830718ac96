"""Sharded preprocessing as a Prefect flow: every part in parallel, then the merge, then DVC.

``cxr-preprocess-parallel`` maps one task over the parts of the preprocess stage; each task runs
``python -m pipelines.preprocess --part I --parts N`` as a subprocess in the repository, so any
machine with the checkout (and the images, and ``data/prepared`` on storage the merge can read)
can run it. Then one task merges (``--merge N``: checks every part, writes the index, the
rejected CSV, the metrics and the grid) and one records the result in ``dvc.lock``
(``dvc commit -f preprocess``), after which ``dvc status`` finds the stage up to date exactly as
if ``dvc repro`` had run it. No ML logic here: the stage code owns all of it.

Task runners:

- default: Prefect's ``ThreadPoolTaskRunner``: the parts are subprocesses, so threads suffice;
  on one machine use ``parts`` = cores and ``workers`` = 1 (one decode process per part).
- a Dask cluster (``pip install 'cxr-dag[dask]'``, i.e. ``prefect-dask``):
  :func:`preprocess_parallel` with ``dask_address="tcp://scheduler:8786"`` runs the same flow
  with ``DaskTaskRunner(address=...)``; start one ``dask worker --nthreads 1`` per machine and
  use ``workers=0`` so each part decodes on all cores of its machine. ``repo`` must be the same
  path on every machine (a shared checkout, or ``data/`` on shared storage).

Like ``cxr-pipeline``, the flow holds the workspace's global concurrency slot for its whole run,
so it never writes ``data/prepared`` while a ``dvc repro`` of the same workspace runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import workspace_limit_name
from pipelines.errors import UserError
from tasks.dvc_stage import dvc_executable
from tasks.prefect_admin import ensure_concurrency_limit
from tasks.process import stream

STAGE = "preprocess"
METRICS = Path("metrics/preprocess.json")  # the stage's metrics file (dvc.yaml)


class StepFailed(UserError):
    """A step exited with a user error (exit 2: bad table, a part missing): never retried."""


class StepCrashed(RuntimeError):
    """A step died otherwise (killed, out of memory, DVC's lock held): retried once."""


def run_logged(cmd: list[str], repo: str, label: str) -> None:
    """Run ``cmd`` in ``repo``, each output line into the task's log; raise on failure.

    Raises:
        StepFailed: exit code 2 (the stage's one-line user errors).
        StepCrashed: any other non-zero exit.
    """
    logger = get_run_logger()
    result = stream(cmd, repo, on_line=lambda line: logger.info("%s | %s", label, line))
    if result.returncode:
        kind = StepFailed if result.returncode == 2 else StepCrashed
        raise kind(
            f"{label} failed (exit {result.returncode}): " + " | ".join(result.error_lines())
        )


def _transient(task: Any, run: Any, state: State) -> bool:
    """Retry a step that crashed (a killed worker), never one that failed on its inputs."""
    try:
        state.result()
    except UserError:
        return False
    except Exception:
        return True
    return False


@task(
    name="preprocess-part",
    task_run_name="part-{part}-of-{parts}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=[5],
    retry_condition_fn=_transient,
)
def preprocess_part(part: int, parts: int, repo: str, workers: int | None = 1) -> int:
    """Decode one part of the studies table (atomic: a rerun or retry replaces it whole)."""
    cmd = [sys.executable, "-m", "pipelines.preprocess", "--part", str(part), "--parts", str(parts)]
    run_logged(cmd + ([] if workers is None else ["--workers", str(workers)]), repo, f"part {part}")
    return part


@task(name="preprocess-merge", cache_policy=NO_CACHE)
def merge_parts(parts: int, repo: str) -> dict[str, Any]:
    """Check every part and write the merged index and the stage's other outputs."""
    run_logged([sys.executable, "-m", "pipelines.preprocess", "--merge", str(parts)], repo, "merge")
    return json.loads((Path(repo) / METRICS).read_text())


@task(
    name="dvc-commit",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 30],
    retry_condition_fn=_transient,
)
def dvc_commit(repo: str, stage: str = STAGE) -> None:
    """Record the stage's outputs, deps and params in ``dvc.lock`` (``dvc commit -f``)."""
    run_logged([dvc_executable(), "commit", "-f", stage], repo, "dvc commit")


@flow(name="cxr-preprocess-parallel", log_prints=True, task_runner=ThreadPoolTaskRunner())
def cxr_preprocess_parallel(
    parts: int, repo: str = ".", workers: int | None = 1, commit: bool = True
) -> dict[str, Any]:
    """Run the preprocess stage as ``parts`` parallel parts, merge them, commit to DVC.

    Args:
        parts: how many parts (tasks) to cut the studies table into.
        repo: the DVC repository root (the same path wherever a part runs).
        workers: decode processes per part (``None``: ``preprocess.workers``; 0 = all cores).
        commit: record the result with ``dvc commit -f preprocess``.

    Returns:
        The stage's merged metrics (``metrics/preprocess.json``) plus ``committed``.

    Raises:
        UserError: ``parts`` < 1; a part or the merge failed (the message names it).
    """
    if parts < 1:
        raise UserError(f"parts must be >= 1, got {parts}")
    logger, started = get_run_logger(), time.perf_counter()
    root = str(Path(repo).resolve())
    limit = ensure_concurrency_limit(workspace_limit_name(root), 1)
    with concurrency(limit, occupy=1, strict=True):
        futures = preprocess_part.map(
            range(parts), parts=unmapped(parts), repo=unmapped(root), workers=unmapped(workers)
        )
        futures.wait()
        states = [f.state for f in futures]
        failed = [i for i, s in enumerate(states) if not s.is_completed()]
        if failed:
            for i in failed:
                logger.error("part %d-of-%d failed: %s", i, parts, states[i].message)
            states[failed[0]].result()  # re-raise: the flow fails naming the part
        metrics = merge_parts(parts, root)
        if commit:
            dvc_commit(root)
    logger.info(  # the metrics file holds no timings (pipelines.io.RUN_FACTS): the flow's own
        "preprocess in %d parts: %s studies out in %.1f s",
        parts,
        sum(metrics["studies_out"].values()),
        time.perf_counter() - started,
    )
    return metrics | {"committed": commit}


def dask_task_runner(address: str | None = None, **cluster_kwargs: Any) -> Any:
    """A ``prefect_dask.DaskTaskRunner``: on the cluster at ``address``, else a local one.

    Raises:
        ImportError: ``prefect-dask`` is not installed (``pip install 'cxr-dag[dask]'``).
    """
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ImportError(
            "the Dask task runner needs prefect-dask: pip install 'cxr-dag[dask]'"
        ) from exc
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs or None)


def preprocess_parallel(
    parts: int,
    repo: str = ".",
    workers: int | None = 1,
    commit: bool = True,
    dask_address: str | None = None,
    return_state: bool = False,
) -> Any:
    """Run ``cxr-preprocess-parallel``, on a Dask cluster when ``dask_address`` is given."""
    run = cxr_preprocess_parallel
    if dask_address:
        run = run.with_options(task_runner=dask_task_runner(dask_address))
    return run(parts=parts, repo=repo, workers=workers, commit=commit, return_state=return_state)


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.scale --parts N [--repo .] [--workers 1] [--dask tcp://host:8786]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m flows.scale", description=__doc__.split("\n")[0])
    ap.add_argument("--parts", type=int, required=True)
    ap.add_argument("--repo", default=".")
    ap.add_argument("--workers", type=int, default=1, help="decode processes per part (0 = all)")
    ap.add_argument("--dask", metavar="ADDRESS", help="Dask scheduler, e.g. tcp://host:8786")
    ap.add_argument("--no-commit", action="store_true", help="skip `dvc commit -f preprocess`")
    args = ap.parse_args(argv)
    metrics = preprocess_parallel(
        args.parts, args.repo, args.workers, not args.no_commit, dask_address=args.dask
    )
    print(json.dumps(metrics, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
