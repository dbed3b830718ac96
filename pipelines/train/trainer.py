"""The Trainer: one optimisation step, one training epoch, validation over every rank.

:class:`Trainer` holds what a step needs (model, optimizer, scheduler, loss, device, autocast
precision, GradScaler) and the one batch -> model inputs path (uint8 views to the device,
optional online augmentation, normalised and resized by :func:`pipelines.model.to_model_input`,
channels_last). Under DistributedDataParallel the epoch loss is averaged across ranks and
validation is gathered from every rank, so all ranks see the same figures.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm

from pipelines.evaluation.metrics import auroc_per_finding, mean_estimable
from pipelines.labels import FINDINGS
from pipelines.model import to_model_input


def val_auroc(
    labels: np.ndarray,
    scores: np.ndarray,
    names: Sequence[str] = FINDINGS,
    skip: Collection[str] = (),
) -> tuple[float, dict[str, float | None]]:
    """Validation macro AUROC and the per-finding AUROC (None where not estimable).

    Args:
        labels: (N, F) 1 / 0 / NaN.
        scores: (N, F) any monotone score (logits or probabilities).
        names: the F findings.
        skip: findings left out of the macro mean (not trained: :mod:`pipelines.coverage`).
    """
    per = auroc_per_finding(labels, scores)
    names = tuple(names)[: labels.shape[1]]
    by_name = {f: None if np.isnan(v) else float(v) for f, v in zip(names, per, strict=True)}
    kept = [v for f, v in zip(names, per, strict=True) if f not in skip]
    return mean_estimable(np.asarray(kept, dtype=np.float64)), by_name


@dataclass
class EpochStats:
    """One training pass: mean loss over pairs, pairs seen (all ranks) and its wall time."""

    loss: float
    pairs: int
    seconds: float

    @property
    def pairs_per_s(self) -> float:
        """Training throughput (0 for an instant pass)."""
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Trainer:
    """Everything a training or validation step needs, with the one batch -> inputs path."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    loss_fn: nn.Module
    device: torch.device
    precision: str = "fp32"
    size: int | None = None
    channels_last: bool = True
    grad_clip: float = 0.0
    rank: int = 0
    world: int = 1
    augment: nn.Module | None = None  # online augmentation of training batches (uint8 in)
    augment_generator: torch.Generator | None = None  # its draws, on ``device``
    findings: tuple[str, ...] = FINDINGS  # the head's outputs (their validation AUROC names)
    untrained: frozenset[str] = frozenset()  # left out of the validation macro AUROC
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    @property
    def net(self) -> nn.Module:
        """The bare model (unwrapped from DistributedDataParallel)."""
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    def distribute(self) -> None:
        """Wrap the model in DistributedDataParallel (the process group must be joined)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.model = DistributedDataParallel(self.model, device_ids=ids)

    def autocast(self) -> AbstractContextManager:
        """The autocast context for this precision (none for fp32)."""
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def inputs(
        self, batch: dict[str, torch.Tensor], augment: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """uint8 batch -> normalised, resized (channels_last) views, mask and labels on device.

        With ``augment`` and an online policy, each view is augmented first (a missing lateral
        stays blank); validation never asks for it.
        """
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        has_lateral = batch["has_lateral"].to(self.device, non_blocking=True)

        def view(key: str, mask: torch.Tensor | None = None) -> torch.Tensor:
            x = batch[key].to(self.device, non_blocking=True)
            if augment and self.augment is not None:
                x = self.augment(x, mask, self.augment_generator)
                x = x * 255.0  # [0, 1] floats back to the uint8 scale
            return to_model_input(x, self.size).contiguous(memory_format=fmt)

        frontal = view("frontal")
        frontal_only = getattr(self.net, "fusion", None) == "frontal"
        lateral = frontal if frontal_only else view("lateral", has_lateral.bool())
        labels = batch["labels"].to(self.device, non_blocking=True)
        return frontal, lateral, has_lateral, labels

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimisation step; returns the (detached) loss."""
        frontal, lateral, has_lateral, labels = self.inputs(batch, augment=True)
        with self.autocast():
            logits = self.model(frontal, lateral, has_lateral)
        loss = self.loss_fn(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach()

    def train_epoch(
        self, loader: Iterable[dict], desc: str = "", progress: bool = False
    ) -> EpochStats:
        """One pass over ``loader``; the loss is averaged over pairs and across ranks."""
        self.model.train()
        total = torch.zeros((), device=self.device)
        pairs = 0
        start = time.perf_counter()
        bar = tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False)
        for i, batch in enumerate(bar):
            n = len(batch["labels"])
            total += self.step(batch) * n
            pairs += n
            if progress and i % 10 == 0:
                bar.set_postfix(loss=f"{total.item() / pairs:.4f}", refresh=False)
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        counts = torch.tensor([total.item(), float(pairs)], dtype=torch.float64)
        if self.world > 1:
            counts = counts.to(self.device)
            dist.all_reduce(counts)
        loss_sum, n_pairs = counts.tolist()
        return EpochStats(loss_sum / max(n_pairs, 1), int(n_pairs), seconds)

    @torch.no_grad()
    def predict(self, loader: Iterable[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices, logits, labels) of this rank's share of ``loader``, in eval mode."""
        net = self.net.eval()
        idx, logits, labels = [], [], []
        for batch in loader:
            frontal, lateral, has_lateral, y = self.inputs(batch)
            with self.autocast():
                out = net(frontal, lateral, has_lateral)
            idx.append(batch["index"].numpy())
            logits.append(out.float().cpu().numpy())
            labels.append(y.cpu().numpy())
        if not idx:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros((0, 0))
        return np.concatenate(idx), np.concatenate(logits), np.concatenate(labels)

    def validate(self, loader: Iterable[dict]) -> dict[str, Any]:
        """Validation loss and AUROC over the whole split (gathered from every rank).

        Under DDP the batch-norm running statistics of rank 0 are broadcast first (DDP only
        syncs buffers at the start of a training forward), so every rank scores with the model
        that rank 0 saves.
        """
        if self.world > 1:
            for buffer in self.net.buffers():
                dist.broadcast(buffer, src=0)
        idx, logits, labels = self.predict(loader)
        if self.world > 1:
            parts: list[Any] = [None] * self.world
            dist.all_gather_object(parts, (idx, logits, labels))
            parts = [p for p in parts if len(p[0])]
            idx, logits, labels = (np.concatenate([p[k] for p in parts]) for k in range(3))
        order = np.argsort(idx, kind="stable")
        logits, labels = logits[order], labels[order]
        loss = float(self.loss_fn(torch.from_numpy(logits), torch.from_numpy(labels)))
        macro, per = val_auroc(labels, logits, self.findings, self.untrained)
        return {"loss": loss, "macro_auroc": macro, "auroc": per, "pairs": len(idx)}
