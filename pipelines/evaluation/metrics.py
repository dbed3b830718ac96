"""Classification metrics with patient-level bootstrap confidence intervals (numpy / scikit-learn).

Conventions:
    * ``y`` is a float array (N, F) of 1 / 0 / NaN; NaN (not annotated) is left out of that
      finding's metrics, never counted as negative.
    * ``p`` is an array (N, F) of probabilities (or any score for the ranking metrics).
    * A finding with no positives or no negatives among its annotated studies is *not estimable*:
      its AUROC is reported by status, never as NaN or 0.5. Internally the arrays carry NaN there.

Point estimates come from scikit-learn (``roc_auc_score``, ``average_precision_score``,
``roc_curve``). The bootstrap resamples **patients** with replacement (all of a patient's studies
travel together), expressed as a weight matrix ``W`` (resamples x studies) of how often each
study is drawn; every metric is then a weighted statistic of ``W``, computed for all resamples at
once: AUROC is the weighted Mann-Whitney U (cumulative sums over the score order), average
precision the weighted step-wise precision-recall sum, and counts (sensitivity, ECE ...) are
matrix products, with no Python loop over resamples. scikit-learn in such a loop is the reference
the tests compare against.

Example:
    >>> boot = PatientBootstrap(patient_keys, n_resamples=2000, seed=0)  # doctest: +SKIP
    >>> table = compute_roc_auc(y, p, boot, findings=FINDINGS)          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from pipelines.evaluation.bootstrap import (
    NOT_ESTIMABLE,
    Estimate,
    PatientBootstrap,
    RankPlan,
    finite_or_none,
    rank_stats,
)

ESTIMABLE = "ok"
Verdict = Literal["helps", "hurts", "neutral", "not estimable"]


def annotated(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One finding's (N,) labels and scores without the unannotated (NaN-label) studies."""
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"shape mismatch: labels {y.shape}, scores {s.shape}")
    keep = ~np.isnan(y)
    return y[keep], s[keep]


