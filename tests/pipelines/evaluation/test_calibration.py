"""Calibration: ECE by hand, reliability curves against scikit-learn, and the post-hoc maps
fitted on validation (a mis-scaled model's test ECE drops, the maps survive the card)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from pipelines.evaluation.bootstrap import PatientBootstrap
from pipelines.evaluation.calibration import (
    CalibrationMap,
    bias_corrected,
    bootstrap_ece,
    calibration_from_json,
    compare_ece,
    expected_calibration_error,
    fit_calibration,
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


def _miscaled(n: int, seed: int, scale: float = 3.0, shift: float = 1.0):
    """Labels drawn from true probabilities, and a model whose logits are those times
    ``scale`` plus ``shift`` (over-confident and too high: as a focal-loss model can be)."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(size=(n, 3)) * 1.5 - 1.5
    y = (rng.random((n, 3)) < 1 / (1 + np.exp(-true_logit))).astype(float)
    p = 1 / (1 + np.exp(-(scale * true_logit + shift)))
    return y, p, np.repeat(np.arange(n // 2), 2)[:n]


NAMES = ["a", "b", "c"]


@pytest.mark.parametrize("method", ["auto", "temperature", "platt", "isotonic"])
def test_calibration_fitted_on_validation_lowers_test_ece_of_a_mis_scaled_model(method):
    yv, pv, patients = _miscaled(600, seed=1)
    yt, pt, test_patients = _miscaled(2000, seed=2)
    cal = fit_calibration(yv, pv, patients, NAMES, method)
    assert cal.method in ("temperature", "platt", "isotonic")
    after = cal.apply(pt, NAMES)
    for f in range(3):
        before_ece = expected_calibration_error(yt[:, f], pt[:, f])
        after_ece = expected_calibration_error(yt[:, f], after[:, f])
        assert before_ece > 0.08 and after_ece < 0.5 * before_ece, (method, f)
    boot = PatientBootstrap(test_patients, 200, 0)
    compare = compare_ece(yt, pt, after, boot, NAMES)
    change = compare.change["macro"]
    assert change.upper < 0  # lower, with a paired CI that excludes no change
    for est in (compare.before["macro"], compare.after["macro"]):
        assert est.lower <= est.value <= est.upper


def test_auto_prefers_platt_for_a_shifted_model_and_keeps_a_calibrated_one():
    yv, pv, patients = _miscaled(800, seed=3)
    auto = fit_calibration(yv, pv, patients, NAMES, "auto")
    assert auto.method == "platt" and auto.cv_loss["platt"] < auto.cv_loss["none"]
    assert auto.maps["a"].a == pytest.approx(1 / 3, abs=0.08)  # undoes the x3 on the logit
    yc, pc, patients = _miscaled(800, seed=4, scale=1.0, shift=0.0)  # already calibrated
    kept = fit_calibration(yc, pc, patients, NAMES, "auto")
    assert kept.cv_loss["none"] <= kept.cv_loss["platt"] + 5.0  # within noise of the best
    calibrated = kept.apply(pc, NAMES)
    for f in range(3):
        assert expected_calibration_error(yc[:, f], calibrated[:, f]) < 0.05


def test_maps_round_trip_through_json_and_stay_monotone():
    yv, pv, patients = _miscaled(400, seed=5)
    grid = np.linspace(0, 1, 101)
    for method in ("temperature", "platt", "isotonic", "none"):
        cal = fit_calibration(yv, pv, patients, NAMES, method)
        back = calibration_from_json(json.loads(json.dumps(cal.to_json())))
        for name in NAMES:
            q = back.maps[name].apply(grid)
            np.testing.assert_allclose(q, cal.maps[name].apply(grid))
            assert np.all(np.diff(q) >= -1e-12) and q.min() >= 0 and q.max() <= 1
    assert CalibrationMap.from_json({"method": "none"}).apply(grid) is not None
    with pytest.raises(ValueError, match="unknown calibration method"):
        CalibrationMap.from_json({"method": "beta"})


def test_a_finding_with_one_class_on_validation_keeps_the_identity():
    yv, pv, patients = _miscaled(300, seed=6)
    yv[:, 1] = 0.0
    cal = fit_calibration(yv, pv, patients, NAMES, "platt")
    assert cal.maps["b"].method == "none" and cal.maps["a"].method == "platt"


def test_bias_corrected_ece_estimate_lies_in_its_interval():
    y, p, keys = simulated(n=300, f=1, seed=31)
    boot = PatientBootstrap(keys, 300, 0)
    value = expected_calibration_error(y[:, 0], p[:, 0])
    est = bias_corrected(value, bootstrap_ece(y[:, 0], p[:, 0], boot), 0.95, floor=0.0)
    assert 0 <= est.lower <= est.value <= est.upper
    assert est.value <= value  # the correction removes an upward bias


def test_auto_still_chooses_when_a_rare_finding_cannot_be_cross_validated():
    yv, pv, patients = _miscaled(400, seed=7)
    yv[:, 2] = 0.0
    yv[:2, 2] = 1.0  # two positives: most folds train on one class
    cal = fit_calibration(yv, pv, patients, NAMES, "auto")
    assert cal.method == "platt" and all(np.isfinite(v) for v in cal.cv_loss.values())
    assert cal.maps["c"].method == "platt"  # fitted on all of validation all the same
