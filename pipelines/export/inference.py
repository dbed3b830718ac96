"""The one inference module every format exports, its example inputs and the eager reference.

:class:`CXRInference` wraps the trained two-branch model: frontal and lateral views (uint8
values, (B, 1, S, S), S = the prepared image size) and a ``has_lateral`` mask (B,) bool in,
probabilities (B, F) out; normalisation and resizing happen inside
(:func:`pipelines.model.to_model_input`). Frontal-only use passes ``has_lateral=False`` (the
lateral pixels are then ignored).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipelines.data import ShardDataset
from pipelines.model import to_model_input
from pipelines.runners import Runner


class CXRInference(nn.Module):
    """uint8-valued views + lateral mask -> probabilities: the one module every format exports.

    Args:
        model: the trained model (``model(frontal, lateral, has_lateral) -> logits``), eval mode.
        size: the model's input size (``meta["size"]``); inputs of another size are resized
            inside by :func:`pipelines.model.to_model_input`.
    """

    def __init__(self, model: nn.Module, size: int | None = None):
        super().__init__()
        self.model = model.eval()
        self.size = size

    def forward(
        self, frontal: torch.Tensor, lateral: torch.Tensor, has_lateral: torch.Tensor
    ) -> torch.Tensor:
        """frontal, lateral: uint8 (or uint8-valued float) (B, 1, S, S); has_lateral: (B,) bool."""
        logits = self.model(
            to_model_input(frontal, self.size),
            to_model_input(lateral, self.size),
            has_lateral.to(torch.bool),
        )
        return torch.sigmoid(logits.float())


def example_inputs(size: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic uint8 views and a mixed lateral mask for tracing/exporting."""
    g = torch.Generator().manual_seed(0)
    frontal = torch.randint(0, 256, (batch, 1, size, size), generator=g, dtype=torch.uint8)
    lateral = torch.randint(0, 256, (batch, 1, size, size), generator=g, dtype=torch.uint8)
    has_lateral = torch.arange(batch) % 2 == 0
    return frontal, lateral, has_lateral


def eager_runner(module: nn.Module) -> Runner:
    """The eager module as a numpy runner (the parity reference)."""

    def run(frontal: np.ndarray, lateral: np.ndarray, has_lateral: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(
                torch.from_numpy(np.ascontiguousarray(frontal)),
                torch.from_numpy(np.ascontiguousarray(lateral)),
                torch.from_numpy(np.ascontiguousarray(has_lateral, dtype=bool)),
            )
        return out.float().numpy()

    return run


def stack_studies(
    dataset: ShardDataset, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 views, lateral mask and labels of some studies, as numpy batches.

    Args:
        dataset: the studies (a :class:`ShardDataset`, or any dataset of such samples).
        indices: which ones.

    Returns:
        frontal (N, 1, S, S) uint8, lateral (N, 1, S, S) uint8, has_lateral (N,) bool,
        labels (N, F).
    """
    if hasattr(dataset, "get_batch"):
        batch = dataset.get_batch(indices)
        keys = ("frontal", "lateral", "has_lateral", "labels")
        frontal, lateral, has_lateral, labels = (batch[k].numpy() for k in keys)
        return frontal, lateral, has_lateral.astype(bool), labels
    samples = [dataset[int(i)] for i in indices]
    frontal = np.stack([s["frontal"].numpy() for s in samples])
    lateral = np.stack([s["lateral"].numpy() for s in samples])
    has_lateral = np.array([bool(s["has_lateral"]) for s in samples])
    labels = np.stack([s["labels"].numpy() for s in samples])
    return frontal, lateral, has_lateral, labels
