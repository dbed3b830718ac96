"""Which findings a model was really trained on: label coverage and the trained / not-trained rule.

A source that does not annotate a finding gives NaN there (CheXpert and MIMIC annotate 7 of the
14); NaN is masked in the loss, so the model's output for such a finding stays at its
initialisation. Its probability means nothing, and a decision made on it would be a
clinical-looking answer without any basis. The rule, in one place:

- **label coverage** of a split: per finding, the annotated positives, the annotated negatives
  and the unannotated studies;
- a finding is **trained** when the training split has at least ``min_positives`` positives and
  ``min_negatives`` negatives for it (train params) **and** validation gave it a threshold
  (validation had both classes). Otherwise it is **not trained**, with the reason: ``cxr
  predict`` makes no decision on it, the report and the model card list it.

The train stage records the coverage and its verdict in the checkpoint's meta; evaluate adds the
missing thresholds; the export stage writes the final status into the model card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TRAINED = "trained"


def label_coverage(labels: np.ndarray, findings: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per finding: ``positives``, ``negatives``, ``unannotated`` of a (N, F) 1 / 0 / NaN array."""
    y = np.asarray(labels, dtype=np.float64).reshape(len(labels), len(findings))
    return {
        name: {
            "positives": int((y[:, j] == 1).sum()),
            "negatives": int((y[:, j] == 0).sum()),
            "unannotated": int(np.isnan(y[:, j]).sum()),
        }
        for j, name in enumerate(findings)
    }


def untrained_by_coverage(
    coverage: Mapping[str, Mapping[str, int]], min_positives: int, min_negatives: int
) -> dict[str, str]:
    """The findings the training split cannot teach, each with its reason."""
    out = {}
    for name, c in coverage.items():
        if c["positives"] < min_positives or c["negatives"] < min_negatives:
            out[name] = (
                f"too few labelled training studies ({c['positives']} positive, "
                f"{c['negatives']} negative; at least {min_positives} and {min_negatives} needed)"
            )
    return out


def finding_status(
    findings: Sequence[str],
    untrained: Mapping[str, str],
    thresholds: Mapping[str, Any] | None,
) -> dict[str, str]:
    """Per finding: ``trained``, or ``not trained: <reason>``.

    Args:
        findings: the model's outputs.
        untrained: what training found it could not teach (:func:`untrained_by_coverage`).
        thresholds: one validation-chosen threshold per finding (None where validation had one
            class only); None: no thresholds at all.
    """
    status = {}
    for name in findings:
        if name in untrained:
            status[name] = f"not trained: {untrained[name]}"
        elif thresholds is None or thresholds.get(name) is None:
            status[name] = "not trained: no validation threshold"
        else:
            status[name] = TRAINED
    return status


def is_trained(status: str) -> bool:
    """Whether a :func:`finding_status` value says trained."""
    return status == TRAINED


def untrained_by_validation(labels: np.ndarray, findings: Sequence[str]) -> dict[str, str]:
    """The findings validation cannot give a threshold: no annotated positive or negative there.

    Args:
        labels: the validation split's (N, F) 1 / 0 / NaN labels (N may be 0: no validation
            at all, then nothing is flagged here and the caller says so).
        findings: their names.
    """
    if not len(labels):
        return {}
    out = {}
    for name, c in label_coverage(labels, findings).items():
        if c["positives"] == 0 or c["negatives"] == 0:
            missing = "positive" if c["positives"] == 0 else "negative"
            out[name] = f"no validation threshold (no labelled {missing} validation study)"
    return out
