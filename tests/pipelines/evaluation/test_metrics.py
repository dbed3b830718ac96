"""Discrimination metrics: point estimates against scikit-learn, CIs, the paired comparison."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from pipelines.evaluation.bootstrap import Estimate, PatientBootstrap, percentile_interval
from pipelines.evaluation.metrics import (
    NOT_ESTIMABLE,
    auprc_per_finding,
    auroc_per_finding,
    bootstrap_micro_auroc,
    bootstrap_rank_metrics,
    compute_roc_auc,
    micro_auroc,
    paired_auroc_difference,
    verdict_of,
)
from tests.pipelines.evaluation.metric_data import auroc_replicates, simulated


def test_point_estimates_match_sklearn_with_nan_excluded():
    y, p, _ = simulated(n=300, f=4, seed=7, missing=0.25)
    auc, ap = auroc_per_finding(y, p), auprc_per_finding(y, p)
    for f in range(4):
        keep = ~np.isnan(y[:, f])
        assert auc[f] == pytest.approx(roc_auc_score(y[keep, f], p[keep, f]), abs=1e-12)
        assert ap[f] == pytest.approx(average_precision_score(y[keep, f], p[keep, f]), abs=1e-12)
    keep = ~np.isnan(y)
    assert micro_auroc(y, p) == pytest.approx(roc_auc_score(y[keep], p[keep]), abs=1e-12)


def test_labels_other_than_binary_rejected():
    with pytest.raises(ValueError, match="1, 0 or NaN"):
        auroc_per_finding(np.array([[2.0], [0.0]]), np.array([[0.1], [0.2]]))
    with pytest.raises(ValueError, match="NaN"):
        auroc_per_finding(np.array([[1.0], [0.0]]), np.array([[np.nan], [0.2]]))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("missing", [0.0, 0.1])
def test_vectorised_bootstrap_equals_sklearn_loop_over_the_same_resamples(ties, missing):
    y, p, keys = simulated(n=120, f=2, seed=9, ties=ties, missing=missing)
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
        lo, hi = percentile_interval(auroc_replicates(yy, pp, PatientBootstrap(keys, 1000, 0)))
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
        lo, hi = percentile_interval(auroc_replicates(y[:, None], score[:, None], boot), 0.95)
        hits.append(lo[0] <= true_auc <= hi[0])
    coverage = float(np.mean(hits))
    assert 0.90 <= coverage <= 0.98, coverage


def test_one_class_finding_is_not_estimable_and_left_out_of_macro():
    y, p, keys = simulated(n=200, f=3, seed=2)
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
    y, p, keys = simulated(n=400, f=2, seed=8, missing=0.1)
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
    sa, sb = auroc_replicates(y, p_a, boot), auroc_replicates(y, p_b, boot)
    lo, hi = percentile_interval(sa - sb)
    assert diffs[0].delta.lower == pytest.approx(lo[0]) and diffs[2].delta.upper == hi[2]


def test_verdict_of():
    assert verdict_of(Estimate(0.05, 0.01, 0.09)) == "helps"
    assert verdict_of(Estimate(-0.05, -0.09, -0.01)) == "hurts"
    assert verdict_of(Estimate(0.01, -0.02, 0.04)) == "neutral"
    assert verdict_of(Estimate(None, None, None)) == "not estimable"
