"""Where and how a process computes: its device, rank and world, precision, seeds.

The train and evaluate stages resolve their ``device`` param through :func:`resolve_device`
(``auto`` = CUDA when available, else CPU). Under ``torchrun`` :func:`setup_runtime` also reads
``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE``, pins each process to its GPU and joins the process
group (NCCL on CUDA, gloo on CPU). :func:`resolve_precision` turns ``auto`` into the autocast
precision for the device; :func:`seed_everything` seeds Python, NumPy and torch and optionally
asks for deterministic kernels.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from pipelines.errors import UserError

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass
class Runtime:
    """Where this process runs: device, rank and world size."""

    device: torch.device
    rank: int = 0
    world: int = 1
    owns_process_group: bool = False

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (the process that writes outputs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world > 1


def resolve_device(device: str, key: str = "device") -> torch.device:
    """A ``device`` param as a torch device: ``auto`` -> CUDA if available, else CPU.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        key: the params key it came from, for error messages (e.g. ``evaluate.device``).

    Returns:
        The device (``cuda`` without an index stays without one).

    Raises:
        UserError: an unknown device, or CUDA asked for where there is none.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"{key}: unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}: {device!r} asked for but CUDA is not available")
    return dev


def setup_runtime(device: str = "auto", key: str = "train.device") -> Runtime:
    """Pick the device and join the process group when launched by ``torchrun``.

    On CUDA each process takes the GPU of its ``LOCAL_RANK`` (unless ``device`` names one) and
    cuBLAS is set up for deterministic kernels.

    Args:
        device: the ``device`` param (see :func:`resolve_device`).
        key: the params key it came from, for error messages.

    Returns:
        This process's runtime; ``owns_process_group`` when this call joined the group.

    Raises:
        UserError: an unknown device, or CUDA asked for but not available.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, key)
    if dev.type == "cuda":
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
    """The autocast precision to use: ``precision`` itself unless it is ``auto``.

    ``auto`` -> on CUDA ``bf16`` where supported, else ``fp16``; on CPU ``bf16`` where the CPU
    has native bf16 (AVX512-BF16 / AMX), else ``fp32``: emulated bf16 autocast runs slower than
    fp32, so it is never the default.

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        device: where the model runs.

    Returns:
        ``fp32``, ``bf16`` or ``fp16``.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels.

    Args:
        seed: the seed (NumPy takes it modulo 2**32).
        deterministic: deterministic algorithms (warn-only) and cuDNN without autotuning;
            otherwise cuDNN autotunes.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
