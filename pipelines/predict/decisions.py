"""What ``cxr predict`` may say about each finding, read from the model card.

A yes / no call needs two things the card records: the finding was **trained** (its status,
:mod:`pipelines.coverage`: enough labelled training studies and a validation threshold) and the
chosen policy has a **validation-chosen threshold** for it. A finding without either is
reported as ``not trained``, with the card's reason, and gets no probability and no decision:
its output carries no learned signal, and no threshold ever defaults to 0.5.

Studies read without a lateral view take the policy's frontal-only thresholds (chosen by
evaluate on the model run with the lateral view hidden) where the card has them.

Probabilities are **calibrated** before the threshold: the card carries, per mode, the maps
evaluate fitted on validation (:mod:`pipelines.evaluation.calibration`), and the thresholds are
on that scale. A study the **out-of-distribution gate** refuses (:mod:`pipelines.ood`: the
model's own features too far from its training images', or a model exported without a gate)
gets no probability and no decision at all: status ``refused`` with the reason.

:func:`data_notice` is the sentence shown with every prediction of a model trained on the
embedded synthetic dataset, or of one whose card names no training data source
(:mod:`pipelines.notices`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.coverage import TRAINED
from pipelines.errors import PredictError
from pipelines.evaluation.calibration import Calibration, calibration_from_json
from pipelines.notices import data_notice as notice_for
from pipelines.ood import refusals

log = logging.getLogger(__name__)

NOT_TRAINED = "not trained"
REFUSED = "refused"  # the study is unlike the model's training images (pipelines.ood)
NO_GATE = (
    "the model has no out-of-distribution gate (export it after evaluate, which fits one), "
    "so nothing tells whether this input is like its training images"
)


@dataclass(frozen=True)
class Decisions:
    """The thresholds of one policy for the trained findings, and the reasons for the others.

    Attributes:
        policy: the policy of studies read with a lateral view (e.g. ``youden``).
        frontal_policy: the label of the thresholds used for studies read without one.
        dual, frontal: per trained finding, its threshold (on the calibrated scale).
        not_trained: per finding without a decision, the reason.
        calibration: per mode (``dual``, ``frontal_only``), the maps fitted on validation that
            turn raw probabilities into those the thresholds apply to (empty: none).
        gate: per view, the out-of-distribution gate's threshold (None: the model has none).
    """

    policy: str
    frontal_policy: str
    dual: dict[str, float]
    frontal: dict[str, float]
    not_trained: dict[str, str]
    calibration: dict[str, Calibration] = field(default_factory=dict)
    gate: dict[str, float] | None = None

    def calibrated(self, finding: str, probability: float, has_lateral: bool) -> float:
        """The probability the thresholds apply to: the card's map of this mode and finding."""
        cal = self.calibration.get("dual" if has_lateral else "frontal_only")
        cal = cal or self.calibration.get("dual")
        if cal is None or finding not in cal.maps:
            return probability
        return float(cal.maps[finding].apply(probability))

    def refusals(self, distances: np.ndarray | None, has_lateral: np.ndarray) -> list[str | None]:
        """Per study, why it is refused (None: scored): the gate's rule on the model's second
        output, or refused outright by a model without a gate."""
        if self.gate is None or distances is None:
            return [NO_GATE] * len(has_lateral)
        return refusals(distances, has_lateral, self.gate)

    def refuse(self, finding: str, reason: str) -> dict[str, Any]:
        """The output row of one finding of a refused study: no probability, no decision."""
        return {
            "status": REFUSED,
            "reason": reason,
            "probability": math.nan,
            "threshold": math.nan,
            "positive": None,
            "threshold_policy": "",
        }

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
        probability = self.calibrated(finding, probability, has_lateral)
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
    extras = _extras(output)
    if not table:
        log.warning("the model card has no validation thresholds: no finding gets a decision")
        why = "the model card has no validation thresholds (export ran without evaluate)"
        return Decisions(policy, policy, {}, {}, dict.fromkeys(findings, why), **extras)
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
        return Decisions(policy, policy, dual, dual, not_trained, **extras)
    frontal = {
        f: t if frontal_table.get(f) is None else float(frontal_table[f]) for f, t in dual.items()
    }
    return Decisions(policy, f"{policy} (frontal-only)", dual, frontal, not_trained, **extras)


def _extras(output: dict[str, Any]) -> dict[str, Any]:
    """The card's calibration maps and gate thresholds, as :class:`Decisions` takes them.

    Raises:
        PredictError: a malformed calibration map.
    """
    try:
        calibration = {
            mode: calibration_from_json(c) for mode, c in (output.get("calibration") or {}).items()
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise PredictError(f"the model card's calibration is malformed ({exc})") from None
    gate = output.get("ood_gate")
    thresholds = {v: float(t) for v, t in (gate or {}).get("thresholds", {}).items()}
    return {"calibration": {m: c for m, c in calibration.items() if c}, "gate": thresholds or None}


def data_notice(card: dict[str, Any]) -> str | None:
    """The card's data notice (:mod:`pipelines.notices`; worked out for cards without one)."""
    if "notice" in card:
        return card["notice"]
    return notice_for((card.get("training_data") or {}).get("sources"))
