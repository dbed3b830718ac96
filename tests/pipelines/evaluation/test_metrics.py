"""Metrics against independent computations: scikit-learn, hand counts, brute force, simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, roc_auc_score

from pipelines.evaluation.metrics import (
    NOT_ESTIMABLE,
    Estimate,
    PatientBootstrap,
    apply_thresholds,
    auprc_per_finding,
    auroc_per_finding,
    bootstrap_ece,
    bootstrap_micro_auroc,
    bootstrap_rank_metrics,
    compute_roc_auc,
    expected_calibration_error,
    micro_auroc,
    paired_auroc_difference,
    percentile_interval,
    reliability_curve,
    sensitivity_threshold,
    verdict_of,
    youden_threshold,
)


def _data(n=240, f=3, seed=0, ties=False, missing=0.0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, f)) < 0.3).astype(np.float64)
    p = 1 / (1 + np.exp(-(rng.normal(size=(n, f)) + 1.2 * y)))
    if ties:
        p = np.round(p, 1)
    if missing:
        y[rng.random((n, f)) < missing] = np.nan
    keys = rng.integers(0, n // 2, n).astype(str)
    return y, p, keys


# ------------------------------------------------------------------ weighted rank statistics


def _auroc_replicates(y, p, boot):
    return bootstrap_rank_metrics(y, p, boot)[0]


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


# ------------------------------------------------------------------ point estimates


def test_point_estimates_match_sklearn_with_nan_excluded():
    y, p, _ = _data(n=300, f=4, seed=7, missing=0.25)
    auc, ap = auroc_per_finding(y, p), auprc_per_finding(y, p)
    for f in range(4):
        keep = ~np.isnan(y[:, f])
        assert auc[f] == pytest.approx(roc_auc_score(y[keep, f], p[keep, f]), abs=1e-12)
        assert ap[f] == pytest.approx(average_precision_score(y[keep, f], p[keep, f]), abs=1e-12)
    keep = ~np.isnan(y)
    assert micro_auroc(y, p) == pytest.approx(roc_auc_score(y[keep], p[keep]), abs=1e-12)


def test_fixed_data_auroc_by_hand():
    # positives 0.8, 0.4 vs negatives 0.1, 0.4, 0.6: 0.8 wins 3 pairs; 0.4 wins 1, ties 1 (0.5)
    # and loses 1 -> (3 + 1.5) / 6
    y = np.array([[1, 1, 0, 0, 0]], dtype=float).T
    p = np.array([[0.8, 0.4, 0.1, 0.4, 0.6]]).T
    assert auroc_per_finding(y, p)[0] == pytest.approx(4.5 / 6)
    # one patient holds every study: each resample draws them all once (unit weights)
    auc = _auroc_replicates(y, p, PatientBootstrap(["a"] * 5, n_resamples=3, seed=0))
    np.testing.assert_allclose(auc, 4.5 / 6)


def test_labels_other_than_binary_rejected():
    with pytest.raises(ValueError, match="1, 0 or NaN"):
        auroc_per_finding(np.array([[2.0], [0.0]]), np.array([[0.1], [0.2]]))
    with pytest.raises(ValueError, match="NaN"):
        auroc_per_finding(np.array([[1.0], [0.0]]), np.array([[np.nan], [0.2]]))


# ------------------------------------------------------------------ bootstrap structure


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
    y, p, keys = _data(seed=1)
    a = _auroc_replicates(y, p, PatientBootstrap(keys, 150, seed=4))
    b = _auroc_replicates(y, p, PatientBootstrap(keys, 150, seed=4))
    c = _auroc_replicates(y, p, PatientBootstrap(keys, 150, seed=5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (150, 3)
    serial = _auroc_replicates(y, p, PatientBootstrap(keys, 150, seed=4, threads=1))
    threaded = _auroc_replicates(y, p, PatientBootstrap(keys, 150, seed=4, threads=3))
    np.testing.assert_array_equal(serial, threaded)
    np.testing.assert_array_equal(serial, a)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("missing", [0.0, 0.1])
def test_vectorised_bootstrap_equals_sklearn_loop_over_the_same_resamples(ties, missing):
    y, p, keys = _data(n=120, f=2, seed=9, ties=ties, missing=missing)
    boot = PatientBootstrap(keys, n_resamples=40, seed=3)
    auc_s, ap_s = bootstrap_rank_metrics(y, p, boot)
    weights = np.concatenate(list(boot.weights()))
    for b in range(len(weights)):
        idx = np.repeat(np.arange(len(y)), weights[b].astype(int))
        for f in range(2):
            yy, pp = y[idx, f], p[idx, f]
            keep = ~np.isnan(yy)
            if len(np.unique(yy[keep])) < 2:
                assert np.isnan(auc_s[b, f])
                continue
            assert auc_s[b, f] == pytest.approx(roc_auc_score(yy[keep], pp[keep]), abs=1e-12)
            assert ap_s[b, f] == pytest.approx(
                average_precision_score(yy[keep], pp[keep]), abs=1e-12
            )
    micro = bootstrap_micro_auroc(y, p, boot)
    idx = np.repeat(np.arange(len(y)), weights[0].astype(int))
    keep = ~np.isnan(y[idx])
    assert micro[0] == pytest.approx(roc_auc_score(y[idx][keep], p[idx][keep]), abs=1e-12)


def test_patient_bootstrap_of_duplicated_images_differs_from_image_bootstrap():
    """Two identical images per patient: the image-level bootstrap treats them as independent
    evidence and gives a CI ~1/sqrt(2) as wide; the patient bootstrap gives exactly the CI of
    the one-image-per-patient data."""
    rng = np.random.default_rng(11)
    n = 300
    y = (rng.random(n) < 0.35).astype(float)[:, None]
    p = rng.normal(size=(n, 1)) + 0.8 * y
    patients = np.array([f"p{i}" for i in range(n)])
    y2, p2, keys2 = np.repeat(y, 2, 0), np.repeat(p, 2, 0), np.repeat(patients, 2)

    def width(yy, pp, keys):
        lo, hi = percentile_interval(_auroc_replicates(yy, pp, PatientBootstrap(keys, 1000, 0)))
        return float(hi[0] - lo[0])

    single = width(y, p, patients)
    by_patient = width(y2, p2, keys2)
    by_image = width(y2, p2, np.arange(2 * n).astype(str))
    assert by_patient == pytest.approx(single, abs=1e-12)
    assert by_image / by_patient < 0.85  # ~0.71 expected


def test_bootstrap_ci_covers_true_auroc_at_nominal_rate():
    """200 simulated test sets with a known binormal AUROC and clustered studies.

    Each patient has 1-3 studies sharing the label (a chronic finding) and a random effect, so
    a patient's studies are strongly correlated: resampling images would under-cover here
    (0.88-0.92 over a few seeds), resampling patients should not (0.93-0.94).
    """
    d, sigma_u, n_patients, prevalence = 1.0, 0.7, 120, 0.3
    true_auc = norm.cdf(d / np.sqrt(2 * (1 + sigma_u**2)))  # every pos/neg pair spans 2 patients
    hits = []
    rng = np.random.default_rng(2024)
    for s in range(200):
        per = rng.integers(1, 4, n_patients)
        patient = np.repeat(np.arange(n_patients), per)
        u = rng.normal(0, sigma_u, n_patients)[patient]
        y = (rng.random(n_patients) < prevalence).astype(float)[patient]
        score = d * y + u + rng.normal(size=len(patient))
        boot = PatientBootstrap(patient, n_resamples=400, seed=s)
        lo, hi = percentile_interval(_auroc_replicates(y[:, None], score[:, None], boot), 0.95)
        hits.append(lo[0] <= true_auc <= hi[0])
    coverage = float(np.mean(hits))
    assert 0.90 <= coverage <= 0.98, coverage


# ------------------------------------------------------------------ reports and statuses


def test_one_class_finding_is_not_estimable_and_left_out_of_macro():
    y, p, keys = _data(n=200, f=3, seed=2)
    y[:, 1] = 0.0  # no positives
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 1.0)  # no negatives
    report = compute_roc_auc(y, p, PatientBootstrap(keys, 200, 0), ["A", "B", "C"])
    a, b, c = report.findings
    assert a.status == "ok" and a.auroc.value is not None
    for f in (b, c):
        assert f.status == NOT_ESTIMABLE
        assert f.auroc.value is None and f.auroc.lower is None and f.auprc.value is None
        assert f.auroc.format() == "not estimable"
    assert b.n_pos == 0 and b.n_neg == 200 and c.n_neg == 0
    assert report.macro_auroc.value == pytest.approx(a.auroc.value)
    none = compute_roc_auc(y[:, 1:], p[:, 1:], PatientBootstrap(keys, 20, 0), ["B", "C"])
    assert none.macro_auroc == Estimate(None, None, None)  # no estimable finding: no macro


def test_compute_roc_auc_values_and_intervals():
    y, p, keys = _data(n=400, f=2, seed=8, missing=0.1)
    report = compute_roc_auc(y, p, PatientBootstrap(keys, 300, 1), ["A", "B"], level=0.9)
    auc = auroc_per_finding(y, p)
    for f, row in enumerate(report.findings):
        assert row.auroc.value == pytest.approx(auc[f])
        assert row.auroc.lower < row.auroc.value < row.auroc.upper
        assert row.n_pos + row.n_neg + row.n_missing == 400
        assert row.prevalence == pytest.approx(np.nanmean(y[:, f]))
    assert report.macro_auroc.value == pytest.approx(auc.mean())
    keep = ~np.isnan(y)
    assert report.micro_auroc.value == pytest.approx(roc_auc_score(y[keep], p[keep]))
    assert report.n_patients == len(np.unique(keys))
    assert [row.finding for row in report.findings] == ["A", "B"]


def test_percentile_interval_matches_numpy_quantile():
    s = np.random.default_rng(0).normal(size=(1000, 2))
    s[:10, 1] = np.nan
    lo, hi = percentile_interval(s, 0.9)
    assert lo[0] == pytest.approx(np.quantile(s[:, 0], 0.05))
    assert hi[1] == pytest.approx(np.quantile(s[10:, 1], 0.95))
    with pytest.raises(ValueError):
        percentile_interval(s, 1.5)


# ------------------------------------------------------------------ paired difference


def test_paired_difference_verdicts_and_values():
    rng = np.random.default_rng(3)
    n = 600
    y = (rng.random((n, 3)) < 0.4).astype(float)
    noise = rng.normal(size=(n, 3))
    p_b = noise + 0.5 * y  # "frontal only"
    p_a = p_b.copy()
    p_a[:, 0] += 1.5 * y[:, 0]  # strong extra signal: helps
    p_a[:, 2] = rng.normal(size=n)  # signal removed: hurts
    keys = rng.integers(0, 300, n).astype(str)
    boot = PatientBootstrap(keys, 400, 0)
    diffs, macro = paired_auroc_difference(y, p_a, p_b, boot, ["A", "B", "C"])
    assert [d.verdict for d in diffs] == ["helps", "neutral", "hurts"]
    b = diffs[1]
    assert b.delta.value == 0 and b.delta.lower == 0 and b.delta.upper == 0  # identical scores
    a_auc, b_auc = auroc_per_finding(y, p_a), auroc_per_finding(y, p_b)
    assert diffs[0].delta.value == pytest.approx(a_auc[0] - b_auc[0])
    assert macro.value == pytest.approx(a_auc.mean() - b_auc.mean())
    # the paired CI is exactly the percentile interval of per-resample differences
    sa, sb = _auroc_replicates(y, p_a, boot), _auroc_replicates(y, p_b, boot)
    lo, hi = percentile_interval(sa - sb)
    assert diffs[0].delta.lower == pytest.approx(lo[0]) and diffs[2].delta.upper == hi[2]


def test_estimate_format():
    assert Estimate(0.8123, 0.7741, 0.8452).format() == "0.812 (0.774–0.845)"
    assert Estimate(0.031, -0.025, 0.083).format() == "0.031 (-0.025 to 0.083)"
    assert Estimate(0.5, None, None).format(2) == "0.50"
    assert Estimate(None, None, None).format() == "not estimable"


def test_verdict_of():
    assert verdict_of(Estimate(0.05, 0.01, 0.09)) == "helps"
    assert verdict_of(Estimate(-0.05, -0.09, -0.01)) == "hurts"
    assert verdict_of(Estimate(0.01, -0.02, 0.04)) == "neutral"
    assert verdict_of(Estimate(None, None, None)) == "not estimable"


# ------------------------------------------------------------------ operating points


def test_youden_threshold_is_brute_force_argmax():
    y, p, _ = _data(n=200, f=1, seed=6, ties=True)
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
    y, p, _ = _data(n=300, f=1, seed=12)
    y, p = y[:, 0], p[:, 0]
    t = sensitivity_threshold(y, p, 0.9)
    sens = lambda th: (p[y == 1] >= th).mean()  # noqa: E731
    assert sens(t) >= 0.9
    higher = np.unique(p[p > t])
    assert all(sens(h) < 0.9 for h in higher)
    with pytest.raises(ValueError):
        sensitivity_threshold(y, p, 0.0)


def test_thresholds_chosen_on_val_applied_to_test_by_hand():
    y_val, p_val, _ = _data(n=300, f=2, seed=20)
    y_test, p_test, keys = _data(n=250, f=2, seed=21, missing=0.1)
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


# ------------------------------------------------------------------ calibration


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
    y, p, keys = _data(n=500, f=1, seed=30)
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
