"""export.formats: the format table, the helpers and a TorchScript round trip."""

from __future__ import annotations

import hashlib

import pytest
import torch

from pipelines.export.formats import (
    FILES,
    FORMATS,
    RUNTIME_OF,
    export_torchscript,
    first_line,
    sha256,
    trace,
)
from pipelines.export.inference import CXRInference, example_inputs
from tests.pipelines.export.helpers import SIZE, TinyNet


def test_every_format_has_a_file_and_a_runtime():
    assert set(FILES) == set(RUNTIME_OF) == set(FORMATS)
    assert len(set(FILES.values())) == len(FORMATS)


def test_first_line_and_sha256(tmp_path):
    assert first_line(ValueError("first\nsecond")) == "first"
    assert first_line(KeyError()) == "KeyError"
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_traced_torchscript_round_trips(tmp_path):
    module = CXRInference(TinyNet()).eval()
    info = export_torchscript(trace(module, SIZE), tmp_path / FILES["torchscript"])
    assert info["method"] == "torch.jit.trace"
    loaded = torch.jit.load(str(tmp_path / FILES["torchscript"]))
    inputs = example_inputs(SIZE, batch=3)  # not the traced batch
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), module(*inputs), atol=1e-6, rtol=0)
