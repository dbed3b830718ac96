"""Operating points: thresholds chosen on validation and applied to test."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluation.bootstrap import PatientBootstrap
from pipelines.evaluation.operating_points import (
    apply_thresholds,
    sensitivity_threshold,
    youden_threshold,
)
from tests.pipelines.evaluation.metric_data import simulated


def test_youden_threshold_is_brute_force_argmax():
    y, p, _ = simulated(n=200, f=1, seed=6, ties=True)
    y, p = y[:, 0], p[:, 0]
    t = youden_threshold(y, p)

    def j(th):
        pred = p >= th
        return pred[y == 1].mean() + (~pred[y == 0]).mean() - 1

    cands = np.unique(p)
    best = max(j(c) for c in cands)
    assert j(t) == pytest.approx(best)
    assert t == max(c for c in cands if j(c) == pytest.approx(best))
    assert youden_threshold(np.zeros(5), np.arange(5.0)) is None


def test_sensitivity_threshold_is_highest_reaching_target():
    y, p, _ = simulated(n=300, f=1, seed=12)
    y, p = y[:, 0], p[:, 0]
    t = sensitivity_threshold(y, p, 0.9)
    sens = lambda th: (p[y == 1] >= th).mean()  # noqa: E731
    assert sens(t) >= 0.9
    higher = np.unique(p[p > t])
    assert all(sens(h) < 0.9 for h in higher)
    with pytest.raises(ValueError):
        sensitivity_threshold(y, p, 0.0)


def test_thresholds_chosen_on_val_applied_to_test_by_hand():
    y_val, p_val, _ = simulated(n=300, f=2, seed=20)
    y_test, p_test, keys = simulated(n=250, f=2, seed=21, missing=0.1)
    y_test[:, 1] = 0.0  # not estimable on test: rates with no positives are undefined
    thr = [youden_threshold(y_val[:, f], p_val[:, f]) for f in range(2)]
    ops = apply_thresholds(y_test, p_test, thr, PatientBootstrap(keys, 300, 0), ["A", "B"], "j")
    a = ops[0]
    keep = ~np.isnan(y_test[:, 0])
    yy, pred = y_test[keep, 0] == 1, p_test[keep, 0] >= thr[0]
    tp, fp = int((yy & pred).sum()), int((~yy & pred).sum())
    tn, fn = int((~yy & ~pred).sum()), int((yy & ~pred).sum())
    assert (a.tp, a.fp, a.tn, a.fn) == (tp, fp, tn, fn)
    assert a.threshold == thr[0]
    assert a.sensitivity.value == pytest.approx(tp / (tp + fn))
    assert a.specificity.value == pytest.approx(tn / (tn + fp))
    assert a.ppv.value == pytest.approx(tp / (tp + fp))
    assert a.npv.value == pytest.approx(tn / (tn + fn))
    for e in (a.sensitivity, a.specificity, a.ppv, a.npv):
        assert e.lower <= e.value <= e.upper
    assert ops[1].sensitivity.value is None and ops[1].specificity.value is not None
    skipped = apply_thresholds(
        y_test, p_test, [None, 0.5], PatientBootstrap(keys, 20, 0), ["A", "B"], "j"
    )
    assert skipped[0].threshold is None and skipped[0].sensitivity.value is None
