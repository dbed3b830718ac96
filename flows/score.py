"""The ``cxr-score`` flow: find new chest studies, score them, store their SRs back.

Over DICOMweb (``dicomweb``: the root, e.g. ``http://127.0.0.1:8042/dicom-web``) or a folder
(``folder`` + ``out``). One run: probe the source (a wrong URL or credentials fail at once) ->
QIDO-RS search of CR / DX studies since the watermark -> per study (one task run each, named
by its salted key): WADO-RS, predict's decoding and exported model, the SR, STOW-RS unless it
is there already (:mod:`pipelines.scoring.run`) -> the summary artifacts.

State lives in the Prefect server, so any worker sees it, in Variables named for the workspace of
the working directory (the checkout serving the flow: ``cxr-<workspace>-score-watermark``,
:func:`tasks.workspace.scoped`), so that two workspaces served by one server keep their own:
- the **watermark** (Variable :data:`WATERMARK`): the UTC date of the last successful run's
  start, set only when a run succeeds. QIDO-RS cannot search by the time a study was received,
  so the search is by StudyDate from the watermark's day minus ``lookback_days``; a study found
  again is already there (one SR per study and model version) and costs one retrieve.
- the **skipped** record (Variable :data:`SKIPPED`): ``<model key>:<study key>`` -> reason, so a
  study that cannot be scored is not fetched again by this model version.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron
from prefect.variables import Variable

from pipelines.scoring import (
    SKIPPED as SKIPPED_STATUS,
)
from pipelines.scoring import (
    DicomWebStore,
    FolderStore,
    Outcome,
    ScoreParams,
    Scorer,
    study_key,
    summarize,
)
from pipelines.scoring.reasons import PacsError
from tasks.score import publish_summary, score_one, search_studies
from tasks.workspace import scoped

#: Variable kinds; the names are ``cxr-<workspace>-<kind>``.
WATERMARK = "score-watermark"
SKIPPED = "score-skipped"
_DEFAULTS = ScoreParams()


def _store(dicomweb: str | None, folder: str | None, out: str | None, p: ScoreParams) -> Any:
    if dicomweb and not folder:
        return DicomWebStore(dicomweb, attempts=p.attempts, backoff_s=p.backoff_s)
    if folder and out and not dicomweb:
        return FolderStore(folder, out)
    raise PacsError("give either a DICOMweb root (--dicomweb URL) or --folder IN with --out OUT")


def _since(watermark: Any, lookback_days: int) -> date | None:
    if not watermark:
        return None  # the first run searches everything
    return date.fromisoformat(str(watermark)) - timedelta(days=lookback_days)


@flow(name="cxr-score", log_prints=False)
def cxr_score(
    dicomweb: str | None = _DEFAULTS.dicomweb,
    folder: str | None = _DEFAULTS.folder,
    out: str | None = _DEFAULTS.out,
    model: str = _DEFAULTS.model,
    lookback_days: int = _DEFAULTS.lookback_days,
    attempts: int = _DEFAULTS.attempts,
    backoff_s: float = _DEFAULTS.backoff_s,
) -> dict[str, Any]:
    """Score the new CR / DX studies of a DICOMweb server (or a folder); the run summary."""
    logger = get_run_logger()
    params = ScoreParams(attempts=attempts, backoff_s=backoff_s)
    store = _store(dicomweb, folder, out, params)
    source = "DICOMweb" if dicomweb else "folder"
    store.check()
    scorer = Scorer(model)
    started = datetime.now(timezone.utc).date()
    skipped_name, watermark_name = scoped(SKIPPED), scoped(WATERMARK)
    recorded: dict[str, str] = dict(Variable.get(skipped_name, default={}) or {})
    since = _since(Variable.get(watermark_name, default=None), lookback_days) if dicomweb else None
    uids, search_s = search_studies(store, since)
    logger.info("%d CR/DX studies found (StudyDate from %s)", len(uids), since or "any date")
    outcomes: list[Outcome] = []
    try:
        for uid in uids:
            key = study_key(uid)
            outcomes.append(
                score_one.with_options(task_run_name=f"score {key}")(store, scorer, uid, recorded)
            )
    except PacsError as exc:
        summary = summarize(outcomes, len(uids), search_s) | {"failed": str(exc)}
        publish_summary(summary, outcomes, source)
        raise
    finally:
        new = {
            f"{scorer.model_key}:{o.key}": o.reason for o in outcomes if o.status == SKIPPED_STATUS
        }
        if new:
            Variable.set(skipped_name, recorded | new, overwrite=True)
    summary = summarize(outcomes, len(uids), search_s)
    publish_summary(summary, outcomes, source)
    if dicomweb:
        Variable.set(watermark_name, started.isoformat(), overwrite=True)
    logger.info(
        "scored %d, already there %d, skipped %d of %d",
        summary["scored"],
        summary["already_there"],
        summary["skipped"],
        summary["found"],
    )
    return summary


def build_score_deployment(cfg: ScoreParams) -> RunnerDeployment:
    """The ``cxr-score`` flow as a deployment on the ``score`` section's cron schedule."""
    local = {"folder": cfg.folder, "out": cfg.out, "model": cfg.model}
    resolved = {k: str(Path(v).resolve()) if v else None for k, v in local.items()}
    return cxr_score.to_deployment(
        name=cfg.deployment,
        schedules=[Cron(cfg.cron, timezone=cfg.timezone)],
        paused=cfg.paused,
        parameters={
            "dicomweb": cfg.dicomweb,
            **resolved,
            "lookback_days": cfg.lookback_days,
            "attempts": cfg.attempts,
            "backoff_s": cfg.backoff_s,
        },
        tags=["cxr-dag", "scoring"],
        description="cxr-dag scoring: new CR / DX studies in, one SR per study and model out",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
