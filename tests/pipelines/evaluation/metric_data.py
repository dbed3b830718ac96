"""Simulated labels and scores for the metric tests."""

from __future__ import annotations

import numpy as np

from pipelines.evaluation.metrics import (
    bootstrap_rank_metrics,
)


def simulated(n=240, f=3, seed=0, ties=False, missing=0.0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, f)) < 0.3).astype(np.float64)
    p = 1 / (1 + np.exp(-(rng.normal(size=(n, f)) + 1.2 * y)))
    if ties:
        p = np.round(p, 1)
    if missing:
        y[rng.random((n, f)) < missing] = np.nan
    keys = rng.integers(0, n // 2, n).astype(str)
    return y, p, keys


def auroc_replicates(y, p, boot):
    return bootstrap_rank_metrics(y, p, boot)[0]
