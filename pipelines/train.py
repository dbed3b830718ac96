"""train stage: the two-branch DenseNet-121 on the prepared shards, resumable, tracked, DDP-ready.

Reads the ``train`` split of ``data/prepared`` (plus ``data/augmented``'s offline copies when that
folder holds an index) and the ``val`` split of ``data/prepared``. Per epoch: one pass of AdamW
with a linear warm-up then cosine learning-rate schedule (per step), gradient clipping and
autocast (``precision``, see :func:`pipelines.runtime.resolve_precision`), then validation: loss
and macro AUROC (per finding over the known labels, findings without both classes left out).
The best epoch by validation macro AUROC is kept; training stops early after ``patience``
epochs without improvement. With ``online_augment`` every training batch is augmented on the
device first (:class:`pipelines.augment.OnlineAugment`).

Outputs (rank 0 only)::

    models/best.pt                  {"model": state_dict, "meta": {...}} (see pipelines.model)
    models/checkpoints/last.pt      everything needed to resume (persisted across DVC runs)
    models/checkpoints/best.pt      the best model so far (so a resumed run still has it)
    metrics/train.json              summary (best epoch, its AUROC per finding, pairs/s, ...)
    dvclive/train/                  dvclive metrics.json + plots/metrics/*.tsv, per epoch
    runs/train/                     TensorBoard event files, per epoch

Resume (``resume: true``) restores a :class:`pipelines.checkpoint.Checkpoint` from ``last.pt``
(model, optimizer, scheduler, scaler, the RNG states of every rank, the loop state), then
replays the logged history into fresh dvclive / TensorBoard logs, so a killed run continued to
the end matches an uninterrupted one.

Distributed: under ``torchrun --nproc_per_node=N -m pipelines.train`` each process takes
``LOCAL_RANK`` (:func:`pipelines.runtime.setup_runtime`); the model is wrapped in
DistributedDataParallel, the train split goes through a DistributedSampler, validation is split
across ranks and gathered so every rank computes the same AUROC (hence the same early-stopping
decision).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from pipelines.augment import AugmentParams, OnlineAugment, online_generator
from pipelines.checkpoint import (
    Checkpoint,
    CheckpointPaths,
    LoopState,
    plain_state_dict,
    rng_state,
    save_model_file,
    set_rng_state,
)
from pipelines.config import BaseParams, StageParams, load_params, parse_section
from pipelines.data import INDEX_FILE, ShardDataset, make_loader
from pipelines.errors import CheckpointError, ConfigError, UserError
from pipelines.io import atomic_path, write_json
from pipelines.labels import FINDINGS
from pipelines.losses import build_loss
from pipelines.model import PIXEL_MEAN, PIXEL_STD, ModelParams, build_model
from pipelines.runtime import Precision, Runtime, resolve_precision, seed_everything, setup_runtime
from pipelines.stage import run_stage
from pipelines.trainer import Trainer

log = logging.getLogger(__name__)

MIN_SIZE = 64  # DenseNet downsamples 32x; below 64 px a 1-sample batch-norm batch fails


class TrainParams(StageParams):
    """The ``train`` section of params.yaml (paths relative to the repo root)."""

    prepared: str = "data/prepared"
    augmented: str | None = "data/augmented"  # used when it holds an index.json
    out: str = "models"
    metrics: str = "metrics/train.json"
    live: str = "dvclive/train"
    tensorboard: str = "runs/train"
    # input px, resized on the fly; null = the prepared size
    size: int | None = Field(64, ge=MIN_SIZE, alias="image_size")
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(16, ge=2)
    lr: float = Field(2e-3, gt=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)  # cosine floor, as a share of lr
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    grad_clip: float = Field(1.0, ge=0)  # max grad L2 norm; 0 = off
    loss: Literal["focal", "bce"] = "focal"
    focal_alpha: float | None = 0.25
    focal_gamma: float = Field(2.0, ge=0)
    precision: Precision = "auto"
    channels_last: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = Field(0, ge=0)  # DataLoader workers per process
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0 = torch's default
    patience: int = Field(3, ge=0)  # epochs without improvement before stopping; 0 = never
    min_delta: float = Field(0.0, ge=0)
    deterministic: bool = True
    resume: bool = False
    progress: bool = True
    seed: int | None = None  # null = base.seed
    # apply the `augment` section's policy to every training batch on the device (fresh draws
    # each epoch; the augment stage's offline copies still join the train split when present)
    online_augment: bool = False
    model: ModelParams = ModelParams(view_dropout=0.2)


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


# ---------------------------------------------------------------------------------- building


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
        train_ds = ShardDataset(roots, "train")
        val_ds = ShardDataset(params.prepared, "val")
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
        UserError: missing or empty splits, too few studies, an input size below the minimum.
    """
    train_ds, val_ds, roots = _datasets(params)
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
    model = build_model(params.model, len(FINDINGS)).to(rt.device)
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
    )
    if params.online_augment:
        trainer.augment = OnlineAugment(augment or AugmentParams()).to(rt.device)
        trainer.augment_generator = online_generator(seed, rt.rank, rt.device)
    return trainer


