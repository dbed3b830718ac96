"""The patient-level bootstrap: resampling, percentile intervals, weighted rank statistics.

The bootstrap resamples **patients** with replacement (all of a patient's studies travel
together), expressed as a weight matrix ``W`` (resamples x studies) of how often each study is
drawn; every metric is then a weighted statistic of ``W``, computed for all resamples at once:
AUROC is the weighted Mann-Whitney U (cumulative sums over the score order), average precision
the weighted step-wise precision-recall sum, and counts (sensitivity, ECE ...) are matrix
products, with no Python loop over resamples. scikit-learn in such a loop is the reference the
tests compare against.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Resamples drawn from one child random stream: results depend on the seed only, not on memory
#: chunking, because blocks of this size always come from the same stream.
RESAMPLE_BLOCK = 100
#: Upper bound on elements of one (resamples x studies) work array inside a metric.
_MAX_ELEMENTS = 2_000_000
NOT_ESTIMABLE = "not estimable"


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


def _row_chunks(n_rows: int, n_cols: int) -> Iterator[slice]:
    step = max(1, _MAX_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, start + step)


@dataclass(frozen=True)
class RankPlan:
    """Score order of one finding's positives and negatives, shared by every resample."""

    pos_cols: np.ndarray  # weight column of each positive, by ascending score
    neg_cols: np.ndarray  # weight column of each negative, by ascending score
    neg_lo: np.ndarray  # per positive: negatives with a strictly lower score
    neg_hi: np.ndarray  # per positive: negatives with a lower or equal score
    pos_lo: np.ndarray  # per positive: positives with a strictly lower score

    @classmethod
    def build(cls, y: np.ndarray, s: np.ndarray, columns: np.ndarray) -> RankPlan:
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


def rank_stats(plan: RankPlan, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        return cls(float(value), finite_or_none(lo[0]), finite_or_none(hi[0]))

    def format(self, digits: int = 3) -> str:
        """``0.812 (0.774–0.845)``, ``0.031 (-0.025 to 0.083)``, or ``not estimable``."""
        if self.value is None:
            return NOT_ESTIMABLE
        if self.lower is None:
            return f"{self.value:.{digits}f}"
        sep = " to " if self.lower < 0 else "–"  # "-0.02–0.08" reads as a range of negatives
        return f"{self.value:.{digits}f} ({self.lower:.{digits}f}{sep}{self.upper:.{digits}f})"


def finite_or_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)
