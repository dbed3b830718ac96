"""The one inference module every format exports, its example inputs and the eager reference.

:class:`CXRInference` wraps the trained two-branch model: frontal and lateral views (uint8
values, (B, 1, S, S), S = the prepared image size) and a ``has_lateral`` mask (B,) bool in,
probabilities (B, F) out, and with the out-of-distribution gate (:mod:`pipelines.ood`) a second
output, each view's distance to the training features; normalisation and resizing happen inside
(:func:`pipelines.model.to_model_input`). Frontal-only use passes ``has_lateral=False`` (the
lateral pixels are then ignored).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipelines.data import ShardDataset
from pipelines.model import to_model_input
from pipelines.ood import OodGate
from pipelines.runners import Runner, Scores


class CXRInference(nn.Module):
    """uint8-valued views + lateral mask -> probabilities (and the gate's distances): the one
    module every format exports.

    Args:
        model: the trained model, eval mode: ``view_features(frontal, lateral)`` and
            ``fuse(f, lat, present) -> logits`` (:class:`pipelines.model.DualViewDenseNet`).
        size: the model's input size (``meta["size"]``); inputs of another size are resized
            inside by :func:`pipelines.model.to_model_input`.
        gate: the out-of-distribution gate fitted by evaluate (:mod:`pipelines.ood`); with it
            the module has a second output, ``ood_distance`` (B, 2): each view's squared
            Mahalanobis distance to the training features (lateral 0 where none is read).
    """

    def __init__(self, model: nn.Module, size: int | None = None, gate: OodGate | None = None):
        super().__init__()
        self.model = model.eval()
        self.size = size
        self.gated = gate is not None
        self.gated_lateral = gate is not None and "lateral" in gate.views
        for view, g in (gate.views if gate is not None else {}).items():
            self.register_buffer(f"{view}_mean", torch.tensor(g.mean, dtype=torch.float32))
            self.register_buffer(f"{view}_factor", torch.tensor(g.factor, dtype=torch.float32))

    def forward(
        self, frontal: torch.Tensor, lateral: torch.Tensor, has_lateral: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """frontal, lateral: uint8 (or uint8-valued float) (B, 1, S, S); has_lateral: (B,) bool."""
        present = has_lateral.to(torch.bool)
        f, lat = self.model.view_features(
            to_model_input(frontal, self.size), to_model_input(lateral, self.size)
        )
        probs = torch.sigmoid(self.model.fuse(f, lat, present).float())
        if not self.gated:
            return probs
        d_frontal = self._distance(f, self.frontal_mean, self.frontal_factor)
        d_lateral = torch.zeros_like(d_frontal)
        if self.gated_lateral and lat is not None:
            d_lateral = self._distance(lat, self.lateral_mean, self.lateral_factor)
            d_lateral = d_lateral * present.to(d_lateral.dtype)
        return probs, torch.stack([d_frontal, d_lateral], dim=1)

    @staticmethod
    def _distance(x: torch.Tensor, mean: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        z = (x.float() - mean) @ factor
        return (z * z).sum(dim=1)


def example_inputs(size: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic uint8 views and a mixed lateral mask for tracing/exporting."""
    g = torch.Generator().manual_seed(0)
    frontal = torch.randint(0, 256, (batch, 1, size, size), generator=g, dtype=torch.uint8)
    lateral = torch.randint(0, 256, (batch, 1, size, size), generator=g, dtype=torch.uint8)
    has_lateral = torch.arange(batch) % 2 == 0
    return frontal, lateral, has_lateral


def eager_runner(module: nn.Module) -> Runner:
    """The eager module as a numpy runner (the parity reference)."""

    def run(frontal: np.ndarray, lateral: np.ndarray, has_lateral: np.ndarray) -> Scores:
        with torch.inference_mode():
            out = module(
                torch.from_numpy(np.ascontiguousarray(frontal)),
                torch.from_numpy(np.ascontiguousarray(lateral)),
                torch.from_numpy(np.ascontiguousarray(has_lateral, dtype=bool)),
            )
        return Scores.of(out)

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
