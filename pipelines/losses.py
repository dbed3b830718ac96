"""Multi-label losses with unknown labels (NaN) masked out: sigmoid focal loss and BCE.

The per-element terms come from the libraries (:func:`torchvision.ops.sigmoid_focal_loss`,
:func:`torch.nn.functional.binary_cross_entropy_with_logits`); this module only masks the NaN
labels (their term is replaced by an exact zero, so they add neither loss nor gradient) and
averages over the labels that are known. The loss is computed in float32 (float64 stays float64)
whatever the autocast precision of the logits.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss

Reduction = Literal["mean", "sum", "none"]


def _masked_reduce(terms: torch.Tensor, known: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    terms = torch.where(known, terms, torch.zeros_like(terms))
    if reduction == "none":
        return terms
    total = terms.sum()
    if reduction == "sum":
        return total
    return total / known.sum().clamp(min=1)  # no known label: 0, with a zero gradient


def _prepare(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits in >= float32, targets with NaN -> 0 in the same dtype, mask of known labels)."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    known = ~torch.isnan(targets)
    filled = torch.where(known, targets, torch.zeros_like(targets)).to(logits.dtype)
    return logits, filled, known


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017) with NaN targets ignored.

    ``FL = -a_t (1 - p_t)^gamma log(p_t)`` per known label; ``mean`` divides by the number of
    known labels (not by the batch size).

    Args:
        logits: (B, F) raw scores.
        targets: (B, F) 1 / 0 / NaN (unknown: contributes nothing).
        alpha: weight of positives in (0, 1); ``None`` for no class weighting.
        gamma: focusing exponent (0 gives BCE, up to ``alpha`` weighting).
        reduction: ``mean`` (over known labels), ``sum`` or ``none`` (zeros where unknown).

    Raises:
        ValueError: shapes differ.
    """
    logits, filled, known = _prepare(logits, targets)
    terms = _tv_sigmoid_focal_loss(
        logits,
        filled,
        alpha=-1.0 if alpha is None else alpha,
        gamma=gamma,
        reduction="none",
    )
    return _masked_reduce(terms, known, reduction)


def masked_bce_with_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Binary cross-entropy on logits with NaN targets ignored (``mean`` over known labels).

    Raises:
        ValueError: shapes differ.
    """
    logits, filled, known = _prepare(logits, targets)
    terms = F.binary_cross_entropy_with_logits(
        logits,
        filled,
        pos_weight=pos_weight,
        reduction="none",
    )
    return _masked_reduce(terms, known, reduction)


class FocalLoss(nn.Module):
    """Module form of :func:`sigmoid_focal_loss`."""

    def __init__(
        self, alpha: float | None = 0.25, gamma: float = 2.0, reduction: Reduction = "mean"
    ):
        super().__init__()
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma, self.reduction)


class MaskedBCEWithLogitsLoss(nn.Module):
    """Module form of :func:`masked_bce_with_logits`."""

    def __init__(self, pos_weight: torch.Tensor | None = None, reduction: Reduction = "mean"):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return masked_bce_with_logits(logits, targets, self.pos_weight, self.reduction)


def build_loss(
    name: Literal["focal", "bce"], alpha: float | None = 0.25, gamma: float = 2.0
) -> nn.Module:
    """``focal`` -> :class:`FocalLoss`, ``bce`` -> :class:`MaskedBCEWithLogitsLoss`.

    Raises:
        ValueError: unknown name.
    """
    if name == "focal":
        return FocalLoss(alpha, gamma)
    if name == "bce":
        return MaskedBCEWithLogitsLoss()
    raise ValueError(f"unknown loss {name!r}; expected 'focal' or 'bce'")
