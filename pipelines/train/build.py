"""What a training run is made of: the data and its loaders, the model, optimizer and schedule."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from pipelines.augment import AugmentParams, OnlineAugment, online_generator
from pipelines.coverage import label_coverage, untrained_by_coverage
from pipelines.data import INDEX_FILE, ShardDataset, make_loader
from pipelines.errors import UserError
from pipelines.losses import build_loss
from pipelines.model import PIXEL_MEAN, PIXEL_STD, build_model
from pipelines.runtime import Runtime
from pipelines.train.params import MIN_SIZE, TrainParams
from pipelines.train.trainer import Trainer

log = logging.getLogger("pipelines.train")


def build_scheduler(
    optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int
) -> LRScheduler:
    """Linear warm-up (from 1% of ``lr``) then cosine decay to ``min_lr_ratio * lr``, per step."""
    total = params.epochs * steps_per_epoch
    warmup = min(round(params.warmup_epochs * steps_per_epoch), total - 1)
    cosine = CosineAnnealingLR(
        optimizer, T_max=max(total - warmup, 1), eta_min=params.lr * params.min_lr_ratio
    )
    if warmup <= 0:
        return cosine
    linear = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


@dataclass
class TrainData:
    """The splits, their loaders and what the loop needs to know about them."""

    train: ShardDataset
    val: ShardDataset
    roots: list[str]  # the folders of the train split (prepared, augmented copies)
    size: int  # the model's input size
    batch: int  # studies per training batch per process
    train_loader: DataLoader
    val_loader: DataLoader
    generator: torch.Generator  # the train shuffle's (checkpointed)
    sampler: DistributedSampler | None  # under DDP (its epoch is set per epoch)


def _datasets(params: TrainParams) -> tuple[ShardDataset, ShardDataset, list[str]]:
    roots = [params.prepared]
    if params.augmented and (Path(params.augmented) / INDEX_FILE).is_file():
        roots.append(params.augmented)
    try:
        train_ds = ShardDataset(roots, "train", params.head())
        val_ds = ShardDataset(params.prepared, "val", params.head())
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    except ValueError as exc:
        raise UserError(f"train data: {exc}") from exc
    if len(train_ds) == 0:
        raise UserError(f"{params.prepared}: no studies in the train split")
    if len(val_ds) == 0:
        raise UserError(f"{params.prepared}: no studies in the val split")
    return train_ds, val_ds, roots


def build_data(params: TrainParams, rt: Runtime, seed: int) -> TrainData:
    """The train and val splits and their loaders (the train shuffle seeded by ``seed``).

    Raises:
        UserError: missing or empty splits, too few studies, no finding with enough labels,
            an input size below the minimum.
    """
    train_ds, val_ds, roots = _datasets(params)
    if len(untrained_findings(params, train_ds)) == len(train_ds.findings):
        raise UserError(
            f"{params.prepared}: no finding has {params.min_positives} labelled positive and "
            f"{params.min_negatives} negative training studies ({len(train_ds)} studies); "
            "add data or lower train.min_positives / train.min_negatives"
        )
    size = params.size or train_ds.size
    if size < MIN_SIZE:
        raise UserError(f"train: input size {size} px is below the minimum of {MIN_SIZE}")
    batch = min(params.batch_size, len(train_ds) // rt.world)
    if batch < 2:
        raise UserError(f"{params.prepared}: {len(train_ds)} train studies are too few to train")
    if batch < params.batch_size:
        log.warning(
            "train: batch size %d > studies per process; using %d", params.batch_size, batch
        )
    generator = torch.Generator().manual_seed(seed)
    if rt.distributed:
        sampler: Sampler[int] = DistributedSampler(
            train_ds, num_replicas=rt.world, rank=rt.rank, shuffle=True, seed=seed, drop_last=True
        )
    else:
        sampler = RandomSampler(train_ds, generator=generator)
    common = {"num_workers": params.workers, "pin_memory": rt.device.type == "cuda"}
    train_loader = make_loader(train_ds, batch, sampler=sampler, drop_last=True, **common)
    val_part = range(rt.rank, len(val_ds), rt.world)  # every study exactly once over the ranks
    val_loader = make_loader(val_ds, 2 * batch, sampler=val_part, **common)
    dist_sampler = sampler if isinstance(sampler, DistributedSampler) else None
    return TrainData(
        train_ds, val_ds, roots, size, batch, train_loader, val_loader, generator, dist_sampler
    )


def build_trainer(
    params: TrainParams,
    data: TrainData,
    rt: Runtime,
    precision: str,
    seed: int,
    augment: AugmentParams | None = None,
) -> Trainer:
    """The model, AdamW, the schedule, the loss and (``online_augment``) the online policy."""
    model = build_model(params.model, len(params.head())).to(rt.device)
    if params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    trainer = Trainer(
        model,
        optimizer,
        build_scheduler(optimizer, params, len(data.train_loader)),
        build_loss(params.loss, params.focal_alpha, params.focal_gamma),
        rt.device,
        precision,
        data.size,
        params.channels_last,
        params.grad_clip,
        rt.rank,
        rt.world,
        findings=params.head(),
        untrained=frozenset(untrained_findings(params, data.train)),
    )
    if params.online_augment:
        trainer.augment = OnlineAugment(augment or AugmentParams()).to(rt.device)
        trainer.augment_generator = online_generator(seed, rt.rank, rt.device)
    return trainer


def untrained_findings(params: TrainParams, train: ShardDataset) -> dict[str, str]:
    """The head's findings the training split cannot teach, with the reasons."""
    coverage = label_coverage(train.labels, train.findings)
    return untrained_by_coverage(coverage, params.min_positives, params.min_negatives)


def model_meta(params: TrainParams, data: TrainData, seed: int, precision: str) -> dict:
    """The ``meta`` of the model files (what :func:`pipelines.model.load_model` returns).

    With the head's findings go their label coverage on the train and val splits and the
    findings training could not teach (:mod:`pipelines.coverage`).
    """
    head = list(params.head())
    coverage = {
        "train": label_coverage(data.train.labels, head),
        "val": label_coverage(data.val.labels, head),
    }
    return {
        "model_params": params.model.model_dump(),
        "findings": head,
        "label_coverage": coverage,
        "untrained": untrained_findings(params, data.train),
        "size": data.size,
        "prepared_size": data.train.size,
        "pixel_mean": PIXEL_MEAN,
        "pixel_std": PIXEL_STD,
        "precision": precision,
        "seed": seed,
        "train": params.model_dump(),
        "torch": str(torch.__version__),
    }
