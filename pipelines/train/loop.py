"""The training loop, top to bottom: data -> model -> maybe resume -> epochs -> outputs."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipelines.augment import AugmentParams
from pipelines.checkpoint import (
    Checkpoint,
    CheckpointPaths,
    LoopState,
    plain_state_dict,
    rng_state,
    save_model_file,
    set_rng_state,
)
from pipelines.errors import CheckpointError, UserError
from pipelines.io import atomic_path, write_metrics
from pipelines.runtime import Runtime, resolve_precision, seed_everything, setup_runtime
from pipelines.train.build import TrainData, build_data, build_trainer, model_meta
from pipelines.train.params import TrainParams
from pipelines.train.trainer import Trainer

log = logging.getLogger("pipelines.train")


def _compatible(saved: dict[str, Any], params: TrainParams, path: Path) -> None:
    keys = (
        "model",
        "size",
        "batch_size",
        "lr",
        "loss",
        "epochs",
        "prepared",
        "augmented",
        "findings",
    )
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


_SPEED = {"train/pairs_per_s"}


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
            self.tb.add_scalar(key, row[key], global_step=step)
            if key not in _SPEED:  # dvclive's files are DVC outputs: results only
                self.live.log_metric(key, row[key])
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


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def write_outputs(
    params: TrainParams,
    data: TrainData,
    state: LoopState,
    rt: Runtime,
    meta: dict[str, Any],
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
        "precision": meta["precision"],
        "device": str(rt.device),
        "findings": meta["findings"],
        "not_trained": meta["untrained"],
        "label_coverage": meta["label_coverage"],
        "pairs_per_s": float(np.median(speeds)) if history else None,
        "seconds": time.perf_counter() - started,
    }
    write_metrics(params.metrics, summary)
    for name, why in meta["untrained"].items():
        log.warning("train: %s is not trained: %s", name, why)
    log.info(
        "train: best epoch %d, val macro AUROC %.4f; wrote %s",
        summary["best_epoch"],
        state.best_metric,
        paths.model,
    )
    return summary


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
        summary = write_outputs(params, data, state, rt, meta, resumed_from, started)
    if rt.distributed:
        dist.barrier()
    return TrainResult(summary, trainer.net)
