"""What ``cxr predict`` may say about each finding, read from the model card.

A yes / no call needs two things the card records: the finding was **trained** (its status,
:mod:`pipelines.coverage`: enough labelled training studies and a validation threshold) and the
chosen policy has a **validation-chosen threshold** for it. A finding without either is
reported as ``not trained``, with the card's reason, and gets no probability and no decision:
its output carries no learned signal, and no threshold ever defaults to 0.5.

Studies read without a lateral view take the policy's frontal-only thresholds (chosen by
evaluate on the model run with the lateral view hidden) where the card has them.

:func:`data_notice` is the sentence shown with every prediction of a model trained on the
embedded synthetic dataset, or of one whose card names no training data source
(:mod:`pipelines.notices`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from pipelines.coverage import TRAINED
from pipelines.errors import PredictError
from pipelines.notices import data_notice as notice_for

log = logging.getLogger(__name__)

NOT_TRAINED = "not trained"


@dataclass(frozen=True)
class Decisions:
    """The thresholds of one policy for the trained findings, and the reasons for the others.

    Attributes:
        policy: the policy of studies read with a lateral view (e.g. ``youden``).
        frontal_policy: the label of the thresholds used for studies read without one.
        dual, frontal: per trained finding, its threshold.
        not_trained: per finding without a decision, the reason.
    """

    policy: str
    frontal_policy: str
    dual: dict[str, float]
    frontal: dict[str, float]
    not_trained: dict[str, str]

    def decide(self, finding: str, probability: float, has_lateral: bool) -> dict[str, Any]:
        """The output row of one finding: status, reason, probability, threshold, positive."""
        if finding in self.not_trained:
            return {
                "status": NOT_TRAINED,
                "reason": self.not_trained[finding],
                "probability": math.nan,
                "threshold": math.nan,
                "positive": None,
                "threshold_policy": "",
            }
        cut = (self.dual if has_lateral else self.frontal)[finding]
        return {
            "status": TRAINED,
            "reason": "",
            "probability": probability,
            "threshold": cut,
            "positive": probability >= cut,
            "threshold_policy": self.policy if has_lateral else self.frontal_policy,
        }


def _card_not_trained(output: dict[str, Any]) -> dict[str, str]:
    """The card's not-trained findings with their reasons (``status`` of new cards)."""
    status = output.get("status") or {}
    prefix = f"{NOT_TRAINED}: "
    return {
        f: (s[len(prefix) :] if s.startswith(prefix) else s)
        for f, s in status.items()
        if s != TRAINED
    }


def decisions_from_card(card: dict[str, Any], policy: str | None = None) -> Decisions:
    """The decisions ``cxr predict`` makes with this card and threshold policy.

    Args:
        card: the model card (``metadata.json``).
        policy: a threshold policy of the card; None: its default.

    Raises:
        PredictError: the card has thresholds, but none of this policy.
    """
    output = card["output"]
    findings = list(output["findings"])
    policy = policy or output.get("default_threshold_policy", "youden")
    table = output.get("thresholds") or {}
    if not table:
        log.warning("the model card has no validation thresholds: no finding gets a decision")
        why = "the model card has no validation thresholds (export ran without evaluate)"
        return Decisions(policy, policy, {}, {}, dict.fromkeys(findings, why))
    if policy not in table:
        raise PredictError(
            f"threshold policy '{policy}' not in the model card; choose one of {', '.join(table)}"
        )
    not_trained = _card_not_trained(output)
    dual: dict[str, float] = {}
    for f in findings:
        value = table[policy].get(f)
        if f in not_trained:
            continue
        if value is None:
            not_trained[f] = f"no validation threshold for policy '{policy}'"
        else:
            dual[f] = float(value)
    frontal_table = (output.get("thresholds_frontal_only") or {}).get(policy)
    if not frontal_table:
        return Decisions(policy, policy, dual, dual, not_trained)
    frontal = {
        f: t if frontal_table.get(f) is None else float(frontal_table[f]) for f, t in dual.items()
    }
    return Decisions(policy, f"{policy} (frontal-only)", dual, frontal, not_trained)


def data_notice(card: dict[str, Any]) -> str | None:
    """The card's data notice (:mod:`pipelines.notices`; worked out for cards without one)."""
    if "notice" in card:
        return card["notice"]
    return notice_for((card.get("training_data") or {}).get("sources"))
