"""train stage: the two-branch DenseNet-121 on the prepared shards, resumable, tracked, DDP-ready.

Reads the ``train`` split of ``data/prepared`` (plus ``data/augmented``'s offline copies when that
folder holds an index) and the ``val`` split of ``data/prepared``. Per epoch: one pass of AdamW
with a linear warm-up then cosine learning-rate schedule (per step), gradient clipping and
autocast (``precision``: ``auto`` = bf16 on a CPU with native bf16, else fp32; on CUDA bf16
where supported, else fp16 with a GradScaler), then validation: loss and macro AUROC
(scikit-learn, per finding over the known labels, findings without both classes left out). The
best epoch by validation macro AUROC is kept; training stops early after ``patience`` epochs
without improvement.

Outputs (rank 0 only)::

    models/best.pt                  {"model": state_dict, "meta": {...}} (see pipelines.model)
    models/checkpoints/last.pt      everything needed to resume (persisted across DVC runs)
    models/checkpoints/best.pt      the best model so far (so a resumed run still has it)
    metrics/train.json              summary (best epoch, its AUROC per finding, pairs/s, ...)
    dvclive/train/                  dvclive metrics.json + plots/metrics/*.tsv, per epoch
    runs/train/                     TensorBoard event files, per epoch

Resume (``resume: true``) restores model, optimizer, scheduler, scaler, the RNG states of every
rank (torch, CUDA, NumPy, Python, the DataLoader generator), the epoch, the best metric and the
early-stop counter from ``last.pt``, then replays the logged history into fresh dvclive /
TensorBoard logs, so a killed run continued to the end matches an uninterrupted one.

Distributed: under ``torchrun --nproc_per_node=N -m pipelines.train`` each process takes
``LOCAL_RANK``; the model is wrapped in DistributedDataParallel (NCCL on CUDA, gloo on CPU), the
train split goes through a DistributedSampler, validation is split across ranks and gathered so
every rank computes the same AUROC (hence the same early-stopping decision).
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler
from tqdm import tqdm

from pipelines.augment import AugmentParams, OnlineAugment
from pipelines.config import BaseParams, StageParams, load_params, parse_section
from pipelines.data import INDEX_FILE, ShardDataset, make_loader
from pipelines.errors import CheckpointError, ConfigError, UserError
from pipelines.evaluation.metrics import auroc_per_finding, mean_estimable
from pipelines.io import atomic_path, write_json
from pipelines.labels import FINDINGS
from pipelines.losses import build_loss
from pipelines.model import PIXEL_MEAN, PIXEL_STD, ModelParams, build_model, to_model_input
from pipelines.stage import run_stage

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
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


@dataclass
class Runtime:
    """Where this process runs: device, rank and world size."""

    device: torch.device
    rank: int = 0
    world: int = 1
    owns_process_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device and join the process group when launched by ``torchrun``.

    Raises:
        UserError: CUDA asked for but not available.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"train.device is {device!r} but no CUDA device is available")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        if dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    rt = Runtime(dev, rank=int(os.environ.get("RANK", "0")), world=world)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        rt.owns_process_group = True
    return rt


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); else oneDNN emulates it."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name)() for name in probes if hasattr(torch.cpu, name))
    except RuntimeError:  # pragma: no cover - private probes; be conservative
        return False


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """``auto`` -> on CUDA ``bf16`` where supported, else ``fp16``; on CPU ``bf16`` where the
    CPU has native bf16 (AVX512-BF16 / AMX), else ``fp32``.

    Measured on a 2-core AVX512 CPU without AVX512-BF16 (batch 16, channels_last): bf16
    autocast ran at 0.45x the speed of fp32 (64 px: 15.6 vs 34.2 pairs/s; 128 px: 4.6 vs
    10.5), so emulated bf16 is never the default.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


# ---------------------------------------------------------------------------------- metrics


def val_auroc(labels: np.ndarray, scores: np.ndarray) -> tuple[float, dict[str, float | None]]:
    """Validation macro AUROC and the per-finding AUROC (None where not estimable).

    Args:
        labels: (N, F) 1 / 0 / NaN.
        scores: (N, F) any monotone score (logits or probabilities).
    """
    per = auroc_per_finding(labels, scores)
    names = FINDINGS[: labels.shape[1]]
    by_name = {f: None if np.isnan(v) else float(v) for f, v in zip(names, per, strict=True)}
    return mean_estimable(per), by_name


# ---------------------------------------------------------------------------------- the loop


