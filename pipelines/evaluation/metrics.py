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

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

ESTIMABLE = "ok"
NOT_ESTIMABLE = "not estimable"
Verdict = Literal["helps", "hurts", "neutral", "not estimable"]

#: Resamples drawn from one child random stream: results depend on the seed only, not on memory
#: chunking, because blocks of this size always come from the same stream.
RESAMPLE_BLOCK = 100
#: Upper bound on elements of one (resamples x studies) work array inside a metric.
_MAX_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


class PatientBootstrap:
    """Resample patients with replacement and expand each draw to that patient's studies.

    Resamples come in blocks of :data:`RESAMPLE_BLOCK`, each from its own child seed, so the
    resamples depend on ``seed`` only, and blocks can be processed on several threads (numpy
    releases the GIL in the heavy operations) with identical results.

    Args:
        patient_keys: one key per study (row); studies sharing a key are one patient.
        n_resamples: number of bootstrap resamples.
        seed: seed of the resampling; the same seed and keys give the same resamples.
        threads: threads for :meth:`map` (0 = one per CPU core, at most 8).

    Raises:
        ValueError: no studies, missing keys, or fewer than one resample.
    """

    def __init__(
        self,
        patient_keys: Sequence[Any] | np.ndarray,
        n_resamples: int = 2000,
        seed: int = 0,
        threads: int = 0,
    ):
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
        codes, uniques = pd.factorize(pd.Series(np.asarray(patient_keys, dtype=object)))
        if len(codes) == 0:
            raise ValueError("bootstrap over zero studies")
        if (codes < 0).any():
            raise ValueError("patient keys contain missing values")
        self.study_patient = codes.astype(np.int64)
        self.n_patients = len(uniques)
        self.n_studies = len(codes)
        self.n_resamples = int(n_resamples)
        self.seed = int(seed)
        self.threads = threads or min(8, os.cpu_count() or 1)
        self._n_blocks = -(-self.n_resamples // RESAMPLE_BLOCK)
        self._seeds = np.random.SeedSequence(self.seed).spawn(self._n_blocks)

    def block_counts(self, i: int) -> np.ndarray:
        """Float (b, n_patients): how often each patient is drawn in the resamples of block i."""
        b = min(RESAMPLE_BLOCK, self.n_resamples - i * RESAMPLE_BLOCK)
        p = self.n_patients
        draws = np.random.default_rng(self._seeds[i]).integers(0, p, size=(b, p))
        flat = (draws + (np.arange(b) * p)[:, None]).ravel()
        return np.bincount(flat, minlength=b * p).reshape(b, p).astype(np.float64)

    def patient_counts(self) -> Iterator[np.ndarray]:
        """Yield every block of patient draw counts (see :meth:`block_counts`)."""
        for i in range(self._n_blocks):
            yield self.block_counts(i)

    def weights(self) -> Iterator[np.ndarray]:
        """Yield blocks (b, n_studies) of study weights (each study gets its patient's count)."""
        for counts in self.patient_counts():
            yield counts[:, self.study_patient]

    def per_patient(self, values: np.ndarray) -> np.ndarray:
        """Sum study rows (N, ...) per patient -> (n_patients, ...), so ``W @ v == C @ that``."""
        values = np.asarray(values, dtype=np.float64)
        out = np.zeros((self.n_patients, *values.shape[1:]))
        np.add.at(out, self.study_patient, values)
        return out

    def map(self, fn: Callable[[np.ndarray], Any]) -> Any:
        """Apply ``fn(C)`` to every block of patient counts and stack results along axis 0.

        ``C`` is (b, n_patients); a study's weight is ``C[:, study_patient[study]]``: pass
        ``columns=boot.study_patient`` to the weighted metrics, or use :meth:`per_patient` for
        sums. ``fn`` returns an array (b, ...) or a tuple of them; the result has the same
        structure with ``n_resamples`` rows. Blocks run on :attr:`threads` threads, in order.
        """

        def run(i: int) -> Any:
            return fn(self.block_counts(i))

        if self.threads > 1 and self._n_blocks > 1:
            with ThreadPoolExecutor(min(self.threads, self._n_blocks)) as pool:
                parts = list(pool.map(run, range(self._n_blocks)))
        else:
            parts = [run(i) for i in range(self._n_blocks)]
        if isinstance(parts[0], tuple):
            return tuple(np.concatenate(items, axis=0) for items in zip(*parts, strict=True))
        return np.concatenate(parts, axis=0)

    def subset(self, mask: np.ndarray) -> PatientBootstrap:
        """A bootstrap over the studies selected by ``mask`` (same seed, resamples, threads)."""
        mask = np.asarray(mask, dtype=bool)
        return PatientBootstrap(self.study_patient[mask], self.n_resamples, self.seed, self.threads)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile confidence interval over axis 0, ignoring NaN resamples.

    Args:
        samples: (B, ...) bootstrap replicates; NaN marks a resample where the metric was
            undefined (e.g. no positive drawn).
        level: coverage, e.g. 0.95.

    Raises:
        ValueError: ``level`` outside (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"ci level must be in (0, 1), got {level}")
    alpha = (1 - level) / 2
    samples = np.asarray(samples, dtype=np.float64)
    out_shape = samples.shape[1:]
    lo = np.full(out_shape, np.nan)
    hi = np.full(out_shape, np.nan)
    ok = ~np.isnan(samples).all(axis=0)
    if ok.any():
        q = np.nanquantile(samples[:, ok], [alpha, 1 - alpha], axis=0)
        lo[ok], hi[ok] = q[0], q[1]
    return lo, hi


# --------------------------------------------------------------------------------------------
# Weighted (vectorised) statistics: one row of W = one resample
# --------------------------------------------------------------------------------------------


def _row_chunks(n_rows: int, n_cols: int) -> Iterator[slice]:
    step = max(1, _MAX_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, start + step)


@dataclass(frozen=True)
class _RankPlan:
    """Score order of one finding's positives and negatives, shared by every resample."""

    pos_cols: np.ndarray  # weight column of each positive, by ascending score
    neg_cols: np.ndarray  # weight column of each negative, by ascending score
    neg_lo: np.ndarray  # per positive: negatives with a strictly lower score
    neg_hi: np.ndarray  # per positive: negatives with a lower or equal score
    pos_lo: np.ndarray  # per positive: positives with a strictly lower score

    @classmethod
    def build(cls, y: np.ndarray, s: np.ndarray, columns: np.ndarray) -> _RankPlan:
        pos, neg = y == 1, y == 0
        po = np.argsort(s[pos], kind="mergesort")
        no = np.argsort(s[neg], kind="mergesort")
        sp, sn = s[pos][po], s[neg][no]
        return cls(
            pos_cols=columns[pos][po],
            neg_cols=columns[neg][no],
            neg_lo=np.searchsorted(sn, sp, "left"),
            neg_hi=np.searchsorted(sn, sp, "right"),
            pos_lo=np.searchsorted(sp, sp, "left"),
        )


def _rank_stats(plan: _RankPlan, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC and average precision for each row of ``weights`` (B, M).

    With positives i and negatives j sorted by score, and C the cumulative negative weight:
        AUROC = sum_i w_i (C[< s_i] + C[<= s_i]) / 2 / (W+ W-)
        AP    = sum_i w_i prec(s_i) / W+,  prec(s) = W+[>= s] / (W+[>= s] + W-[>= s])
    which are the Mann-Whitney U with half ties and scikit-learn's step-wise AP.
    """
    b = weights.shape[0]
    auc, ap = np.full(b, np.nan), np.full(b, np.nan)
    if plan.pos_cols.size == 0 and plan.neg_cols.size == 0:
        return auc, ap
    width = plan.pos_cols.size + plan.neg_cols.size
    for rows in _row_chunks(b, width):
        w = weights[rows]
        wp = np.take(w, plan.pos_cols, axis=1)
        wn = np.take(w, plan.neg_cols, axis=1)
        cn = np.zeros((wn.shape[0], wn.shape[1] + 1))
        np.cumsum(wn, axis=1, out=cn[:, 1:])
        cp = np.zeros((wp.shape[0], wp.shape[1] + 1))
        np.cumsum(wp, axis=1, out=cp[:, 1:])
        tot_p, tot_n = cp[:, -1], cn[:, -1]
        below = np.take(cn, plan.neg_lo, axis=1)
        below_eq = np.take(cn, plan.neg_hi, axis=1)
        num = np.einsum("ij,ij->i", wp, below + below_eq) * 0.5
        denom = tot_p * tot_n
        auc[rows] = np.divide(num, denom, out=np.full_like(num, np.nan), where=denom > 0)
        tp_at = tot_p[:, None] - np.take(cp, plan.pos_lo, axis=1)
        fp_at = tot_n[:, None] - below
        prec = np.divide(tp_at, tp_at + fp_at, out=np.zeros_like(tp_at), where=tp_at > 0)
        num_ap = np.einsum("ij,ij->i", wp, prec)
        ap[rows] = np.divide(num_ap, tot_p, out=np.full_like(num_ap, np.nan), where=tot_p > 0)
    return auc, ap


def _annotated(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One finding's (N,) labels and scores without the unannotated (NaN-label) studies."""
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"shape mismatch: labels {y.shape}, scores {s.shape}")
    keep = ~np.isnan(y)
    return y[keep], s[keep]


def _matrix_inputs(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


# --------------------------------------------------------------------------------------------
# Point estimates
# --------------------------------------------------------------------------------------------


def class_counts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positives, negatives and unannotated (NaN) per finding of a (N, F) label array."""
    y = np.asarray(y, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    return (y == 1).sum(0), (y == 0).sum(0), np.isnan(y).sum(0)


def _per_finding(score: Any, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``score(y, p)`` per finding column, NaN labels excluded; NaN where one class only."""
    y, p = _matrix_inputs(y, p)
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
    y, p = _matrix_inputs(y, p)
    keep = ~np.isnan(y)
    if len(np.unique(y[keep])) < 2:
        return float("nan")
    return float(roc_auc_score(y[keep], p[keep]))


# --------------------------------------------------------------------------------------------
# Bootstrap tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap percentile interval (None where not estimable).

    Attributes:
        value: the estimate on the full data.
        lower: lower CI bound.
        upper: upper CI bound.
    """

    value: float | None
    lower: float | None
    upper: float | None

    @classmethod
    def from_samples(cls, value: float, samples: np.ndarray, level: float) -> Estimate:
        """Build from a point value and (B,) replicates."""
        if value is None or not np.isfinite(value):
            return cls(None, None, None)
        lo, hi = percentile_interval(np.asarray(samples)[:, None], level)
        return cls(float(value), _num(lo[0]), _num(hi[0]))

    def format(self, digits: int = 3) -> str:
        """``0.812 (0.774–0.845)``, ``0.031 (-0.025 to 0.083)``, or ``not estimable``."""
        if self.value is None:
            return NOT_ESTIMABLE
        if self.lower is None:
            return f"{self.value:.{digits}f}"
        sep = " to " if self.lower < 0 else "–"  # "-0.02–0.08" reads as a range of negatives
        return f"{self.value:.{digits}f} ({self.lower:.{digits}f}{sep}{self.upper:.{digits}f})"


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


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


def _finding_plans(y: np.ndarray, p: np.ndarray, boot: PatientBootstrap) -> list[_RankPlan]:
    _check_boot(boot, y)
    plans = []
    for f in range(y.shape[1]):
        keep = ~np.isnan(y[:, f])
        plans.append(_RankPlan.build(y[keep, f], p[keep, f], boot.study_patient[keep]))
    return plans


def _map_plans(plans: list[_RankPlan], boot: PatientBootstrap) -> tuple[np.ndarray, np.ndarray]:
    def block(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stats = [_rank_stats(plan, c) for plan in plans]
        return np.stack([s[0] for s in stats], 1), np.stack([s[1] for s in stats], 1)

    return boot.map(block)


def bootstrap_rank_metrics(
    y: np.ndarray, p: np.ndarray, boot: PatientBootstrap
) -> tuple[np.ndarray, np.ndarray]:
    """(B, F) AUROC and (B, F) average-precision replicates, computed in one pass.

    NaN where a resample drew no positive (AP, AUROC) or no negative (AUROC) of a finding.
    """
    y, p = _matrix_inputs(y, p)
    return _map_plans(_finding_plans(y, p, boot), boot)


def bootstrap_micro_auroc(y: np.ndarray, p: np.ndarray, boot: PatientBootstrap) -> np.ndarray:
    """(B,) micro AUROC replicates: pooled pairs, each weighted by its study's draw count."""
    y, p = _matrix_inputs(y, p)
    _check_boot(boot, y)
    study, finding = np.nonzero(~np.isnan(y))
    plan = _RankPlan.build(y[study, finding], p[study, finding], boot.study_patient[study])
    return boot.map(lambda c: _rank_stats(plan, c)[0])


def _check_boot(boot: PatientBootstrap, y: np.ndarray) -> None:
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
    y, p = _matrix_inputs(y, p)
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


# --------------------------------------------------------------------------------------------
# Paired comparison (dual view vs frontal only)
# --------------------------------------------------------------------------------------------


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
    y, p_a = _matrix_inputs(y, p_a)
    _, p_b = _matrix_inputs(y, p_b)
    n_pos, n_neg, _ = class_counts(y)
    estimable = (n_pos > 0) & (n_neg > 0)
    auc_a, auc_b = auroc_per_finding(y, p_a), auroc_per_finding(y, p_b)
    plans_a, plans_b = _finding_plans(y, p_a, boot), _finding_plans(y, p_b, boot)

    def both(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = np.stack([_rank_stats(plan, c)[0] for plan in plans_a], 1)
        b = np.stack([_rank_stats(plan, c)[0] for plan in plans_b], 1)
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
                auroc_a=_num(auc_a[f]) if ok else None,
                auroc_b=_num(auc_b[f]) if ok else None,
                delta=est,
                verdict=verdict_of(est),
            )
        )
    macro_point = mean_estimable(auc_a) - mean_estimable(auc_b)
    macro = Estimate.from_samples(
        macro_point, macro_mean(sa, estimable) - macro_mean(sb, estimable), level
    )
    return diffs, macro


# --------------------------------------------------------------------------------------------
# Operating points
# --------------------------------------------------------------------------------------------


def youden_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (``score >= t``).

    Ties in J go to the highest threshold. None when the finding is not estimable.
    """
    y, s = _annotated(y_true, y_score)
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
    y, s = _annotated(y_true, y_score)
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
    y, p = _matrix_inputs(y, p)
    _check_boot(boot, y)
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


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip((np.asarray(p) * n_bins).astype(np.int64), 0, n_bins - 1)


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE with equal-width bins on [0, 1]: sum_b (n_b / N) |observed_b - mean predicted_b|.

    Bins are [0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1] (1.0 falls in the last bin). NaN labels
    are left out; NaN if nothing is annotated.

    Raises:
        ValueError: ``n_bins`` < 1.
    """
    if n_bins < 1:
        raise ValueError(f"ece bins must be >= 1, got {n_bins}")
    y, p = _annotated(y_true, y_prob)
    if y.size == 0:
        return float("nan")
    idx = _bin_index(p, n_bins)
    gap = np.bincount(idx, weights=y - p, minlength=n_bins)
    return float(np.abs(gap).sum() / y.size)


def bootstrap_ece(
    y_true: np.ndarray, y_prob: np.ndarray, boot: PatientBootstrap, n_bins: int = 10
) -> np.ndarray:
    """(B,) ECE replicates of one finding (weighted bin gaps as one matrix product)."""
    y = np.asarray(y_true, dtype=np.float64)
    keep = ~np.isnan(y)
    p = np.asarray(y_prob, dtype=np.float64)
    d = np.zeros((len(y), n_bins + 1))
    rows = np.flatnonzero(keep)
    d[rows, _bin_index(p[rows], n_bins)] = y[rows] - p[rows]
    d[rows, n_bins] = 1.0  # last column counts annotated studies
    d = boot.per_patient(d)

    def ece(c: np.ndarray) -> np.ndarray:
        sums = c @ d
        total, gaps = sums[:, -1], np.abs(sums[:, :-1]).sum(1)
        return np.divide(gaps, total, out=np.full_like(gaps, np.nan), where=total > 0)

    return boot.map(ece)


def reliability_curve(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability-diagram data: one row per equal-width bin (empty bins kept, count 0).

    Columns: ``bin_lower``, ``bin_upper``, ``count``, ``mean_predicted``, ``observed``
    (fraction positive; NaN for empty bins).
    """
    y, p = _annotated(y_true, y_prob)
    idx = _bin_index(p, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / count
        observed = np.bincount(idx, weights=y, minlength=n_bins) / count
    edges = np.linspace(0, 1, n_bins + 1)
    return pd.DataFrame(
        {
            "bin_lower": edges[:-1],
            "bin_upper": edges[1:],
            "count": count,
            "mean_predicted": mean_p,
            "observed": observed,
        }
    )
