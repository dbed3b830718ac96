"""runtime: device resolution, the process runtime, autocast precision, seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import pipelines.runtime as runtime
from pipelines.errors import UserError
from pipelines.runtime import Runtime, resolve_device, seed_everything, setup_runtime


def test_auto_device_is_cuda_where_available_else_cpu():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device("cpu") == torch.device("cpu")


def test_unusable_devices_are_user_errors_naming_the_key():
    with pytest.raises(UserError, match="CUDA|unknown"):
        resolve_device("cuda:0" if not torch.cuda.is_available() else "bogus")
    with pytest.raises(UserError, match=r"^evaluate\.device: unknown device 'bogus'"):
        resolve_device("bogus", "evaluate.device")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"^train\.device: 'cuda' asked for but CUDA"):
            setup_runtime("cuda")


def test_setup_runtime_without_torchrun_is_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    rt = setup_runtime("cpu")
    assert rt == Runtime(torch.device("cpu"))
    assert rt.main and not rt.distributed and not rt.owns_process_group
    assert not Runtime(torch.device("cpu"), rank=1, world=2).main
    assert Runtime(torch.device("cpu"), rank=1, world=2).distributed


@pytest.mark.parametrize(("native", "want"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cpu_uses_bf16_only_where_native(monkeypatch, native, want):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == want
    assert runtime.resolve_precision("fp16", torch.device("cpu")) == "fp16"


def test_seed_everything_seeds_python_numpy_and_torch():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(7, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        first = (random.random(), np.random.rand(), torch.rand(1).item())
        seed_everything(7, deterministic=True)
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    finally:
        torch.use_deterministic_algorithms(before)