def matrix_inputs(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim == 1:
        y, p = y[:, None], p[:, None]
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and scores {p.shape} differ in shape")
    if np.isnan(p).any():
        raise ValueError("scores contain NaN")
    bad = ~np.isnan(y) & (y != 0) & (y != 1)
    if bad.any():
        raise ValueError(f"labels must be 1, 0 or NaN; found {np.unique(y[bad])[:5]}")
    return y, p


def class_counts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positives, negatives and unannotated (NaN) per finding of a (N, F) label array."""
    y = np.asarray(y, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    return (y == 1).sum(0), (y == 0).sum(0), np.isnan(y).sum(0)


def _per_finding(score: Any, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``score(y, p)`` per finding column, NaN labels excluded; NaN where one class only."""
    y, p = matrix_inputs(y, p)
    out = np.full(y.shape[1], np.nan)
    for f in range(y.shape[1]):
        keep = ~np.isnan(y[:, f])
        if len(np.unique(y[keep, f])) == 2:
            out[f] = score(y[keep, f], p[keep, f])
    return out


def auroc_per_finding(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """scikit-learn AUROC per finding, NaN labels excluded; NaN where not estimable."""
    return _per_finding(roc_auc_score, y, p)


def mean_estimable(values: np.ndarray) -> float:
    """The macro mean: the mean of the finite (estimable) values; NaN when there is none."""
    values = np.asarray(values, dtype=np.float64)
    scored = values[np.isfinite(values)]
    return float(np.mean(scored)) if scored.size else float("nan")


def macro_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Mean of :func:`auroc_per_finding` over the estimable findings; NaN when none is.

    The one macro AUROC of the project: training's model selection, evaluation and the export
    parity check all call it.
    """
    return mean_estimable(auroc_per_finding(y, p))


def auprc_per_finding(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """scikit-learn average precision per finding, NaN labels excluded; NaN where not estimable."""
    return _per_finding(average_precision_score, y, p)


def micro_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """AUROC over all annotated (study, finding) pairs pooled; NaN if one class only."""
    y, p = matrix_inputs(y, p)
    keep = ~np.isnan(y)
    if len(np.unique(y[keep])) < 2:
        return float("nan")
    return float(roc_auc_score(y[keep], p[keep]))


@dataclass(frozen=True)
class FindingScore:
    """Discrimination of one finding.

    Attributes:
        finding: its name.
        status: ``ok`` or ``not estimable`` (no positives or no negatives annotated).
        n_pos, n_neg, n_missing: annotated positives, negatives, and unannotated studies.
        auroc, auprc: estimates with CIs (values None when not estimable).
        prevalence: n_pos / (n_pos + n_neg), the AUPRC of a random ranking.
    """

    finding: str
    status: str
    n_pos: int
    n_neg: int
    n_missing: int
    auroc: Estimate
    auprc: Estimate
    prevalence: float | None


@dataclass(frozen=True)
class DiscriminationReport:
    """Per-finding AUROC/AUPRC with CIs, plus macro and micro AUROC.

    Attributes:
        findings: one :class:`FindingScore` per finding, in input order.
        macro_auroc: mean AUROC over estimable findings (CI: the same mean per resample).
        micro_auroc: AUROC of all annotated (study, finding) pairs pooled.
        n_studies, n_patients, n_resamples, level: what the CIs rest on.
    """

    findings: list[FindingScore]
    macro_auroc: Estimate
    micro_auroc: Estimate
    n_studies: int
    n_patients: int
    n_resamples: int
    level: float

    def by_name(self) -> dict[str, FindingScore]:
        """Findings keyed by name."""
        return {f.finding: f for f in self.findings}


def _finding_plans(y: np.ndarray, p: np.ndarray, boot: PatientBootstrap) -> list[RankPlan]:
    check_bootstrap(boot, y)
    plans = []
    for f in range(y.shape[1]):
        keep = ~np.isnan(y[:, f])
        plans.append(RankPlan.build(y[keep, f], p[keep, f], boot.study_patient[keep]))
    return plans


def _map_plans(plans: list[RankPlan], boot: PatientBootstrap) -> tuple[np.ndarray, np.ndarray]:
    def block(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stats = [rank_stats(plan, c) for plan in plans]
        return np.stack([s[0] for s in stats], 1), np.stack([s[1] for s in stats], 1)

    return boot.map(block)


def bootstrap_rank_metrics(
    y: np.ndarray, p: np.ndarray, boot: PatientBootstrap
) -> tuple[np.ndarray, np.ndarray]:
    """(B, F) AUROC and (B, F) average-precision replicates, computed in one pass.

    NaN where a resample drew no positive (AP, AUROC) or no negative (AUROC) of a finding.
    """
    y, p = matrix_inputs(y, p)
    return _map_plans(_finding_plans(y, p, boot), boot)


def bootstrap_micro_auroc(y: np.ndarray, p: np.ndarray, boot: PatientBootstrap) -> np.ndarray:
    """(B,) micro AUROC replicates: pooled pairs, each weighted by its study's draw count."""
    y, p = matrix_inputs(y, p)
    check_bootstrap(boot, y)
    study, finding = np.nonzero(~np.isnan(y))
    plan = RankPlan.build(y[study, finding], p[study, finding], boot.study_patient[study])
    return boot.map(lambda c: rank_stats(plan, c)[0])


def check_bootstrap(boot: PatientBootstrap, y: np.ndarray) -> None:
    if boot.n_studies != y.shape[0]:
        raise ValueError(f"bootstrap is over {boot.n_studies} studies, labels have {y.shape[0]}")


def macro_mean(samples: np.ndarray, estimable: np.ndarray) -> np.ndarray:
    """Per-resample mean over the estimable findings (a one-class resample is skipped)."""
    sub = samples[:, estimable]
    out = np.full(samples.shape[0], np.nan)
    ok = ~np.isnan(sub).all(axis=1) if sub.shape[1] else np.zeros(len(out), bool)
    out[ok] = np.nanmean(sub[ok], axis=1)
    return out


def compute_roc_auc(
    y: np.ndarray,
    p: np.ndarray,
    boot: PatientBootstrap,
    findings: Sequence[str],
    level: float = 0.95,
) -> DiscriminationReport:
    """Per-finding AUROC and AUPRC with patient-bootstrap CIs, macro and micro AUROC.

    Args:
        y: (N, F) labels 1 / 0 / NaN.
        p: (N, F) probabilities.
        boot: the bootstrap over these N studies' patients.
        findings: F finding names.
        level: CI coverage.

    Raises:
        ValueError: shapes disagree, labels other than 1/0/NaN, NaN scores.
    """
    y, p = matrix_inputs(y, p)
    if len(findings) != y.shape[1]:
        raise ValueError(f"{len(findings)} finding names for {y.shape[1]} label columns")
    n_pos, n_neg, n_missing = class_counts(y)
    point_auc = auroc_per_finding(y, p)
    point_ap = auprc_per_finding(y, p)
    auc_s, ap_s = bootstrap_rank_metrics(y, p, boot)
    estimable = (n_pos > 0) & (n_neg > 0)
    rows = []
    for f, name in enumerate(findings):
        ok = bool(estimable[f])
        annotated = n_pos[f] + n_neg[f]
        rows.append(
            FindingScore(
                finding=name,
                status=ESTIMABLE if ok else NOT_ESTIMABLE,
                n_pos=int(n_pos[f]),
                n_neg=int(n_neg[f]),
                n_missing=int(n_missing[f]),
                auroc=Estimate.from_samples(point_auc[f] if ok else None, auc_s[:, f], level),
                auprc=Estimate.from_samples(point_ap[f] if ok else None, ap_s[:, f], level),
                prevalence=float(n_pos[f] / annotated) if annotated else None,
            )
        )
    macro = Estimate.from_samples(mean_estimable(point_auc), macro_mean(auc_s, estimable), level)
    micro = Estimate.from_samples(micro_auroc(y, p), bootstrap_micro_auroc(y, p, boot), level)
    return DiscriminationReport(
        findings=rows,
        macro_auroc=macro,
        micro_auroc=micro,
        n_studies=int(y.shape[0]),
        n_patients=boot.n_patients,
        n_resamples=boot.n_resamples,
        level=level,
    )


@dataclass(frozen=True)
class PairedDifference:
    """AUROC(a) - AUROC(b) of one finding on the same studies, paired bootstrap CI.

    Attributes:
        finding: its name.
        auroc_a, auroc_b: AUROC of each score set (None if not estimable).
        delta: the difference with its CI (same resamples for both sets).
        verdict: ``helps`` (CI above 0), ``hurts`` (CI below 0), ``neutral`` (CI spans 0) or
            ``not estimable``.
    """

    finding: str
    auroc_a: float | None
    auroc_b: float | None
    delta: Estimate
    verdict: Verdict


def verdict_of(delta: Estimate) -> Verdict:
    """``helps`` / ``hurts`` / ``neutral`` from whether the CI excludes 0."""
    if delta.value is None or delta.lower is None or delta.upper is None:
        return NOT_ESTIMABLE
    if delta.lower > 0:
        return "helps"
    if delta.upper < 0:
        return "hurts"
    return "neutral"


def paired_auroc_difference(
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    boot: PatientBootstrap,
    findings: Sequence[str],
    level: float = 0.95,
) -> tuple[list[PairedDifference], Estimate]:
    """Per-finding AUROC(a) - AUROC(b) and the macro difference, with paired bootstrap CIs.

    Both score sets are evaluated on each resample's same studies, so study-level correlation
    between the two cancels (a paired test, unlike comparing two separate CIs).

    Args:
        y: (N, F) labels; p_a, p_b: (N, F) scores of the same N studies (a = e.g. dual view).
        boot: bootstrap over the N studies' patients.
        findings: F names.
        level: CI coverage.

    Returns:
        The per-finding differences and the macro (mean over estimable findings) difference.

    Raises:
        ValueError: shapes disagree.
    """
    y, p_a = matrix_inputs(y, p_a)
    _, p_b = matrix_inputs(y, p_b)
    n_pos, n_neg, _ = class_counts(y)
    estimable = (n_pos > 0) & (n_neg > 0)
    auc_a, auc_b = auroc_per_finding(y, p_a), auroc_per_finding(y, p_b)
    plans_a, plans_b = _finding_plans(y, p_a, boot), _finding_plans(y, p_b, boot)

    def both(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = np.stack([rank_stats(plan, c)[0] for plan in plans_a], 1)
        b = np.stack([rank_stats(plan, c)[0] for plan in plans_b], 1)
        return a, b

    sa, sb = boot.map(both)
    diffs = []
    for f, name in enumerate(findings):
        ok = bool(estimable[f])
        est = Estimate.from_samples(
            float(auc_a[f] - auc_b[f]) if ok else None, sa[:, f] - sb[:, f], level
        )
        diffs.append(
            PairedDifference(
                finding=name,
                auroc_a=finite_or_none(auc_a[f]) if ok else None,
                auroc_b=finite_or_none(auc_b[f]) if ok else None,
                delta=est,
                verdict=verdict_of(est),
            )
        )
    macro_point = mean_estimable(auc_a) - mean_estimable(auc_b)
    macro = Estimate.from_samples(
        macro_point, macro_mean(sa, estimable) - macro_mean(sb, estimable), level
    )
    return diffs, macro
