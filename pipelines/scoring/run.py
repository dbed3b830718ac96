"""One study through ``cxr score``, and the summary of a run.

A study goes: retrieve (WADO-RS or the folder) -> choose its views and derive its SR's UID ->
*already there?* (QIDO-RS for that SOP Instance UID in the study) -> decode + infer -> SR ->
store (STOW-RS). Idempotency is the PACS's own state: the SR of a study and model version has
one SOP Instance UID, so a rerun, a retry after a failure half-way or two overlapping runs
look it up and store nothing new (and a PACS given the same SOP Instance UID twice keeps one
instance); a newer model version derives another UID and adds its own SR.

Only study keys (:func:`study_key`, the salted key ingest and the SR's file names use) leave
this module: in outcomes, logs and the summary. Study Instance UIDs go to the store only.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipelines.keys import make_key
from pipelines.scoring.reasons import Unscorable
from pipelines.scoring.scorer import Scorer, Timings

log = logging.getLogger(__name__)

SCORED, ALREADY, SKIPPED, RECORDED = "scored", "already there", "skipped", "skipped before"


class Store(Protocol):
    """Where studies come from and SRs go (:mod:`~pipelines.scoring.dicomweb`, ``folder``)."""

    def retrieve(self, study_uid: str, folder: Path) -> int: ...
    def has_instance(self, study_uid: str, sop_uid: str) -> bool: ...
    def store(self, files: list[Path]) -> None: ...


def study_key(study_uid: str) -> str:
    """The study's salted key (the one ingest and the SR's file name give it)."""
    return make_key("study", f"dicom:{study_uid}")


@dataclass
class Outcome:
    """What happened to one study: ``status`` (:data:`SCORED` ...), the skip reason, timings."""

    key: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)


def score_study(
    store: Store, scorer: Scorer, study_uid: str, recorded: dict[str, str] | None = None
) -> Outcome:
    """Score one study of ``store`` and store its SR unless it is there already.

    Args:
        store: the PACS or the folder.
        scorer: the model.
        study_uid: the study (never logged).
        recorded: reasons of studies skipped before, by ``<model key>:<study key>``: such a
            study is not fetched again for this model version.

    Raises:
        PacsError: the store failed (after its retries); nothing of this study was stored.
    """
    key = study_key(study_uid)
    earlier = (recorded or {}).get(f"{scorer.model_key}:{key}")
    if earlier:
        return Outcome(key, RECORDED, earlier)
    start, timings = time.perf_counter(), Timings()
    work = Path(tempfile.mkdtemp(prefix="cxr-score-"))
    try:
        outcome = _score_in(store, scorer, study_uid, key, work, timings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    outcome.seconds, outcome.steps = time.perf_counter() - start, timings.steps
    log.info(
        "study %s: %s%s", key, outcome.status, f" ({outcome.reason})" if outcome.reason else ""
    )
    return outcome


def _score_in(
    store: Store, scorer: Scorer, study_uid: str, key: str, work: Path, timings: Timings
) -> Outcome:
    t = time.perf_counter()
    store.retrieve(study_uid, work / key)
    timings.add("retrieve", time.perf_counter() - t)
    try:
        prepared = scorer.prepare(work / key)
        t = time.perf_counter()
        there = store.has_instance(study_uid, prepared.sr_uid)
        timings.add("lookup", time.perf_counter() - t)
        if there:
            return Outcome(key, ALREADY)
        sr = scorer.score(prepared, work / "out", timings)
    except Unscorable as exc:
        return Outcome(key, SKIPPED, exc.reason)
    t = time.perf_counter()
    store.store([sr])
    timings.add("store", time.perf_counter() - t)
    return Outcome(key, SCORED)


def summarize(outcomes: list[Outcome], found: int, search_s: float) -> dict[str, Any]:
    """The run summary: counts by status and reason, latency percentiles, time per step."""
    by = Counter(o.status for o in outcomes)
    reasons = Counter(o.reason for o in outcomes if o.status in (SKIPPED, RECORDED))
    worked = [o.seconds for o in outcomes if o.status in (SCORED, ALREADY, SKIPPED)]
    steps: Counter[str] = Counter({"search": search_s})
    for o in outcomes:
        steps.update(o.steps)
    pct = {
        f"p{q}": round(float(np.percentile(worked, q)), 3) if worked else None for q in (50, 90, 99)
    }
    return {
        "found": found,
        "scored": by[SCORED],
        "stored": by[SCORED],
        "already_there": by[ALREADY],
        "skipped": by[SKIPPED] + by[RECORDED],
        "skipped_by_reason": dict(sorted(reasons.items())),
        "latency_s": pct,
        "seconds_by_step": {k: round(v, 3) for k, v in steps.items()},
    }
