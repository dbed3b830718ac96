"""The pipeline flow: one Prefect task per DVC stage, in the order of ``dvc.yaml``'s DAG.

Run it with ``cxr run`` (ephemeral Prefect, no server needed) or against a server
(``PREFECT_API_URL``): the UI then shows one task run per stage, its log and its state
(``Completed``, ``Skipped`` when DVC's cache is up to date, or ``Failed`` with the stage's error).

One DVC workspace takes one ``dvc repro`` at a time: the flow holds a Prefect global concurrency
slot named after the workspace for its whole run, so a second run of the same workspace waits
for the first instead of colliding on DVC's lock.

Once the evaluate stage has run or is up to date, the flow run gets Prefect artifacts, keyed
for the workspace (``tasks/artifacts.py``, ``tasks/workspace.py``): the per-finding AUROC table
with CIs, the evaluation summary with the path of the HTML report, and the dual vs frontal-only
table; after export, the parity table.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.concurrency.sync import concurrency
from prefect.states import State

from tasks.artifacts import PUBLISHERS
from tasks.dvc_stage import read_stage_graph, run_dvc_stage
from tasks.prefect_admin import ensure_concurrency_limit
from tasks.workspace import scoped


def workspace_limit_name(repo: str | Path) -> str:
    """The global concurrency limit that serialises runs of one DVC workspace (the checkout at
    ``repo``: :func:`tasks.workspace.scoped`)."""
    return scoped("runs", repo)


@flow(name="cxr-pipeline", log_prints=True)
def cxr_pipeline(
    targets: list[str] | None = None,
    force: bool = False,
    repo: str = ".",
    stage_timeout_s: float | None = None,
) -> dict[str, str]:
    """Run the DVC stages up to ``targets`` (default: all), one task each.

    Args:
        targets: last stages to reach; their upstream stages run first.
        force: rerun stages even when DVC reports them up to date.
        repo: the DVC repository root.
        stage_timeout_s: wall-clock limit per stage.

    Returns:
        stage name -> ``ran`` or ``skipped``.
    """
    logger = get_run_logger()
    stages = read_stage_graph(Path(repo), targets)
    logger.info("stages in order: %s", " -> ".join(s.name for s in stages))
    limit = ensure_concurrency_limit(workspace_limit_name(repo), 1)
    outcome: dict[str, str] = {}
    with concurrency(limit, occupy=1, strict=True):
        for stage in stages:
            state: State = run_dvc_stage.with_options(task_run_name=stage.name)(
                stage.name, repo=repo, force=force, timeout_s=stage_timeout_s, return_state=True
            )
            if state.is_failed():
                logger.error("stage '%s' failed: %s", stage.name, state.message)
                state.result()  # re-raise: the flow fails naming the stage
            outcome[stage.name] = "skipped" if state.name == "Skipped" else "ran"
            publish_artifacts(stage.name, repo)
    return outcome


def publish_artifacts(stage: str, repo: str | Path) -> list[str]:
    """Publish the artifacts of ``stage`` (if it has any); a missing output only warns."""
    publish = PUBLISHERS.get(stage)
    if publish is None:
        return []
    logger = get_run_logger()
    try:
        keys = publish(repo)
    except (OSError, ValueError, KeyError) as exc:  # the stage succeeded: do not fail the run
        logger.warning("stage '%s': artifacts not published: %s", stage, exc)
        return []
    logger.info("stage '%s': published artifacts %s", stage, ", ".join(keys))
    return keys


if __name__ == "__main__":
    cxr_pipeline()
