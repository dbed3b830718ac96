"""Performance per subgroup: AUROC by sex, age band, frontal view and source, and the largest gap.

Audits of chest X-ray classifiers found AUROC and under-diagnosis gaps by sex, age and
dataset, which a pooled AUROC hides. For every attribute the test studies carry
(:data:`ATTRIBUTES`: coarse, non-identifying values from :mod:`pipelines.demographics`, the
frontal view, the source) and every finding, :func:`subgroup_analysis` gives:

- each group's AUROC with its patient-bootstrap CI (the study rows of a group, its patients
  resampled by the one test bootstrap, so every group's replicates come from the same resamples);
- the **largest gap**: the AUROC of the best group minus that of the worst, among the groups
  with at least ``subgroup_min_positives`` positives and as many negatives (the unknown group
  is shown but never compared), with a **paired** CI: both AUROCs of each resample come from the
  same resampled patients, so what the groups share cancels.

A gap is **flagged** when its CI excludes 0. The CI is Bonferroni-adjusted for every pair of
groups the analysis compares (all findings and attributes: ``m`` pairs), so that with no real
gap anywhere the chance of any flag stays near 1 - ``ci_level`` however many groups there are;
picking the largest of many gaps would otherwise flag noise. At that level a percentile interval
would rest on a handful of resamples, so the adjusted interval is the normal one from the paired
bootstrap's standard error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from pipelines.evaluation.bootstrap import Estimate, PatientBootstrap, RankPlan, rank_stats
from pipelines.evaluation.metrics import auroc_per_finding, class_counts

#: attribute -> the predictions column holding it (evaluate writes them from the shards' meta)
ATTRIBUTES: dict[str, str] = {
    "sex": "sex",
    "age_band": "age_band",
    "view": "frontal_view",
    "source": "source",
}
UNKNOWN = "unknown"  # the group of studies whose attribute the source does not give


@dataclass(frozen=True)
class GroupScore:
    """One group's AUROC for one finding (``auroc.value`` None where not estimable)."""

    group: str
    n_studies: int
    n_pos: int
    n_neg: int
    auroc: Estimate
    compared: bool  # counts enough positives and negatives to enter the gap


@dataclass(frozen=True)
class Gap:
    """The largest AUROC gap of a finding between the compared groups of an attribute.

    Attributes:
        high, low: the groups with the highest and lowest AUROC.
        delta: AUROC(high) - AUROC(low) with its paired, Bonferroni-adjusted CI.
        flagged: the CI excludes 0.
    """

    high: str
    low: str
    delta: Estimate
    flagged: bool


@dataclass
class AttributeResult:
    """Every finding's group scores and largest gap for one attribute."""

    attribute: str
    groups: list[str]
    scores: dict[str, list[GroupScore]] = field(default_factory=dict)
    gaps: dict[str, Gap | None] = field(default_factory=dict)


@dataclass
class SubgroupAnalysis:
    """The whole analysis: per attribute its result, the comparisons made, the CI levels."""

    attributes: list[AttributeResult]
    comparisons: int
    level: float
    adjusted_level: float
    min_positives: int
    skipped: dict[str, str] = field(default_factory=dict)  # attribute -> why not analysed

    def flagged(self) -> list[dict[str, Any]]:
        """The flagged gaps: finding, attribute, groups and the gap with its CI."""
        return [
            {"finding": f, "attribute": a.attribute, "high": g.high, "low": g.low,
             "delta": g.delta}
            for a in self.attributes
            for f, g in a.gaps.items()
            if g is not None and g.flagged
        ]  # fmt: skip


def group_labels(test: pd.DataFrame, column: str) -> np.ndarray:
    """The group of each test study ('' and missing values -> :data:`UNKNOWN`)."""
    values = test[column].astype("string").fillna("").str.strip()
    return values.mask(values == "", UNKNOWN).to_numpy(dtype=object)


