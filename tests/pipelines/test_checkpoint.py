"""checkpoint: the resume checkpoint round trip, weights-only loads, RNG state, model files."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from pipelines.checkpoint import (
    Checkpoint,
    CheckpointPaths,
    LoopState,
    plain_state_dict,
    rng_state,
    save_atomic,
    save_model_file,
    set_rng_state,
)
from pipelines.errors import CheckpointError
from pipelines.model import ModelParams, build_model, load_model


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(3)
    aug = torch.Generator().manual_seed(4)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached gaussian in NumPy's state
    save_atomic(tmp_path / "rng.pt", {"rng": rng_state(gen, aug)})
    want = (
        torch.rand(3),
        np.random.rand(3),
        random.random(),
        torch.rand(2, generator=gen),
        torch.rand(2, generator=aug),
    )
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    gen.manual_seed(99)
    aug.manual_seed(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"], gen, aug)
    got = (
        torch.rand(3),
        np.random.rand(3),
        random.random(),
        torch.rand(2, generator=gen),
        torch.rand(2, generator=aug),
    )
    torch.testing.assert_close(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2]
    torch.testing.assert_close(got[3], want[3])
    torch.testing.assert_close(got[4], want[4])
    assert "augment" not in rng_state(gen)  # only with online augmentation


class Payload:
    """Not a tensor or plain type: a weights_only load must refuse it."""


def test_checkpoints_load_weights_only(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "optimizer": Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot resume"):
        Checkpoint.load(path)
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="not a train checkpoint"):
        Checkpoint.load(path)


def test_checkpoint_round_trip_keeps_the_flat_layout(tmp_path):
    loop = LoopState(epochs_done=2, best_metric=0.7, best_epoch=1, bad_epochs=1)
    loop.history.append({"epoch": 1, "val/macro_auroc": 0.7})
    ckpt = Checkpoint(
        model={"w": torch.arange(3.0)},
        optimizer={"state": {}},
        scheduler={"last_epoch": 4},
        scaler={},
        rng=[rng_state(torch.Generator())],
        meta={"size": 64},
        loop=loop,
    )
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt.save(path)
    raw = torch.load(path, weights_only=True)
    assert list(raw) == [
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "meta",
        "epochs_done",
        "best_metric",
        "best_epoch",
        "bad_epochs",
        "stopped_early",
        "history",
    ]
    back = Checkpoint.load(path)
    assert back.loop == loop and back.meta == {"size": 64} and back.scheduler == {"last_epoch": 4}
    torch.testing.assert_close(back.model["w"], torch.arange(3.0))
    assert not list(path.parent.glob(".*.tmp"))  # the temporary file was moved into place


def test_a_fresh_loop_state_has_no_best_yet():
    state = LoopState()
    assert state.epochs_done == state.best_epoch == state.bad_epochs == 0
    assert state.best_metric == -math.inf and not state.stopped_early and state.history == []
    assert LoopState().history is not state.history


def test_model_file_is_what_load_model_reads(tmp_path):
    meta = {"model_params": ModelParams(frontal_only=True).model_dump(), "findings": ["A", "B"]}
    model = build_model(ModelParams(frontal_only=True), 2)
    paths = CheckpointPaths(tmp_path / "models")
    save_model_file(paths.model, plain_state_dict(model), meta)
    assert set(torch.load(paths.model, weights_only=True)) == {"model", "meta"}
    loaded, got = load_model(paths.model)
    assert got == meta
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    assert paths.last == tmp_path / "models/checkpoints/last.pt"
    assert paths.best == tmp_path / "models/checkpoints/best.pt"
