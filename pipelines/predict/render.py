"""``cxr predict``'s output formats: a text table, JSON (one object per study) or CSV.

Every format carries each finding's ``status``: a ``not trained`` finding has no probability,
threshold or decision (empty in CSV, null in JSON, ``not trained`` in the table, with its reason
below the table and in JSON); so has every finding of a ``refused`` study (the gate's reason
instead of its table). The model's data notice (:func:`pipelines.predict.data_notice`),
when there is one, heads the table and the JSON.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pandas as pd

from pipelines.errors import PredictError
from pipelines.predict.decisions import NOT_TRAINED, REFUSED

NO_DECISION = (NOT_TRAINED, REFUSED)

OutputFormat = Literal["table", "json", "csv"]
FORMATS: tuple[str, ...] = ("table", "json", "csv")


def _finding_json(r: Any) -> dict[str, Any]:
    if r.status in NO_DECISION:
        return {
            "status": r.status,
            "reason": r.reason,
            "probability": None,
            "threshold": None,
            "positive": None,
        }
    return {
        "status": r.status,
        "probability": round(float(r.probability), 6),
        "threshold": round(float(r.threshold), 6),
        "positive": bool(r.positive),
    }


def _policy(group: pd.DataFrame) -> str:
    policies = [p for p in group["threshold_policy"] if p]
    return policies[0] if policies else "none"


def to_json(df: pd.DataFrame) -> str:
    """One object per study: its files, views, policy and per-finding status and decision."""
    studies = []
    for study, group in df.groupby("study", sort=False):
        first = group.iloc[0]
        studies.append(
            {
                "study": study,
                "frontal": first["frontal"],
                "lateral": first["lateral"],
                "views": first["views"],
                "threshold_policy": _policy(group),
                "findings": {r.finding: _finding_json(r) for r in group.itertuples()},
            }
        )
    body: dict[str, Any] = {"studies": studies}
    if df.attrs.get("notice"):
        body = {"notice": df.attrs["notice"], **body}
    return json.dumps(body, indent=2) + "\n"


def _table_block(study: str, group: pd.DataFrame) -> str:
    first = group.iloc[0]
    views = first["frontal"] + (f" + {first['lateral']}" if first["lateral"] else "")
    body = pd.DataFrame(
        {
            "finding": group["finding"],
            "probability": [
                s if s in NO_DECISION else f"{p:.3f}"
                for s, p in zip(group["status"], group["probability"], strict=True)
            ],
            "threshold": ["" if t != t else f"{t:.3f}" for t in group["threshold"]],
            "positive": ["yes" if p is True else "" for p in group["positive"]],
        }
    )
    text = body.to_string(index=False)
    head = f"study {study} ({first['views']}: {views}; thresholds: {_policy(group)})"
    if (group["status"] == REFUSED).any():
        return "\n".join([head, f"  refused, no finding reported: {first['reason']}"])
    untrained = group[group["status"] == NOT_TRAINED]
    notes = [f"  {r.finding}: not trained, no decision: {r.reason}" for r in untrained.itertuples()]
    return "\n".join([head, text, *notes])


def to_table(df: pd.DataFrame) -> str:
    """A text block per study; the data notice first."""
    blocks = [_table_block(study, group) for study, group in df.groupby("study", sort=False)]
    if df.attrs.get("notice"):
        blocks.insert(0, f"NOTICE: {df.attrs['notice']}")
    return "\n\n".join(blocks) + "\n"


def format_predictions(df: pd.DataFrame, fmt: OutputFormat = "table") -> str:
    """Render :func:`pipelines.predict.predict`'s frame as a text table, JSON or CSV.

    Raises:
        PredictError: an unknown format.
    """
    if fmt == "csv":
        return df.to_csv(index=False, float_format="%.6f")
    if fmt == "json":
        return to_json(df)
    if fmt == "table":
        return to_table(df)
    raise PredictError(f"unknown output format '{fmt}'; choose {', '.join(FORMATS)}")