def model_meta(params: TrainParams, data: TrainData, seed: int, precision: str) -> dict:
    """The ``meta`` of the model files (what :func:`pipelines.model.load_model` returns)."""
    return {
        "model_params": params.model.model_dump(),
        "findings": list(FINDINGS),
        "size": data.size,
        "prepared_size": data.train.size,
        "pixel_mean": PIXEL_MEAN,
        "pixel_std": PIXEL_STD,
        "precision": precision,
        "seed": seed,
        "train": params.model_dump(),
        "torch": str(torch.__version__),
    }


# ---------------------------------------------------------------------------------- resume


def _compatible(saved: dict[str, Any], params: TrainParams, path: Path) -> None:
    keys = ("model", "size", "batch_size", "lr", "loss", "epochs", "prepared", "augmented")
    now = params.model_dump()
    diff = [k for k in keys if saved.get(k) != now[k]]
    if diff:
        raise UserError(
            f"{path}: cannot resume: train params changed since the checkpoint ({', '.join(diff)});"
            " set train.resume: false to start over"
        )


def maybe_resume(
    params: TrainParams, trainer: Trainer, data: TrainData, rt: Runtime, paths: CheckpointPaths
) -> tuple[LoopState, int | None]:
    """Restore ``last.pt`` into the trainer when ``resume`` asks for it and it exists.

    A fresh start removes a previous run's best checkpoint (it must not leak into this run).

    Returns:
        The loop state to continue from and the epoch resumed after (None: a fresh start).

    Raises:
        UserError: the checkpoint was made with other train params.
        CheckpointError: the checkpoint cannot be read.
    """
    if params.resume and paths.last.is_file():
        ckpt = Checkpoint.load(paths.last)
        _compatible(ckpt.meta["train"], params, paths.last)
        trainer.net.load_state_dict(ckpt.model)
        trainer.optimizer.load_state_dict(ckpt.optimizer)
        trainer.scheduler.load_state_dict(ckpt.scheduler)
        trainer.scaler.load_state_dict(ckpt.scaler)
        if len(ckpt.rng) == rt.world:
            set_rng_state(ckpt.rng[rt.rank], data.generator, trainer.augment_generator)
        if rt.main:
            log.info("train: resuming from %s after epoch %d", paths.last, ckpt.loop.epochs_done)
        return ckpt.loop, ckpt.loop.epochs_done
    if params.resume and rt.main:
        log.info("train: resume asked but %s does not exist; starting fresh", paths.last)
    if rt.main:
        paths.best.unlink(missing_ok=True)
    return LoopState(), None


# ---------------------------------------------------------------------------------- epochs


class _Loggers:
    """dvclive + TensorBoard on rank 0, rebuilt from the run's history (so resume is seamless)."""

    def __init__(self, params: TrainParams, history: list[dict[str, Any]]):
        from dvclive import Live
        from torch.utils.tensorboard import SummaryWriter

        shutil.rmtree(params.tensorboard, ignore_errors=True)
        self.live = Live(dir=params.live, resume=False, dvcyaml=None, save_dvc_exp=False)
        self.tb = SummaryWriter(log_dir=params.tensorboard)
        for row in history:
            self.log(row)

    def log(self, row: dict[str, Any]) -> None:
        step = row["epoch"]
        self.live.step = step
        for key in ("train/loss", "val/loss", "val/macro_auroc", "lr", "train/pairs_per_s"):
            value = row[key]
            self.live.log_metric(key, value)
            self.tb.add_scalar(key, value, global_step=step)
        self.live.next_step()
        self.tb.flush()

    def close(self) -> None:
        self.live.end()
        self.tb.close()


