"""What a training checkpoint holds, its atomic save and its ``weights_only`` load.

Two kinds of file, both plain ``torch.save`` dicts of tensors and plain types (so they load with
``torch.load(..., weights_only=True)``, which refuses arbitrary pickled objects):

- the **model file** (``models/best.pt``, ``models/checkpoints/best.pt``): ``{"model":
  state_dict, "meta": {...}}``, read by :func:`pipelines.model.load_model`
  (:func:`save_model_file`);
- the **resume checkpoint** (``models/checkpoints/last.pt``): a :class:`Checkpoint`, i.e. the
  weights, the meta, the optimizer / scheduler / GradScaler states, the RNG states of every rank
  (:func:`rng_state`) and the loop state (:class:`LoopState`).

Every write goes through a temporary file beside the target, so a killed run never leaves a
torn checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipelines.errors import CheckpointError
from pipelines.io import atomic_path


@dataclass
class LoopState:
    """Where the epoch loop stands: what resuming needs besides weights and optimizer.

    Attributes:
        epochs_done: epochs finished.
        best_metric: the best validation macro AUROC so far (``-inf`` before the first epoch).
        best_epoch: the epoch (1-based) that reached it; 0 before the first epoch.
        bad_epochs: epochs since the last improvement (the early-stopping counter).
        stopped_early: whether the loop stopped for lack of improvement.
        history: one row of logged figures per epoch done.
    """

    epochs_done: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


LOOP_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(LoopState))


@dataclass
class Checkpoint:
    """A resume checkpoint: everything needed to continue a run as if it had not stopped.

    On disk it is one flat dict (``model``, ``optimizer``, ``scheduler``, ``scaler``, ``rng``,
    ``meta`` and the :class:`LoopState` fields).

    Attributes:
        model: the bare model's state dict (on CPU).
        optimizer: the optimizer's state dict.
        scheduler: the learning-rate scheduler's state dict.
        scaler: the GradScaler's state dict.
        rng: the RNG states of every rank, in rank order (:func:`rng_state`).
        meta: the model file's meta (architecture, findings, size, train params ...).
        loop: the loop state.
    """

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: list[dict[str, Any]]
    meta: dict[str, Any]
    loop: LoopState = field(default_factory=LoopState)

    def to_dict(self) -> dict[str, Any]:
        """The flat dict written to disk."""
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        loop = state.pop("loop")
        return state | {k: getattr(loop, k) for k in LOOP_KEYS}

    def save(self, path: str | Path) -> None:
        """Write atomically (see :func:`save_atomic`)."""
        save_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """A resume checkpoint, loaded with ``weights_only=True``.

        Raises:
            CheckpointError: unreadable, or not a train-stage resume checkpoint.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot resume from it ({exc})") from exc
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "loop"]
        needed = set(fields) | set(LOOP_KEYS)
        if not isinstance(state, dict) or not needed <= state.keys():
            raise CheckpointError(f"{path}: not a train checkpoint (needs {sorted(needed)})")
        loop = LoopState(**{k: state[k] for k in LOOP_KEYS})
        return cls(**{k: state[k] for k in fields}, loop=loop)


@dataclass(frozen=True)
class CheckpointPaths:
    """Where the train stage keeps its model files and checkpoints, under ``train.out``."""

    out: Path

    @property
    def last(self) -> Path:
        """The resume checkpoint (``checkpoints/last.pt``)."""
        return self.out / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        """The best model so far (``checkpoints/best.pt``), kept across resumes."""
        return self.out / "checkpoints" / "best.pt"

    @property
    def model(self) -> Path:
        """The stage's model output (``best.pt``), a copy of the best at the end."""
        return self.out / "best.pt"


def save_atomic(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file: a kill never leaves a torn checkpoint.

    Saved through a file object, so the archive inside is always named ``archive`` (saved to a
    path, torch names it after the file: the temporary name would make every file differ).

    Raises:
        OutputError: the file cannot be written.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)


def save_model_file(path: str | Path, model: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write a model file, ``{"model": state_dict, "meta": meta}`` (read by ``load_model``).

    Raises:
        OutputError: the file cannot be written.
    """
    save_atomic(path, {"model": model, "meta": meta})


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as detached, contiguous CPU tensors."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------- RNG state


def _np_rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def rng_state(generator: torch.Generator, augment: torch.Generator | None = None) -> dict[str, Any]:
    """This process's RNG states as tensors and plain types (``weights_only``-loadable).

    Args:
        generator: the DataLoader's shuffling generator.
        augment: the online augmentation's generator, when there is one.

    Returns:
        The torch, CUDA, NumPy and Python global states and the generators' states.
    """
    version, state, gauss = random.getstate()
    out = {
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
    if augment is not None:
        out["augment"] = augment.get_state()
    return out


def set_rng_state(
    state: dict[str, Any], generator: torch.Generator, augment: torch.Generator | None = None
) -> None:
    """Restore what :func:`rng_state` captured.

    Args:
        state: one rank's states.
        generator: the DataLoader's shuffling generator.
        augment: the online augmentation's generator (restored when the state has one).
    """
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npst["pos"], npst["has_gauss"], npst["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    generator.set_state(state["loader"])
    if augment is not None and "augment" in state:
        augment.set_state(state["augment"])
