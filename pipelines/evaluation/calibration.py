"""Calibration: expected calibration error, its bootstrap replicates, reliability diagrams."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.evaluation.bootstrap import PatientBootstrap
from pipelines.evaluation.metrics import annotated


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
    y, p = annotated(y_true, y_prob)
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
    y, p = annotated(y_true, y_prob)
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