def _improves(metric: float, best: float, min_delta: float, best_epoch: int) -> bool:
    """The first epoch is always the best so far; NaN (nothing scorable) never beats a number."""
    if best_epoch == 0:
        return True
    if math.isnan(metric):
        return False
    return math.isnan(best) or metric > best + min_delta


def run_epoch(
    trainer: Trainer, data: TrainData, params: TrainParams, state: LoopState, rt: Runtime
) -> tuple[dict[str, Any], bool]:
    """Train one epoch, validate, update ``state`` (best, early stop, history).

    Returns:
        The epoch's history row and whether it is the best so far.
    """
    epoch = state.epochs_done
    if data.sampler is not None:
        data.sampler.set_epoch(epoch)
    desc = f"epoch {epoch + 1}/{params.epochs}"
    stats = trainer.train_epoch(data.train_loader, desc, params.progress and rt.main)
    val = trainer.validate(data.val_loader)
    epoch += 1
    metric = val["macro_auroc"]
    improved = _improves(metric, state.best_metric, params.min_delta, state.best_epoch)
    if improved:
        state.best_metric, state.best_epoch, state.bad_epochs = metric, epoch, 0
    else:
        state.bad_epochs += 1
    state.epochs_done = epoch
    state.stopped_early = params.patience > 0 and state.bad_epochs >= params.patience
    row = {
        "epoch": epoch,
        "train/loss": stats.loss,
        "val/loss": val["loss"],
        "val/macro_auroc": metric,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "train/pairs_per_s": stats.pairs_per_s,
        "seconds": stats.seconds,
        "val_auroc": val["auroc"],
    }
    state.history.append(row)
    if rt.main:
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val macro AUROC %.4f, %.1f pairs/s%s",
            epoch,
            params.epochs,
            stats.loss,
            val["loss"],
            metric,
            stats.pairs_per_s,
            " (best)" if improved else "",
        )
    return row, improved


def save_epoch(
    trainer: Trainer,
    data: TrainData,
    state: LoopState,
    meta: dict[str, Any],
    improved: bool,
    paths: CheckpointPaths,
    rt: Runtime,
) -> None:
    """Gather every rank's RNG states; rank 0 writes the best model (if improved) and last.pt."""
    rngs = [rng_state(data.generator, trainer.augment_generator)]
    if rt.distributed:
        rngs = [None] * rt.world
        dist.all_gather_object(rngs, rng_state(data.generator, trainer.augment_generator))
    if not rt.main:
        return
    weights = plain_state_dict(trainer.net)
    if improved:
        row = state.history[-1]
        best = {"epoch": row["epoch"], "val_macro_auroc": row["val/macro_auroc"]}
        save_model_file(paths.best, weights, meta | best | {"val_auroc": row["val_auroc"]})
    Checkpoint(
        model=weights,
        optimizer=trainer.optimizer.state_dict(),
        scheduler=trainer.scheduler.state_dict(),
        scaler=trainer.scaler.state_dict(),
        rng=rngs,
        meta=meta,
        loop=state,
    ).save(paths.last)


# ---------------------------------------------------------------------------------- outputs


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def write_outputs(
    params: TrainParams,
    data: TrainData,
    state: LoopState,
    rt: Runtime,
    precision: str,
    resumed_from: int | None,
    started: float,
) -> dict[str, Any]:
    """Copy the best model to ``models/best.pt`` and write the summary (rank 0).

    Returns:
        The summary written to ``params.metrics``.

    Raises:
        CheckpointError: no best checkpoint to copy.
    """
    paths = CheckpointPaths(Path(params.out))
    if not paths.best.is_file():
        raise CheckpointError(f"{paths.best}: missing; cannot write {params.out}/best.pt")
    with atomic_path(paths.model) as tmp:
        shutil.copyfile(paths.best, tmp)
    history = state.history
    best_row = history[state.best_epoch - 1]
    speeds = [r["train/pairs_per_s"] for r in history]
    summary: dict[str, Any] = {
        "best_epoch": state.best_epoch,
        "val_macro_auroc": _finite(state.best_metric),
        "val_loss": best_row["val/loss"],
        "val_auroc": best_row["val_auroc"],
        "epochs_run": state.epochs_done,
        "stopped_early": state.stopped_early,
        "resumed_from_epoch": resumed_from,
        "train_pairs": len(data.train),
        "val_pairs": len(data.val),
        "size": data.size,
        "batch_size": data.batch,
        "world_size": rt.world,
        "precision": precision,
        "device": str(rt.device),
        "pairs_per_s": float(np.median(speeds)) if history else None,
        "seconds": time.perf_counter() - started,
    }
    write_json(params.metrics, summary)
    log.info(
        "train: best epoch %d, val macro AUROC %.4f; wrote %s",
        summary["best_epoch"],
        state.best_metric,
        paths.model,
    )
    return summary


