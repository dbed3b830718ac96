"""Focal loss and BCE against hand-written formulas; NaN labels add no loss and no gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.losses import (
    FocalLoss,
    MaskedBCEWithLogitsLoss,
    build_loss,
    masked_bce_with_logits,
    sigmoid_focal_loss,
)

LOGITS = np.array([[2.0, -1.0, 0.5, -3.0], [0.0, 1.5, -0.5, 4.0], [-2.0, 0.3, 1.0, -0.7]])
TARGETS = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])


def reference_focal(x: np.ndarray, y: np.ndarray, alpha: float | None, gamma: float) -> np.ndarray:
    """Per-element sigmoid focal loss, written out from Lin et al. (2017), in float64."""
    p = 1.0 / (1.0 + np.exp(-x))
    p_t = np.where(y == 1, p, 1 - p)
    a_t = 1.0 if alpha is None else np.where(y == 1, alpha, 1 - alpha)
    return -a_t * (1 - p_t) ** gamma * np.log(p_t)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 1.0), (None, 0.0), (0.9, 3.5)])
def test_focal_equals_reference_formula(alpha, gamma):
    got = sigmoid_focal_loss(torch.tensor(LOGITS), torch.tensor(TARGETS), alpha, gamma)
    want = reference_focal(LOGITS, TARGETS, alpha, gamma).mean()
    np.testing.assert_allclose(got.item(), want, rtol=1e-6)
    per = sigmoid_focal_loss(torch.tensor(LOGITS), torch.tensor(TARGETS), alpha, gamma, "none")
    np.testing.assert_allclose(per.numpy(), reference_focal(LOGITS, TARGETS, alpha, gamma), 1e-6)


def test_focal_matches_monai():
    from monai.losses import FocalLoss as MonaiFocal

    x, y = torch.tensor(LOGITS, dtype=torch.float32), torch.tensor(TARGETS, dtype=torch.float32)
    want = MonaiFocal(gamma=2.0, alpha=0.25, use_softmax=False, reduction="mean")(x, y)
    np.testing.assert_allclose(FocalLoss(0.25, 2.0)(x, y).item(), want.item(), rtol=1e-5)


def test_gamma_zero_without_alpha_is_bce():
    x, y = torch.tensor(LOGITS), torch.tensor(TARGETS)
    np.testing.assert_allclose(
        sigmoid_focal_loss(x, y, None, 0.0).item(),
        F.binary_cross_entropy_with_logits(x, y).item(),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    ("loss", "per_element"),
    [
        (FocalLoss(0.25, 2.0), lambda x, y: sigmoid_focal_loss(x, y, 0.25, 2.0, "none")),
        (MaskedBCEWithLogitsLoss(), lambda x, y: masked_bce_with_logits(x, y, reduction="none")),
    ],
)
def test_nan_labels_contribute_nothing(loss, per_element):
    y = torch.tensor(TARGETS)
    unknown = torch.zeros_like(y, dtype=torch.bool)
    unknown[0, 1] = unknown[1, 3] = unknown[2, 0] = True
    x = torch.tensor(LOGITS, requires_grad=True)
    got = loss(x, y.masked_fill(unknown, float("nan")))
    got.backward()

    per = per_element(torch.tensor(LOGITS), y)  # with every label known
    np.testing.assert_allclose(got.item(), per[~unknown].mean().item(), rtol=1e-6)
    assert torch.isfinite(x.grad).all()
    assert (x.grad[unknown] == 0).all()  # exactly no gradient through unknown labels
    assert (x.grad[~unknown] != 0).all()


def test_nan_labels_with_any_logit_value_change_nothing():
    y = torch.tensor([[1.0, float("nan")], [float("nan"), 0.0]])
    a = sigmoid_focal_loss(torch.tensor([[0.3, 50.0], [-80.0, -1.0]]), y)
    b = sigmoid_focal_loss(torch.tensor([[0.3, -7.0], [3.0, -1.0]]), y)
    assert a.item() == b.item()


@pytest.mark.parametrize("fn", [sigmoid_focal_loss, masked_bce_with_logits])
def test_all_labels_unknown_gives_zero_and_zero_gradient(fn):
    x = torch.randn(3, 4, requires_grad=True)
    loss = fn(x, torch.full((3, 4), float("nan")))
    loss.backward()
    assert loss.item() == 0.0
    assert (x.grad == 0).all()


def test_bce_equals_torch_on_known_labels():
    x, y = torch.tensor(LOGITS), torch.tensor(TARGETS)
    y_nan = y.clone()
    y_nan[1, 1] = float("nan")
    known = ~torch.isnan(y_nan)
    want = F.binary_cross_entropy_with_logits(x[known], y[known])
    np.testing.assert_allclose(masked_bce_with_logits(x, y_nan).item(), want.item(), rtol=1e-6)
    np.testing.assert_allclose(
        masked_bce_with_logits(x, y, reduction="sum").item(),
        F.binary_cross_entropy_with_logits(x, y, reduction="sum").item(),
        rtol=1e-6,
    )


def test_bf16_logits_are_scored_in_float32():
    x = torch.tensor(LOGITS, dtype=torch.bfloat16)
    got = sigmoid_focal_loss(x, torch.tensor(TARGETS, dtype=torch.float32))
    assert got.dtype == torch.float32
    want = reference_focal(x.float().double().numpy(), TARGETS, 0.25, 2.0).mean()
    np.testing.assert_allclose(got.item(), want, rtol=1e-5)


def test_shape_mismatch_and_unknown_name():
    with pytest.raises(ValueError, match="differ"):
        sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge")  # type: ignore[arg-type]
    assert isinstance(build_loss("focal", 0.5, 1.0), FocalLoss)
    assert isinstance(build_loss("bce"), MaskedBCEWithLogitsLoss)
