"""export.parity: the figures, the tolerance check and the run over the test studies."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipelines.data import ShardDataset
from pipelines.errors import ExportError, ParityError
from pipelines.evaluation.metrics import macro_auroc
from pipelines.export.parity import check_parity, parity_figures, run_parity
from pipelines.export.stage import Tolerance
from pipelines.labels import FINDINGS
from pipelines.runners import Scores
from tests.pipelines.export.helpers import make_prepared


def test_parity_figures_against_independent_computation():
    rng = np.random.default_rng(1)
    labels = (rng.random((40, len(FINDINGS))) < 0.5).astype(np.float32)
    labels[:5, 0] = np.nan
    labels[:, 13] = 0.0  # one class only: not estimable, left out of the macro mean
    ref = rng.random((40, len(FINDINGS))).astype(np.float32)
    other = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1).astype(np.float32)
    fig = parity_figures(ref, other, labels)
    want_ref = np.mean(
        [roc_auc_score(labels[5:, 0], ref[5:, 0])]
        + [roc_auc_score(labels[:, j], ref[:, j]) for j in range(1, 13)]
    )
    assert fig["macro_auroc_eager"] == pytest.approx(want_ref, abs=1e-12)
    assert fig["max_abs_prob"] == pytest.approx(np.abs(ref - other).max(), abs=1e-7)
    assert fig["auroc_drop"] == pytest.approx(fig["macro_auroc_eager"] - fig["macro_auroc"])
    assert np.isnan(macro_auroc(np.zeros((4, 2)), np.zeros((4, 2))))


def test_check_parity_names_the_format_and_the_figure():
    tol = {
        "onnx": Tolerance(max_abs_prob=1e-4),
        "int8": Tolerance(max_abs_prob=0.05, max_auroc_drop=0.005),
    }
    ok = {"max_abs_prob": 1e-6, "auroc_drop": 0.0}
    check_parity({"onnx": ok}, tol)
    with pytest.raises(ParityError, match=r"onnx: max \|Δprobability\| 0\.002 > tolerance 0\.0001"):
        check_parity({"onnx": {"max_abs_prob": 2e-3, "auroc_drop": 0.0}}, tol)
    with pytest.raises(ParityError, match=r"int8: test macro AUROC drop 0\.0100 > tolerance"):
        check_parity({"onnx": ok, "int8": {"max_abs_prob": 0.01, "auroc_drop": 0.01}}, tol)
    with pytest.raises(ParityError, match="onnx: max"):  # NaN never passes
        check_parity({"onnx": {"max_abs_prob": float("nan"), "auroc_drop": 0.0}}, tol)
    gated = ok | {"max_ood_shift": 0.002}  # the gate's distances: 1e-3 by default
    with pytest.raises(ParityError, match=r"onnx: max Δ of the out-of-distribution distance"):
        check_parity({"onnx": gated}, tol)
    check_parity({"int8": gated}, tol | {"int8": Tolerance(max_abs_prob=0.05, max_ood_shift=0.5)})


def test_run_parity_compares_every_runner_with_the_reference_on_the_same_studies(tmp_path):
    make_prepared(tmp_path, counts={"test": 9})
    ds = ShardDataset(tmp_path, "test")

    def reference(frontal, lateral, has_lateral):
        probs = np.tile(frontal.mean(axis=(1, 2, 3))[:, None] / 255, (1, len(FINDINGS)))
        return Scores(probs, np.stack([frontal.std(axis=(1, 2, 3)), has_lateral * 2.0], 1))

    def shifted(frontal, lateral, has_lateral):
        ref = reference(frontal, lateral, has_lateral)
        return Scores(ref.probabilities + 0.01, ref.ood * 1.05)

    runners = {"same": reference, "off": shifted}
    figures, summary = run_parity(reference, runners, ds, 4, thresholds={"frontal": 50.0})
    assert figures["same"]["max_abs_prob"] == 0.0 and figures["same"]["auroc_drop"] == 0.0
    assert figures["off"]["max_abs_prob"] == pytest.approx(0.01, abs=1e-6)
    assert figures["same"]["max_ood_shift"] == 0.0  # as a share of the frontal threshold, 50:
    want = (0.05 * np.array([ds_std(ds), 0.0])).max() / 50  # the lateral view is not gated here
    assert figures["off"]["max_ood_shift"] == pytest.approx(want, rel=1e-4)
    assert summary["studies"] == 9 and summary["with_lateral"] == int(ds.has_lateral.sum())
    assert set(summary["seconds_per_study"]) == {"eager", "same", "off"}
    assert run_parity(reference, {}, ds, batch=4, limit=5)[1]["studies"] == 5
    with pytest.raises(ExportError, match="no test studies"):
        run_parity(reference, {}, ShardDataset(tmp_path, "val"), batch=4)


def ds_std(ds):
    """The largest per-study standard deviation of the frontal views (the stand-in distance)."""
    f = ds.get_batch(np.arange(len(ds)))["frontal"].numpy().astype(np.float64)
    return f.std(axis=(1, 2, 3)).max()


def test_changed_refusals_follow_the_gates_rule():
    """Only a lateral that was read is gated: a blank lateral's distance moving past its
    threshold changes no decision (the rule of pipelines.ood.refusals)."""
    probs, labels = np.full((2, 3), 0.5), np.array([[1, 0, 1], [0, 1, 0]], float)
    ref = np.array([[10.0, 10.0], [10.0, 10.0]])
    got = np.array([[10.0, 30.0], [10.0, 30.0]])  # both laterals now past 20
    thresholds = {"frontal": 20.0, "lateral": 20.0}
    fig = parity_figures(probs, probs, labels, (ref, got), thresholds, np.array([True, False]))
    assert fig["ood_refusals_changed"] == 1
    assert parity_figures(probs, probs, labels, (ref, got), thresholds)["ood_refusals_changed"] == 2
