"""Calibration: ECE by hand and reliability curves against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from pipelines.evaluation.bootstrap import PatientBootstrap
from pipelines.evaluation.calibration import (
    bootstrap_ece,
    expected_calibration_error,
    reliability_curve,
)
from tests.pipelines.evaluation.metric_data import simulated


def test_ece_by_hand():
    # bins of width 0.5: [0, .5): p = .1, .2, .3 with y = 0, 0, 1 -> |1/3 - .2| = 0.1333
    #                    [.5, 1]: p = .6, .8, 1.0 with y = 1, 1, 0 -> |2/3 - .8| = 0.1333
    y = np.array([0, 0, 1, 1, 1, 0, np.nan])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.8, 1.0, 0.99])
    expected = 0.5 * abs(1 / 3 - 0.2) + 0.5 * abs(2 / 3 - 0.8)
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(expected)
    rel = reliability_curve(y, p, n_bins=2)
    np.testing.assert_array_equal(rel["count"], [3, 3])
    np.testing.assert_allclose(rel["observed"], [1 / 3, 2 / 3])
    np.testing.assert_allclose(rel["mean_predicted"], [0.2, 0.8])
    boot = PatientBootstrap(np.arange(7).astype(str), 50, 0)
    samples = bootstrap_ece(y, p, boot, n_bins=2)
    assert samples.shape == (50,) and np.all(samples >= 0)
    with pytest.raises(ValueError):
        expected_calibration_error(y, p, n_bins=0)


def test_reliability_curve_matches_sklearn_calibration_curve():
    y, p, keys = simulated(n=500, f=1, seed=30)
    rel = reliability_curve(y[:, 0], p[:, 0], n_bins=10)
    prob_true, prob_pred = calibration_curve(y[:, 0], p[:, 0], n_bins=10, strategy="uniform")
    nonempty = rel[rel["count"] > 0]
    np.testing.assert_allclose(nonempty["observed"], prob_true)
    np.testing.assert_allclose(nonempty["mean_predicted"], prob_pred)
    assert rel["count"].sum() == 500
    # bootstrap ECE under unit weights equals the point ECE (weighted-sum form is the same ECE)
    boot = PatientBootstrap(keys, 100, 0)
    weights = np.concatenate(list(boot.weights()))
    samples = bootstrap_ece(y[:, 0], p[:, 0], boot)
    idx = np.repeat(np.arange(len(y)), weights[0].astype(int))
    assert samples[0] == pytest.approx(expected_calibration_error(y[idx, 0], p[idx, 0]))