def _group_replicates(
    y: np.ndarray, p: np.ndarray, members: dict[str, np.ndarray], boot: PatientBootstrap
) -> dict[str, np.ndarray]:
    """(B, F) AUROC replicates of each group, all from the same patient resamples."""
    plans = {
        g: [
            RankPlan.build(y[m & ~np.isnan(y[:, f]), f], p[m & ~np.isnan(y[:, f]), f],
                           boot.study_patient[m & ~np.isnan(y[:, f])])
            for f in range(y.shape[1])
        ]
        for g, m in members.items()
    }  # fmt: skip

    def block(c: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(np.stack([rank_stats(pl, c)[0] for pl in plans[g]], 1) for g in plans)

    out = boot.map(block)
    out = out if isinstance(out, tuple) else (out,)
    return dict(zip(plans, out, strict=True))


def _scores(
    y: np.ndarray,
    p: np.ndarray,
    members: dict[str, np.ndarray],
    reps: dict[str, np.ndarray],
    f: int,
    level: float,
    min_positives: int,
) -> list[GroupScore]:
    rows = []
    for g, m in members.items():
        n_pos, n_neg, _ = class_counts(y[m][:, [f]])
        point = auroc_per_finding(y[m][:, [f]], p[m][:, [f]])[0]
        ok = n_pos[0] > 0 and n_neg[0] > 0
        rows.append(
            GroupScore(
                group=g,
                n_studies=int(m.sum()),
                n_pos=int(n_pos[0]),
                n_neg=int(n_neg[0]),
                auroc=Estimate.from_samples(point if ok else None, reps[g][:, f], level),
                compared=g != UNKNOWN and min(n_pos[0], n_neg[0]) >= max(min_positives, 1),
            )
        )
    return rows


def _gap(
    scores: list[GroupScore], reps: dict[str, np.ndarray], f: int
) -> tuple[str, str, float, float] | None:
    """(high, low, point gap, paired bootstrap SE) of the compared groups, or None."""
    compared = [s for s in scores if s.compared and s.auroc.value is not None]
    if len(compared) < 2:
        return None
    high = max(compared, key=lambda s: s.auroc.value)
    low = min(compared, key=lambda s: s.auroc.value)
    diff = reps[high.group][:, f] - reps[low.group][:, f]
    se = float(np.nanstd(diff, ddof=1)) if np.isfinite(diff).sum() > 1 else float("nan")
    return high.group, low.group, float(high.auroc.value - low.auroc.value), se


def _n_pairs(scores: list[GroupScore]) -> int:
    k = sum(s.compared and s.auroc.value is not None for s in scores)
    return k * (k - 1) // 2


def subgroup_analysis(
    test: pd.DataFrame,
    y: np.ndarray,
    p: np.ndarray,
    findings: list[str],
    boot: PatientBootstrap,
    level: float = 0.95,
    min_positives: int = 5,
) -> SubgroupAnalysis:
    """AUROC per group and the largest gap per finding, for every attribute the rows carry.

    Args:
        test: the dual-mode test rows (the attribute columns of :data:`ATTRIBUTES` that exist).
        y, p: (N, F) labels and scores of those rows.
        findings: the F names.
        boot: the test bootstrap (over these N rows' patients).
        level: the CI level of each group's AUROC and, before adjustment, of each gap.
        min_positives: a group enters the gap comparison with at least this many positives and
            as many negatives.
    """
    results, skipped = [], {}
    for name, column in ATTRIBUTES.items():
        if column not in test:
            skipped[name] = "not in the predictions"
            continue
        labels = group_labels(test, column)
        groups = sorted(set(labels), key=lambda g: (g == UNKNOWN, g))
        if len([g for g in groups if g != UNKNOWN]) < 2:
            skipped[name] = f"fewer than two known groups ({', '.join(groups)})"
            continue
        members = {g: labels == g for g in groups}
        reps = _group_replicates(y, p, members, boot)
        res = AttributeResult(name, groups)
        for f, finding in enumerate(findings):
            res.scores[finding] = _scores(y, p, members, reps, f, level, min_positives)
        results.append((res, reps))
    m = int(sum(_n_pairs(s) for res, _ in results for s in res.scores.values()))
    adjusted = 1 - (1 - level) / max(m, 1)
    z = NormalDist().inv_cdf(1 - (1 - adjusted) / 2)
    for res, reps in results:
        for f, finding in enumerate(findings):
            found = _gap(res.scores[finding], reps, f)
            res.gaps[finding] = _as_gap(found, z)
    return SubgroupAnalysis([r for r, _ in results], m, level, adjusted, min_positives, skipped)


def _as_gap(found: tuple[str, str, float, float] | None, z: float) -> Gap | None:
    if found is None:
        return None
    high, low, delta, se = found
    if not np.isfinite(se):
        return Gap(high, low, Estimate(delta, None, None), False)
    est = Estimate(delta, delta - z * se, delta + z * se)
    return Gap(high, low, est, bool(est.lower > 0))