# ---------------------------------------------------------------------------------- the stage


@dataclass
class TrainResult:
    """What :func:`train` returns: the summary written to ``metrics/train.json`` and the final
    (last-epoch, unwrapped) model of this rank."""

    summary: dict[str, Any]
    model: nn.Module


def train(params: TrainParams, seed: int, augment: AugmentParams | None = None) -> TrainResult:
    """Train (or resume), keep the best epoch by validation macro AUROC, write the outputs.

    Args:
        params: the ``train`` section.
        seed: the run's seed (``train.seed`` or ``base.seed``); rank r seeds with ``seed + r``.
        augment: the policy for ``params.online_augment`` (default: the augment defaults).

    Raises:
        UserError: missing or empty prepared data, a checkpoint that does not fit the params.
        CheckpointError: a weights file or checkpoint that cannot be read.
    """
    rt = setup_runtime(params.device)
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        return _train(params, seed, rt, augment)
    finally:  # leave the process as we found it (tests and notebooks call this in-process)
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[3:]
        if rt.owns_process_group:
            dist.destroy_process_group()


def _train(
    params: TrainParams, seed: int, rt: Runtime, augment: AugmentParams | None = None
) -> TrainResult:
    """The loop: data -> model and optimizer -> maybe resume -> epochs -> outputs."""
    started = time.perf_counter()
    if params.threads:
        torch.set_num_threads(params.threads)
    seed_everything(seed + rt.rank, params.deterministic)
    data = build_data(params, rt, seed)
    precision = resolve_precision(params.precision, rt.device)
    trainer = build_trainer(params, data, rt, precision, seed, augment)
    paths = CheckpointPaths(Path(params.out))
    state, resumed_from = maybe_resume(params, trainer, data, rt, paths)
    if rt.distributed:
        trainer.distribute()
    meta = model_meta(params, data, seed, precision)
    loggers = _Loggers(params, state.history) if rt.main else None
    if rt.main:
        log.info(
            "train: %d train pairs (%s), %d val pairs, %d px, batch %d x %d process(es), %s on %s",
            len(data.train),
            "+".join(data.roots),
            len(data.val),
            data.size,
            data.batch,
            rt.world,
            precision,
            rt.device,
        )

    while state.epochs_done < params.epochs and not state.stopped_early:
        row, improved = run_epoch(trainer, data, params, state, rt)
        save_epoch(trainer, data, state, meta, improved, paths, rt)
        if loggers is not None:
            loggers.log(row)

    summary: dict[str, Any] = {}
    if loggers is not None:
        loggers.close()
        summary = write_outputs(params, data, state, rt, precision, resumed_from, started)
    if rt.distributed:
        dist.barrier()
    return TrainResult(summary, trainer.net)


def main(argv: list[str] | None = None) -> None:
    """DVC entry point: ``python -m pipelines.train [--section NAME]`` (also under ``torchrun``).

    Reads ``base`` and the ``train`` section, or another section with the same schema (e.g.
    ``train_frontal`` for the frontal-only ablation, with its own ``out`` paths).
    """
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipelines.train")
    ap.add_argument("--section", default="train", help="params.yaml section (default: train)")
    args = ap.parse_args(argv)

    def go() -> dict[str, Any]:
        raw = load_params()
        if args.section != "train" and args.section not in raw:
            raise ConfigError(f"params.yaml: no section '{args.section}'")
        base = parse_section(BaseParams, "base", raw, "params.yaml")
        params = parse_section(TrainParams, args.section, raw, "params.yaml")
        seed = base.seed if params.seed is None else params.seed
        policy = parse_section(AugmentParams, "augment", raw, "params.yaml")
        return train(params, seed, policy if params.online_augment else None).summary

    run_stage(go)


if __name__ == "__main__":
    main()
