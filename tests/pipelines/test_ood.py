"""The out-of-distribution gate: fitted statistics, the validation tail, the refusal rule."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.ood import OodGate, fit_gate, refusals, tail_threshold

D = 16


def features(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.5, 2.0, D)
    return rng.normal(size=(n, D)) * scales + shift


@pytest.fixture(scope="module")
def gate() -> OodGate:
    train = {"frontal": features(2000, 0), "lateral": features(1500, 1)}
    val = {"frontal": features(800, 2), "lateral": features(600, 3)}
    return fit_gate(train, val, fit_refusal=0.02, shrinkage=0.0)


def test_distances_are_mahalanobis_and_in_distribution_refusals_near_the_target(gate):
    x = features(5, 9)
    mean = gate.views["frontal"].mean
    cov = np.cov(features(2000, 0), rowvar=False, bias=True)  # what ShrunkCovariance(0) fits
    want = np.einsum("ij,jk,ik->i", x - mean, np.linalg.inv(cov), x - mean)
    np.testing.assert_allclose(gate.views["frontal"].distances(x), want, rtol=1e-6)
    test = gate.distances(features(4000, 4), features(4000, 5))
    refused = [r is not None for r in refusals(test, np.ones(4000, bool), gate.thresholds())]
    assert 0.005 < np.mean(refused) < 0.05  # aimed at 2 %, split between the two views


def test_inputs_unlike_the_training_features_are_refused_with_the_view_named(gate):
    far = gate.distances(features(50, 6, shift=3.0), features(50, 7))
    reasons = refusals(far, np.ones(50, bool), gate.thresholds())
    assert all(r is not None and r.startswith("the frontal view is unlike") for r in reasons)


def test_a_lateral_not_read_is_not_gated(gate):
    d = np.array([[1.0, 1e9], [1.0, 1e9]])
    got = refusals(d, np.array([True, False]), gate.thresholds())
    assert got[0] is not None and "lateral" in got[0] and got[1] is None
    assert refusals(d, np.array([True, True]), {"frontal": 5.0}) == [None, None]  # no lateral gate


def test_tail_threshold_is_the_log_normal_quantile():
    rng = np.random.default_rng(0)
    d = np.exp(rng.normal(3.0, 0.5, 100_000))
    assert tail_threshold(d, 0.025) == pytest.approx(np.exp(3.0 + 1.95996 * 0.5), rel=0.01)


def test_save_and_load_give_the_same_gate(gate, tmp_path):
    gate.save(tmp_path / "gate.npz")
    back = OodGate.load(tmp_path / "gate.npz")
    assert back.thresholds() == gate.thresholds() and back.fit_refusal == 0.02
    x = features(7, 8)
    np.testing.assert_array_equal(back.distances(x, x), gate.distances(x, x))


def test_too_few_studies_to_fit():
    with pytest.raises(ValueError, match="too few studies with a lateral view"):
        fit_gate({"frontal": features(10, 0), "lateral": features(1, 1)},
                 {"frontal": features(10, 2), "lateral": features(10, 3)})  # fmt: skip
