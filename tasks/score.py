"""Prefect tasks of the ``cxr-score`` flow: search, one task run per study, the summary artifacts.

The work is :mod:`pipelines.scoring`'s; these wrap it so that each study is a task run in the UI
(named by its salted study key, never a UID), with no result persistence or input caching: the
Study Instance UIDs given to a task are never written to the Prefect database.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.scoring import Outcome, Scorer, score_study
from tasks.workspace import scoped

#: Artifact kinds; keys are ``cxr-<workspace>-<kind>`` (:func:`tasks.workspace.scoped`).
SUMMARY = "score-summary"
STUDIES = "score-studies"


@task(name="search", cache_policy=NO_CACHE, persist_result=False)
def search_studies(store: Any, since: Any) -> tuple[list[str], float]:
    """The store's studies since ``since`` and the seconds the search took."""
    start = time.perf_counter()
    found = store.find(since)
    return found, time.perf_counter() - start


@task(cache_policy=NO_CACHE, persist_result=False)
def score_one(store: Any, scorer: Scorer, study_uid: str, recorded: dict[str, str]) -> Outcome:
    """:func:`pipelines.scoring.score_study` of one study (task run named by its key)."""
    return score_study(store, scorer, study_uid, recorded)


def publish_summary(
    summary: dict[str, Any], outcomes: list[Outcome], source: str, repo: str | Path = "."
) -> None:
    """The run's summary (markdown) and its per-study table (study keys only) as artifacts of
    the workspace at ``repo`` (by default the working directory: the checkout serving the
    flow)."""
    reasons = summary["skipped_by_reason"]
    lat = summary["latency_s"]
    lines = [
        f"### cxr-score: {source}",
        "",
        "| found | scored | stored | already there | skipped |",
        "|---:|---:|---:|---:|---:|",
        f"| {summary['found']} | {summary['scored']} | {summary['stored']} "
        f"| {summary['already_there']} | {summary['skipped']} |",
        "",
        "Skipped by reason: "
        + (", ".join(f"{k} {v}" for k, v in reasons.items()) if reasons else "none"),
        "",
        f"Latency per study (s): p50 {lat['p50']}, p90 {lat['p90']}, p99 {lat['p99']}",
        "",
        "Seconds by step: " + ", ".join(f"{k} {v}" for k, v in summary["seconds_by_step"].items()),
    ]
    if summary.get("failed"):
        lines += ["", f"**Failed**: {summary['failed']}"]
    summary_key = scoped(SUMMARY, repo)
    create_markdown_artifact("\n".join(lines), key=summary_key, description="cxr-score run")
    rows = [
        {"study": o.key, "status": o.status, "reason": o.reason, "seconds": round(o.seconds, 3)}
        for o in outcomes
    ]
    if rows:
        create_table_artifact(
            rows, key=scoped(STUDIES, repo), description="cxr-score studies (keys only)"
        )
