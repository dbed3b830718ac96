"""The export formats: TorchScript, ONNX, the Lite Interpreter and ExecuTorch, each a function.

- ``model.ts.pt``: TorchScript by ``torch.jit.trace``. PyTorch marks TorchScript deprecated
  (in favour of ``torch.export``); it is kept because its users ask for it.
- ``model.onnx``: ONNX by the ``torch.export``-based exporter (``dynamo=True``, onnxscript), a
  dynamic batch axis, run under onnxruntime (inference needs no PyTorch).
- ``model.int8.onnx``: see :mod:`pipelines.export.quantize`.
- ``model.ptl``: the PyTorch Lite Interpreter (mobile). ``optimize_for_mobile`` is tried first;
  a torch build without XNNPACK refuses it, and the fallback is ``_save_for_lite_interpreter``
  on the traced module, unoptimised. Which one ran is recorded in the model card. The Lite
  Interpreter is deprecated in favour of ExecuTorch.
- ``model.pte``: ExecuTorch (XNNPACK delegate) when the optional ``executorch`` package is
  installed; otherwise the model card records it as skipped. It is an optional dependency, not
  a default one, because it pulls in torchao, coremltools and tokenizer packages.

Each exporter returns what the model card records about how the file was made, and leaves a
file that is the same bytes in every clone (:mod:`pipelines.export.reproducible`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pipelines.errors import ExportError
from pipelines.export.inference import example_inputs
from pipelines.export.reproducible import strip_onnx, strip_torch_archive
from pipelines.runners import INPUT_NAMES, OOD_OUTPUT, OUTPUT_NAME

Format = Literal["torchscript", "onnx", "int8", "mobile", "executorch"]
FORMATS: tuple[str, ...] = ("torchscript", "onnx", "int8", "mobile", "executorch")
FILES: dict[str, str] = {
    "torchscript": "model.ts.pt",
    "onnx": "model.onnx",
    "int8": "model.int8.onnx",
    "mobile": "model.ptl",
    "executorch": "model.pte",
}
RUNTIME_OF: dict[str, str] = {
    "torchscript": "torchscript",
    "onnx": "onnxruntime",
    "int8": "onnxruntime",
    "mobile": "lite",
    "executorch": "executorch",
}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence exporters' deprecation chatter and the quantizer's per-tensor root-logger
    warnings (what matters is recorded in the model card instead)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when empty), at most 300 chars."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def dist_version(name: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def sha256(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def trace(module: nn.Module, size: int) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of the inference module (deprecated by PyTorch, kept for its users)."""
    with quiet(), torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(module.eval(), example_inputs(size), check_trace=False)
    return traced


def export_torchscript(traced: torch.jit.ScriptModule, path: Path) -> dict[str, Any]:
    """Save the traced module (TorchScript)."""
    with quiet():
        torch.jit.save(traced, str(path))
    strip_torch_archive(path)
    return {"method": "torch.jit.trace", "deprecated": "TorchScript is deprecated in PyTorch"}


def export_onnx(module: nn.Module, path: Path, size: int, opset: int = 18) -> dict[str, Any]:
    """ONNX by the ``torch.export``-based exporter with a dynamic batch axis.

    Raises:
        ExportError: the exporter failed (its first line is kept).
    """
    batch = torch.export.Dim("batch", min=1, max=4096)
    output_names = [OUTPUT_NAME] + ([OOD_OUTPUT] if getattr(module, "gated", False) else [])
    try:
        with quiet(), contextlib.redirect_stdout(sys.stderr):
            torch.onnx.export(
                module.eval(),
                example_inputs(size),
                str(path),
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=output_names,
                dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"{path}: ONNX export failed: {first_line(exc)}") from exc
    strip_onnx(path)
    return {"method": "torch.onnx.export(dynamo=True)", "opset": opset, "dynamic_batch": True}


def export_mobile(traced: torch.jit.ScriptModule, path: Path) -> dict[str, Any]:
    """Lite Interpreter ``.ptl``: ``optimize_for_mobile`` if this build allows, else unoptimised.

    Returns:
        ``method`` (``optimize_for_mobile`` or ``_save_for_lite_interpreter``) and, on fallback,
        why ``optimize_for_mobile`` could not run.
    """
    from torch.utils.mobile_optimizer import optimize_for_mobile

    info: dict[str, Any] = {"deprecated": "Lite Interpreter is deprecated in favour of ExecuTorch"}
    with quiet():
        try:
            optimized = optimize_for_mobile(traced)
            optimized._save_for_lite_interpreter(str(path))
            info["method"] = "optimize_for_mobile"
        except Exception as exc:  # a build without XNNPACK: "XNNPACK is not enabled"
            traced._save_for_lite_interpreter(str(path))
            info["method"] = "_save_for_lite_interpreter"
            reason = str(exc)
            info["optimize_for_mobile_error"] = (
                "XNNPACK is not enabled in this torch build"
                if "XNNPACK is not enabled" in reason
                else first_line(exc)
            )
    strip_torch_archive(path)
    return info


def executorch_available() -> bool:
    """Whether the optional ``executorch`` package can be imported."""
    try:
        import executorch.exir  # noqa: F401
    except Exception:
        return False
    return True


def export_executorch(module: nn.Module, path: Path, size: int) -> dict[str, Any]:
    """ExecuTorch ``.pte`` lowered to the XNNPACK delegate, for batch 1 (the mobile case).

    A dynamic batch bounded at 64 exported, but executorch 1.5.1 planned the 128 px input for
    only 15 studies and refused 16; a static batch of 1 is what mobile apps run, and
    :func:`pipelines.runners.load_runner` feeds it one study at a time.

    Raises:
        ExportError: export or lowering failed.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        with quiet():
            program = torch.export.export(module.eval(), example_inputs(size, batch=1))
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            path.write_bytes(lowered.to_executorch().buffer)
    except Exception as exc:
        raise ExportError(f"{path}: ExecuTorch export failed: {first_line(exc)}") from exc
    import executorch

    return {
        "method": "executorch.exir.to_edge_transform_and_lower(XnnpackPartitioner)",
        "executorch": getattr(executorch, "__version__", dist_version("executorch")),
        "batch": 1,
    }
