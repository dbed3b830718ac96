"""Operating points: thresholds chosen on validation, applied to test with bootstrap CIs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from pipelines.evaluation.bootstrap import Estimate, PatientBootstrap
from pipelines.evaluation.metrics import annotated, check_bootstrap, matrix_inputs


def youden_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (``score >= t``).

    Ties in J go to the highest threshold. None when the finding is not estimable.
    """
    y, s = annotated(y_true, y_score)
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    j = (tpr - fpr)[1:]  # thr[0] = inf: "call nothing positive"
    return float(thr[1:][int(np.argmax(j))])


def sensitivity_threshold(y_true: np.ndarray, y_score: np.ndarray, target: float) -> float | None:
    """The highest threshold whose sensitivity reaches ``target`` (so specificity is best).

    Raises:
        ValueError: ``target`` outside (0, 1].
    """
    if not 0 < target <= 1:
        raise ValueError(f"sensitivity target must be in (0, 1], got {target}")
    y, s = annotated(y_true, y_score)
    if len(np.unique(y)) < 2:
        return None
    _, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    idx = int(np.argmax(tpr >= target - 1e-12))
    return float(thr[idx])


@dataclass(frozen=True)
class OperatingPoint:
    """One threshold applied to a data set, with CIs.

    Attributes:
        finding, rule: the finding and how the threshold was chosen (``youden`` ...).
        threshold: predicted positive when probability >= threshold (None: not estimable).
        sensitivity, specificity, ppv, npv: with patient-bootstrap CIs.
        tp, fp, tn, fn: counts at the threshold on the full data.
    """

    finding: str
    rule: str
    threshold: float | None
    sensitivity: Estimate
    specificity: Estimate
    ppv: Estimate
    npv: Estimate
    tp: int | None = None
    fp: int | None = None
    tn: int | None = None
    fn: int | None = None


_NONE = Estimate(None, None, None)


def apply_thresholds(
    y: np.ndarray,
    p: np.ndarray,
    thresholds: Sequence[float | None],
    boot: PatientBootstrap,
    findings: Sequence[str],
    rule: str,
    level: float = 0.95,
) -> list[OperatingPoint]:
    """Sensitivity, specificity, PPV and NPV at fixed thresholds, with bootstrap CIs.

    Args:
        y, p: (N, F) labels and probabilities of the data the thresholds are applied to
            (the test split; thresholds are chosen on validation).
        thresholds: F thresholds (None = skip that finding).
        boot: bootstrap over the N studies.
        findings: F names.
        rule: label of the rule that chose them.
        level: CI coverage.
    """
    y, p = matrix_inputs(y, p)
    check_bootstrap(boot, y)
    thr = np.array([np.inf if t is None else t for t in thresholds], dtype=np.float64)
    valid = ~np.isnan(y)
    yv = np.where(valid, y, 0.0)
    pred = (p >= thr[None, :]).astype(np.float64) * valid
    cells = {
        "tp": yv * pred,
        "fn": yv * (1 - pred) * valid,
        "fp": (1 - yv) * pred * valid,
        "tn": (1 - yv) * (1 - pred) * valid,
    }
    stacked = np.concatenate(list(cells.values()), axis=1)  # (N, 4F)
    nf = y.shape[1]

    def rates(counts: np.ndarray) -> np.ndarray:
        tp, fn, fp, tn = (counts[..., i * nf : (i + 1) * nf] for i in range(4))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.stack([tp / (tp + fn), tn / (tn + fp), tp / (tp + fp), tn / (tn + fn)], -1)

    full = rates(stacked.sum(0))  # (F, 4)
    per_patient = boot.per_patient(stacked)
    samples = boot.map(lambda c: rates(c @ per_patient))  # (B, F, 4)
    counts = stacked.sum(0).reshape(4, nf)
    out = []
    for f, name in enumerate(findings):
        if thresholds[f] is None:
            out.append(OperatingPoint(name, rule, None, _NONE, _NONE, _NONE, _NONE))
            continue
        ests = [Estimate.from_samples(full[f, k], samples[:, f, k], level) for k in range(4)]
        tp, fn, fp, tn = (int(counts[i, f]) for i in range(4))
        out.append(OperatingPoint(name, rule, float(thresholds[f]), *ests, tp, fp, tn, fn))
    return out