@dataclass
class EpochStats:
    """One training pass: mean loss over pairs, pairs seen (all ranks) and its wall time."""

    loss: float
    pairs: int
    seconds: float

    @property
    def pairs_per_s(self) -> float:
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
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    @property
    def net(self) -> nn.Module:
        """The bare model (unwrapped from DistributedDataParallel)."""
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    def autocast(self):
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
                x = self.augment(x, mask) * 255.0  # [0, 1] floats back to the uint8 scale
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

    def train_epoch(self, loader: Iterable[dict], desc: str = "", progress: bool = False):
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
        macro, per = val_auroc(labels, logits)
        return {"loss": loss, "macro_auroc": macro, "auroc": per, "pairs": len(idx)}


# ---------------------------------------------------------------------------------- state


def _np_rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """This process's RNG states as tensors and plain types (``weights_only``-loadable)."""
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _np_rng_state(),
        "python": {
            "version": version,
            "state": torch.tensor(state, dtype=torch.int64),
            "gauss": gauss,
        },
        "loader": generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npst["pos"], npst["has_gauss"], npst["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    generator.set_state(state["loader"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file: a kill never leaves a torn checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, loaded with ``weights_only=True``.

    Raises:
        CheckpointError: unreadable or not a train-stage checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot resume from it ({exc})") from exc
    needed = {"model", "optimizer", "scheduler", "scaler", "rng", "epochs_done", "meta"}
    if not isinstance(state, dict) or not needed <= state.keys():
        raise CheckpointError(f"{path}: not a train checkpoint (needs {sorted(needed)})")
    return state


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


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


# ---------------------------------------------------------------------------------- the stage


@dataclass
class TrainResult:
    """What :func:`train` returns: the summary written to ``metrics/train.json`` and the final
    (last-epoch, unwrapped) model of this rank."""

    summary: dict[str, Any]
    model: nn.Module


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


def _loaders(
    params: TrainParams, train_ds: ShardDataset, val_ds: ShardDataset, rt: Runtime, seed: int
) -> tuple[DataLoader, DataLoader, DistributedSampler | None, torch.Generator, int]:
    per_rank = len(train_ds) // rt.world
    batch = min(params.batch_size, per_rank)
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
    return train_loader, val_loader, dist_sampler, generator, batch


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


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _compatible(saved: dict[str, Any], params: TrainParams, path: Path) -> None:
    keys = ("model", "size", "batch_size", "lr", "loss", "epochs", "prepared", "augmented")
    now = params.model_dump()
    diff = [k for k in keys if saved.get(k) != now[k]]
    if diff:
        raise UserError(
            f"{path}: cannot resume: train params changed since the checkpoint ({', '.join(diff)});"
            " set train.resume: false to start over"
        )


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
    started = time.perf_counter()
    if params.threads:
        torch.set_num_threads(params.threads)
    seed_everything(seed + rt.rank, params.deterministic)
    train_ds, val_ds, roots = _datasets(params)
    size = params.size or train_ds.size
    if size < MIN_SIZE:
        raise UserError(f"train: input size {size} px is below the minimum of {MIN_SIZE}")
    train_loader, val_loader, sampler, generator, batch = _loaders(
        params, train_ds, val_ds, rt, seed
    )
    precision = resolve_precision(params.precision, rt.device)

    model = build_model(params.model, len(FINDINGS)).to(rt.device)
    if params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    scheduler = build_scheduler(optimizer, params, len(train_loader))
    trainer = Trainer(
        model,
        optimizer,
        scheduler,
        build_loss(params.loss, params.focal_alpha, params.focal_gamma),
        rt.device,
        precision,
        size,
        params.channels_last,
        params.grad_clip,
        rt.rank,
        rt.world,
        OnlineAugment.from_params(augment or AugmentParams()).to(rt.device)
        if params.online_augment
        else None,
    )

    ckpt_dir = Path(params.out) / "checkpoints"
    last_path, best_ckpt = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    state: dict[str, Any] = {
        "epochs_done": 0,
        "best_metric": -math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "stopped_early": False,
        "history": [],
    }
    resumed_from = None
    if params.resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        _compatible(ckpt["meta"]["train"], params, last_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        trainer.scaler.load_state_dict(ckpt["scaler"])
        rngs = ckpt["rng"]
        if len(rngs) == rt.world:
            set_rng_state(rngs[rt.rank], generator)
        state = {k: ckpt[k] for k in state}
        resumed_from = state["epochs_done"]
        if rt.main:
            log.info("train: resuming from %s after epoch %d", last_path, resumed_from)
    elif params.resume and rt.main:
        log.info("train: resume asked but %s does not exist; starting fresh", last_path)
    if resumed_from is None and rt.main:
        best_ckpt.unlink(missing_ok=True)  # a previous run's best must not leak into this one

    if rt.distributed:
        ddp_ids = [rt.device.index] if rt.device.type == "cuda" else None
        trainer.model = DistributedDataParallel(model, device_ids=ddp_ids)

    meta = {
        "model_params": params.model.model_dump(),
        "findings": list(FINDINGS),
        "size": size,
        "prepared_size": train_ds.size,
        "pixel_mean": PIXEL_MEAN,
        "pixel_std": PIXEL_STD,
        "precision": precision,
        "seed": seed,
        "train": params.model_dump(),
        "torch": str(torch.__version__),
    }
    loggers = _Loggers(params, state["history"]) if rt.main else None
    if rt.main:
        log.info(
            "train: %d train pairs (%s), %d val pairs, %d px, batch %d x %d process(es), %s on %s",
            len(train_ds),
            "+".join(roots),
            len(val_ds),
            size,
            batch,
            rt.world,
            precision,
            rt.device,
        )

    epoch = state["epochs_done"]
    while epoch < params.epochs and not state["stopped_early"]:
        if sampler is not None:
            sampler.set_epoch(epoch)
        stats = trainer.train_epoch(
            train_loader, f"epoch {epoch + 1}/{params.epochs}", params.progress and rt.main
        )
        val = trainer.validate(val_loader)
        epoch += 1
        metric = val["macro_auroc"]
        improved = _improves(metric, state["best_metric"], params.min_delta, state["best_epoch"])
        if improved:
            state.update(best_metric=metric, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epochs_done"] = epoch
        state["stopped_early"] = params.patience > 0 and state["bad_epochs"] >= params.patience
        row = {
            "epoch": epoch,
            "train/loss": stats.loss,
            "val/loss": val["loss"],
            "val/macro_auroc": metric,
            "lr": optimizer.param_groups[0]["lr"],
            "train/pairs_per_s": stats.pairs_per_s,
            "seconds": stats.seconds,
            "val_auroc": val["auroc"],
        }
        state["history"].append(row)
        rngs = [rng_state(generator)]
        if rt.distributed:
            rngs = [None] * rt.world
            dist.all_gather_object(rngs, rng_state(generator))
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
            weights = _plain_state_dict(trainer.net)
            if improved:
                best_meta = meta | {
                    "epoch": epoch,
                    "val_macro_auroc": metric,
                    "val_auroc": val["auroc"],
                }
                save_checkpoint(best_ckpt, {"model": weights, "meta": best_meta})
            save_checkpoint(
                last_path,
                {
                    "model": weights,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": trainer.scaler.state_dict(),
                    "rng": rngs,
                    "meta": meta,
                    **{
                        k: state[k]
                        for k in (
                            "epochs_done",
                            "best_metric",
                            "best_epoch",
                            "bad_epochs",
                            "stopped_early",
                            "history",
                        )
                    },
                },
            )
            loggers.log(row)

    summary: dict[str, Any] = {}
    if rt.main:
        loggers.close()
        if not best_ckpt.is_file():
            raise CheckpointError(f"{best_ckpt}: missing; cannot write {params.out}/best.pt")
        with atomic_path(Path(params.out) / "best.pt") as tmp:
            shutil.copyfile(best_ckpt, tmp)
        best_row = state["history"][state["best_epoch"] - 1]
        history = state["history"]
        summary = {
            "best_epoch": state["best_epoch"],
            "val_macro_auroc": _finite(state["best_metric"]),
            "val_loss": best_row["val/loss"],
            "val_auroc": best_row["val_auroc"],
            "epochs_run": state["epochs_done"],
            "stopped_early": state["stopped_early"],
            "resumed_from_epoch": resumed_from,
            "train_pairs": len(train_ds),
            "val_pairs": len(val_ds),
            "size": size,
            "batch_size": batch,
            "world_size": rt.world,
            "precision": precision,
            "device": str(rt.device),
            "pairs_per_s": float(np.median([r["train/pairs_per_s"] for r in history]))
            if history
            else None,
            "seconds": time.perf_counter() - started,
        }
        write_json(params.metrics, summary)
        log.info(
            "train: best epoch %d, val macro AUROC %.4f; wrote %s/best.pt",
            summary["best_epoch"],
            state["best_metric"],
            params.out,
        )
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
