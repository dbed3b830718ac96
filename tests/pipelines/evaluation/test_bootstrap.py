"""The patient bootstrap: resampling, intervals, weighted rank statistics."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluation.bootstrap import Estimate, PatientBootstrap, percentile_interval
from pipelines.evaluation.metrics import (
    auroc_per_finding,
    bootstrap_rank_metrics,
)
from tests.pipelines.evaluation.metric_data import auroc_replicates, simulated


def test_one_class_resample_is_nan():
    # two patients, one with both positives, one with both negatives: a resample that draws the
    # same patient twice is one-class (NaN), one that draws both ranks them perfectly
    y = np.array([[1.0], [1.0], [0.0], [0.0]])
    p = np.array([[0.9], [0.8], [0.3], [0.1]])
    boot = PatientBootstrap(["a", "a", "b", "b"], n_resamples=60, seed=0)
    auc, ap = bootstrap_rank_metrics(y, p, boot)
    counts = np.concatenate(list(boot.patient_counts()))
    both = (counts > 0).all(axis=1)
    assert both.any() and not both.all()
    assert np.isnan(auc[~both, 0]).all()
    np.testing.assert_array_equal(auc[both, 0], 1.0)
    assert np.isnan(ap[counts[:, 0] == 0, 0]).all()  # no positive drawn
    np.testing.assert_array_equal(ap[counts[:, 0] > 0, 0], 1.0)


def test_rank_metrics_reject_shape_mismatch():
    boot = PatientBootstrap(["a", "b", "c"], n_resamples=5, seed=0)
    with pytest.raises(ValueError, match="differ in shape"):
        bootstrap_rank_metrics(np.zeros((3, 1)), np.zeros((4, 1)), boot)
    with pytest.raises(ValueError, match="bootstrap is over 3 studies"):
        bootstrap_rank_metrics(np.zeros((4, 1)), np.zeros((4, 1)), boot)


def test_fixed_data_auroc_by_hand():
    # positives 0.8, 0.4 vs negatives 0.1, 0.4, 0.6: 0.8 wins 3 pairs; 0.4 wins 1, ties 1 (0.5)
    # and loses 1 -> (3 + 1.5) / 6
    y = np.array([[1, 1, 0, 0, 0]], dtype=float).T
    p = np.array([[0.8, 0.4, 0.1, 0.4, 0.6]]).T
    assert auroc_per_finding(y, p)[0] == pytest.approx(4.5 / 6)
    # one patient holds every study: each resample draws them all once (unit weights)
    auc = auroc_replicates(y, p, PatientBootstrap(["a"] * 5, n_resamples=3, seed=0))
    np.testing.assert_allclose(auc, 4.5 / 6)


def test_bootstrap_resamples_patients_and_keeps_their_studies_together():
    keys = np.array(["a", "a", "b", "c", "c", "c", "d"])
    boot = PatientBootstrap(keys, n_resamples=250, seed=0)
    counts = np.concatenate(list(boot.patient_counts()))
    weights = np.concatenate(list(boot.weights()))
    assert counts.shape == (250, 4) and weights.shape == (250, 7)
    np.testing.assert_array_equal(counts.sum(1), 4)  # 4 patient draws per resample
    np.testing.assert_array_equal(weights[:, 0], weights[:, 1])  # patient a's two studies
    np.testing.assert_array_equal(weights[:, 3], weights[:, 5])  # patient c's three studies
    # each patient is drawn Binomial(4, 1/4) times: mean 1
    assert counts.mean() == pytest.approx(1.0, abs=0.08)


def test_bootstrap_is_deterministic_by_seed():
    y, p, keys = simulated(seed=1)
    a = auroc_replicates(y, p, PatientBootstrap(keys, 150, seed=4))
    b = auroc_replicates(y, p, PatientBootstrap(keys, 150, seed=4))
    c = auroc_replicates(y, p, PatientBootstrap(keys, 150, seed=5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (150, 3)
    serial = auroc_replicates(y, p, PatientBootstrap(keys, 150, seed=4, threads=1))
    threaded = auroc_replicates(y, p, PatientBootstrap(keys, 150, seed=4, threads=3))
    np.testing.assert_array_equal(serial, threaded)
    np.testing.assert_array_equal(serial, a)


def test_percentile_interval_matches_numpy_quantile():
    s = np.random.default_rng(0).normal(size=(1000, 2))
    s[:10, 1] = np.nan
    lo, hi = percentile_interval(s, 0.9)
    assert lo[0] == pytest.approx(np.quantile(s[:, 0], 0.05))
    assert hi[1] == pytest.approx(np.quantile(s[10:, 1], 0.95))
    with pytest.raises(ValueError):
        percentile_interval(s, 1.5)


def test_estimate_format():
    assert Estimate(0.8123, 0.7741, 0.8452).format() == "0.812 (0.774–0.845)"
    assert Estimate(0.031, -0.025, 0.083).format() == "0.031 (-0.025 to 0.083)"
    assert Estimate(0.5, None, None).format(2) == "0.50"
    assert Estimate(None, None, None).format() == "not estimable"
