"""Export stage: the trained model as files that run outside this code base, each proven to agree.

One inference module, :class:`CXRInference`, wraps the trained two-branch model: it takes the
frontal view, the lateral view (uint8 values, (B, 1, S, S), S = the prepared image size) and a
``has_lateral`` mask (B,) bool, normalises and resizes inside (:func:`pipelines.model.
to_model_input`) and returns probabilities (B, 14). Frontal-only use passes ``has_lateral=False``
(the lateral pixels are then ignored). It is written out as:

- ``model.ts.pt``: TorchScript by ``torch.jit.trace``. PyTorch marks TorchScript deprecated
  (in favour of ``torch.export``); it is kept because its users ask for it.
- ``model.onnx``: ONNX by the ``torch.export``-based exporter (``dynamo=True``, onnxscript), a
  dynamic batch axis, run under onnxruntime (inference needs no PyTorch).
- ``model.int8.onnx``: int8 by post-training static quantization, calibrated on training studies:
  onnxruntime ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, MinMax
  calibration through a ``CalibrationDataReader`` over ``calibration_studies`` seeded train
  studies) after ``quant_pre_process`` and :func:`batchnorm_to_depthwise_conv` (DenseNet's
  pre-activation BatchNorms cannot be folded and onnxruntime has no int8 BatchNormalization).
  Chosen over PyTorch FX graph-mode PTQ (x86 qconfig) after measuring both in one run of
  ``benchmarks/bench_export.py`` (2 threads, this build; batch-1 / batch-16 ms):

  ============================  ==============  ==============  =============
  two-branch DenseNet-121        eager fp32      ORT int8        FX int8
  ============================  ==============  ==============  =============
  64 px, trained (e2e demo)      46 / 219        7.3 / 54        12.2 / 51
  ... test macro AUROC           0.6279          0.6278          0.6214
  128 px, random weights         97 / 824        15.3 / 181      19.1 / 117
  224 px, random weights         216 / 2285      33.0 / 562      32.3 / 362
  file size (MB)                 -               17              15
  ============================  ==============  ==============  =============

  onnxruntime int8 is as fast or faster at batch 1 (the ``cxr predict`` case), closer to fp32
  (AUROC -0.0001 vs -0.0065 with the same calibration studies), needs no PyTorch at inference
  and is not deprecated; FX is faster at batch 16 but ``torch.ao.quantization`` is deprecated
  for torchao, warns that its quantized ``cat`` inputs need shared scales, and its model runs
  only under PyTorch. torchao pt2e + X86InductorQuantizer was not chosen: it needs torchao and
  is fast only after a ~150 s ``torch.compile`` per process (DESIGN.md §6).
- ``model.ptl``: the PyTorch Lite Interpreter (mobile). ``optimize_for_mobile`` is tried first;
  this torch build has no XNNPACK ("XNNPACK is not enabled"), so the fallback is
  ``_save_for_lite_interpreter`` on the traced module, unoptimised. Which one ran is recorded in
  the model card. The Lite Interpreter is deprecated in favour of ExecuTorch.
- ``model.pte``: ExecuTorch (XNNPACK delegate) when the optional ``executorch`` package is
  installed; otherwise the model card records it as skipped. executorch 1.5.1 installs beside
  torch 2.14.1 without replacing it (checked in a throwaway venv: the two-branch DenseNet-121
  at 128 px lowers in ~2 min and agrees with eager to 4e-7), but it pulls in torchao,
  coremltools and tokenizer packages, so it is an optional dependency, not a default one.

Parity is part of the stage: every exported file is loaded back through the same runtime code
as ``cxr predict`` (:func:`pipelines.predict.load_runner`) and run on the held-out test studies
of ``data/prepared`` against the eager module: max |Δprobability| and the test macro AUROC
difference go to ``metrics/export.json``; beyond the params tolerances the stage fails with
:class:`ParityError` naming the format and the figure.

The model card ``metadata.json`` (MONAI bundle spirit) holds versions (torch, onnxruntime, code
commit), the input spec (views, size, channels, dtype, normalisation, photometric handling),
the output spec (finding names, validation-chosen thresholds), test metrics with CIs from
``metrics/evaluate.json``, a training data summary (counts only), the parity figures and file
hashes. No PHI: nothing of the DICOM headers reaches it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from pipelines.config import BaseParams, StageParams, load_params, parse_section
from pipelines.data import ShardDataset, read_index
from pipelines.errors import ExportError, ParityError
from pipelines.evaluation.metrics import macro_auroc
from pipelines.evaluation.provenance import git_commit
from pipelines.io import write_json
from pipelines.labels import FINDINGS
from pipelines.runners import CARD_FILE, INPUT_NAMES, OUTPUT_NAME, Runner, load_runner
from pipelines.stage import run_stage

log = logging.getLogger(__name__)

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


class Tolerance(StageParams):
    """How far an exported model may stray from the eager one on the test studies.

    Attributes:
        max_abs_prob: bound on max |Δprobability| over all test studies and findings.
        max_auroc_drop: bound on (eager - exported) test macro AUROC.
    """

    max_abs_prob: float = Field(1e-4, gt=0)
    max_auroc_drop: float = Field(1e-3, ge=0)


def _default_tolerances() -> dict[str, Tolerance]:
    return {
        "torchscript": Tolerance(max_abs_prob=1e-4, max_auroc_drop=1e-3),
        "onnx": Tolerance(max_abs_prob=1e-4, max_auroc_drop=1e-3),
        "mobile": Tolerance(max_abs_prob=1e-4, max_auroc_drop=1e-3),
        "executorch": Tolerance(max_abs_prob=1e-3, max_auroc_drop=1e-3),
        "int8": Tolerance(max_abs_prob=0.1, max_auroc_drop=0.005),
    }


class ExportParams(StageParams):
    """The ``export`` section of ``params.yaml``.

    Attributes:
        checkpoint: the trained model (``models/best.pt``).
        prepared: the prepared shards (test studies for parity, train for calibration).
        thresholds: evaluate's validation-chosen thresholds (optional: 0.5 when absent).
        evaluation: evaluate's test metrics with CIs (optional; copied into the model card).
        formats: what to write; ``executorch`` is skipped (and recorded) when not installed.
        tolerances: per format, see :class:`Tolerance`; missing formats take the defaults.
        calibration_studies: training studies for int8 calibration (seeded sample).
        parity_batch: studies per call in the parity run (and int8 calibration batches).
        parity_studies: cap on the test studies compared (0 = all).
        opset: ONNX opset.
        threads: intra-op threads for export and parity runs.
        default_threshold_policy: the thresholds ``cxr predict`` uses by default.
        out: the export folder (``models/export``).
        metrics: the parity metrics file (DVC metrics).
    """

    checkpoint: str = "models/best.pt"
    prepared: str = "data/prepared"
    thresholds: str = "outputs/evaluation/thresholds.json"
    evaluation: str = "metrics/evaluate.json"
    formats: list[Format] = Field(default_factory=lambda: list(FORMATS))
    tolerances: dict[Format, Tolerance] = Field(default_factory=_default_tolerances)
    calibration_studies: int = Field(128, ge=1)
    parity_batch: int = Field(16, ge=1)
    parity_studies: int = Field(0, ge=0)
    opset: int = Field(18, ge=17)
    threads: int = Field(2, ge=1)
    default_threshold_policy: str = "youden"
    out: str = "models/export"
    metrics: str = "metrics/export.json"

    @field_validator("tolerances", mode="before")
    @classmethod
    def _merge_tolerances(cls, value: Any) -> Any:
        """Fill unlisted formats and unlisted figures from the defaults."""
        if not isinstance(value, dict):
            return value
        merged = {k: v.model_dump() for k, v in _default_tolerances().items()}
        for fmt, tol in value.items():
            given = tol.model_dump() if isinstance(tol, Tolerance) else tol
            merged[fmt] = merged.get(fmt, {}) | (given if isinstance(given, dict) else {})
        return merged

    @model_validator(mode="after")
    def _onnx_before_int8(self) -> ExportParams:
        if "int8" in self.formats and "onnx" not in self.formats:
            raise ValueError("formats: int8 is quantised from the ONNX model; list onnx too")
        return self


# --------------------------------------------------------------------------- the module


class CXRInference(nn.Module):
    """uint8-valued views + lateral mask -> probabilities: the one module every format exports.

    Args:
        model: the trained model (``model(frontal, lateral, has_lateral) -> logits``), eval mode.
        size: the model's input size (``meta["size"]``); inputs of another size are resized
            inside by :func:`pipelines.model.to_model_input`.
    """

    def __init__(self, model: nn.Module, size: int | None = None):
        super().__init__()
        self.model = model.eval()
        self.size = size

    def forward(
        self, frontal: torch.Tensor, lateral: torch.Tensor, has_lateral: torch.Tensor
    ) -> torch.Tensor:
        """frontal, lateral: uint8 (or uint8-valued float) (B, 1, S, S); has_lateral: (B,) bool."""
        from pipelines.model import to_model_input

        logits = self.model(
            to_model_input(frontal, self.size),
            to_model_input(lateral, self.size),
            has_lateral.to(torch.bool),
        )
        return torch.sigmoid(logits.float())


def example_inputs(size: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic uint8 views and a mixed lateral mask for tracing/exporting."""
    g = torch.Generator().manual_seed(0)
    frontal = torch.randint(0, 256, (batch, 1, size, size), generator=g, dtype=torch.uint8)
    lateral = torch.randint(0, 256, (batch, 1, size, size), generator=g, dtype=torch.uint8)
    has_lateral = torch.arange(batch) % 2 == 0
    return frontal, lateral, has_lateral


def eager_runner(module: nn.Module) -> Runner:
    """The eager module as a numpy runner (the parity reference)."""

    def run(frontal: np.ndarray, lateral: np.ndarray, has_lateral: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(
                torch.from_numpy(np.ascontiguousarray(frontal)),
                torch.from_numpy(np.ascontiguousarray(lateral)),
                torch.from_numpy(np.ascontiguousarray(has_lateral, dtype=bool)),
            )
        return out.float().numpy()

    return run


# --------------------------------------------------------------------------- the formats


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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


def trace(module: nn.Module, size: int) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of the inference module (deprecated by PyTorch, kept for its users)."""
    with _quiet(), torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(module.eval(), example_inputs(size), check_trace=False)
    return traced


def export_torchscript(traced: torch.jit.ScriptModule, path: Path) -> dict[str, Any]:
    """Save the traced module (TorchScript)."""
    with _quiet():
        torch.jit.save(traced, str(path))
    return {"method": "torch.jit.trace", "deprecated": "TorchScript is deprecated in PyTorch"}


def export_onnx(module: nn.Module, path: Path, size: int, opset: int = 18) -> dict[str, Any]:
    """ONNX by the ``torch.export``-based exporter with a dynamic batch axis.

    Raises:
        ExportError: the exporter failed (its first line is kept).
    """
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with _quiet(), contextlib.redirect_stdout(sys.stderr):
            torch.onnx.export(
                module.eval(),
                example_inputs(size),
                str(path),
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"{path}: ONNX export failed: {_first_line(exc)}") from exc
    return {"method": "torch.onnx.export(dynamo=True)", "opset": opset, "dynamic_batch": True}


class ShardCalibrationReader:
    """onnxruntime ``CalibrationDataReader`` over seeded training studies of prepared shards.

    Args:
        dataset: the training studies.
        n_studies: how many to use (a seeded sample; all when fewer).
        batch: studies per calibration batch.
        seed: the sampling seed.
    """

    def __init__(self, dataset: ShardDataset, n_studies: int, batch: int, seed: int):
        rng = np.random.default_rng(seed)
        n = min(n_studies, len(dataset))
        self.indices = np.sort(rng.choice(len(dataset), size=n, replace=False))
        self.dataset = dataset
        self.batch = batch
        self._batches = self._iter()

    def _iter(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.indices), self.batch):
            f, lat, has = _stack(self.dataset, self.indices[start : start + self.batch])[:3]
            yield {"frontal": f, "lateral": lat, "has_lateral": has}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iter()


def batchnorm_to_depthwise_conv(model: Any) -> int:
    """Rewrite each inference-mode ``BatchNormalization`` as the equal 1x1 depthwise ``Conv``.

    DenseNet is pre-activation (BN -> ReLU -> Conv): most BatchNorms follow a concatenation,
    not a convolution, so no exporter can fold them. onnxruntime has no int8 BatchNormalization,
    so each would stay float between a DequantizeLinear and a QuantizeLinear and break the int8
    chain; as a depthwise convolution (weight ``gamma / sqrt(var + eps)``, bias ``beta - mean *
    weight``) it quantizes like any convolution. Measured on the two-branch DenseNet-121, 128 px,
    2 threads (a loaded machine): int8 about 1.9x faster than fp32 at batch 1 with the rewrite,
    1.2x without.

    Args:
        model: an ``onnx.ModelProto``, changed in place.

    Returns:
        How many nodes were rewritten (BatchNorms with constant parameters and 4-D input).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    ranks = {  # where shape inference knows the rank of an input
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*graph.value_info, *graph.input]
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
    }
    nodes, count = [], 0
    for node in graph.node:
        params = node.input[1:5]
        if node.op_type != "BatchNormalization" or not all(p in inits for p in params):
            nodes.append(node)
            continue
        if ranks.get(node.input[0], 4) != 4:
            nodes.append(node)
            continue
        scale, bias, mean, var = (numpy_helper.to_array(inits[p]).astype(float) for p in params)
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        weight = scale / np.sqrt(var + eps)
        name = node.name or f"bn{count}"
        w_name, b_name = f"{name}.dw_weight", f"{name}.dw_bias"
        graph.initializer.append(
            numpy_helper.from_array(weight.reshape(-1, 1, 1, 1).astype(np.float32), w_name)
        )
        graph.initializer.append(
            numpy_helper.from_array((bias - mean * weight).astype(np.float32), b_name)
        )
        nodes.append(
            helper.make_node(
                "Conv",
                [node.input[0], w_name, b_name],
                [node.output[0]],
                name=f"{name}.dw",
                group=int(weight.size),
                kernel_shape=[1, 1],
            )
        )
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return count


def quantize_onnx(
    fp32: Path, path: Path, reader: ShardCalibrationReader, workdir: Path
) -> dict[str, Any]:
    """int8 ONNX by onnxruntime static quantization (QDQ, per-channel, MinMax calibration).

    Raises:
        ExportError: pre-processing or quantization failed.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):  # the ABC onnxruntime checks for
        def get_next(self) -> dict[str, np.ndarray] | None:
            return reader.get_next()

    pre, rewritten = workdir / "model.pre.onnx", workdir / "model.dw.onnx"
    try:
        with _quiet():
            quant_pre_process(str(fp32), str(pre))
            import onnx

            graph = onnx.load(str(pre))
            n_bn = batchnorm_to_depthwise_conv(graph)
            onnx.save(graph, str(rewritten))
            quantize_static(
                str(rewritten),
                str(path),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    except Exception as exc:
        raise ExportError(f"{path}: onnxruntime quantization failed: {_first_line(exc)}") from exc
    return {
        "method": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8 per-channel",
        "activations": "uint8 per-tensor",
        "calibration": "MinMax",
        "batchnorm_as_depthwise_conv": n_bn,
        "calibration_studies": len(reader.indices),
        "calibration_split": "train",
    }


def export_mobile(traced: torch.jit.ScriptModule, path: Path) -> dict[str, Any]:
    """Lite Interpreter ``.ptl``: ``optimize_for_mobile`` if this build allows, else unoptimised.

    Returns:
        ``method`` (``optimize_for_mobile`` or ``_save_for_lite_interpreter``) and, on fallback,
        why ``optimize_for_mobile`` could not run.
    """
    from torch.utils.mobile_optimizer import optimize_for_mobile

    info: dict[str, Any] = {"deprecated": "Lite Interpreter is deprecated in favour of ExecuTorch"}
    with _quiet():
        try:
            optimized = optimize_for_mobile(traced)
            optimized._save_for_lite_interpreter(str(path))
            info["method"] = "optimize_for_mobile"
        except Exception as exc:  # this build: "XNNPACK is not enabled"
            traced._save_for_lite_interpreter(str(path))
            info["method"] = "_save_for_lite_interpreter"
            reason = str(exc)
            info["optimize_for_mobile_error"] = (
                "XNNPACK is not enabled in this torch build"
                if "XNNPACK is not enabled" in reason
                else _first_line(exc)
            )
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
    :func:`pipelines.predict.load_runner` feeds it one study at a time.

    Raises:
        ExportError: export or lowering failed.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        with _quiet():
            program = torch.export.export(module.eval(), example_inputs(size, batch=1))
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            path.write_bytes(lowered.to_executorch().buffer)
    except Exception as exc:
        raise ExportError(f"{path}: ExecuTorch export failed: {_first_line(exc)}") from exc
    import executorch

    return {
        "method": "executorch.exir.to_edge_transform_and_lower(XnnpackPartitioner)",
        "executorch": getattr(executorch, "__version__", _dist_version("executorch")),
        "batch": 1,
    }


# --------------------------------------------------------------------------- parity


def parity_figures(
    reference: np.ndarray, probs: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """Agreement of ``probs`` with ``reference`` on the same studies.

    Returns:
        ``max_abs_prob``, ``mean_abs_prob``, ``macro_auroc`` (exported), ``macro_auroc_eager``
        and ``auroc_drop`` (eager - exported; NaN when no finding is estimable).
    """
    diff = np.abs(probs.astype(np.float64) - reference.astype(np.float64))
    eager, exported = macro_auroc(labels, reference), macro_auroc(labels, probs)
    return {
        "max_abs_prob": float(diff.max()) if diff.size else 0.0,
        "mean_abs_prob": float(diff.mean()) if diff.size else 0.0,
        "macro_auroc": exported,
        "macro_auroc_eager": eager,
        "auroc_drop": eager - exported,
    }


def check_parity(figures: dict[str, dict[str, float]], tolerances: dict[str, Tolerance]) -> None:
    """Raise for the first format beyond its tolerance.

    Raises:
        ParityError: naming the format, the figure, its value and the bound.
    """
    problems = []
    for fmt, fig in figures.items():
        tol = tolerances[fmt]
        if not fig["max_abs_prob"] <= tol.max_abs_prob:  # NaN fails too
            problems.append(
                f"{fmt}: max |Δprobability| {fig['max_abs_prob']:.3g} > "
                f"tolerance {tol.max_abs_prob:.3g}"
            )
        if np.isfinite(fig["auroc_drop"]) and fig["auroc_drop"] > tol.max_auroc_drop:
            problems.append(
                f"{fmt}: test macro AUROC drop {fig['auroc_drop']:.4f} > "
                f"tolerance {tol.max_auroc_drop:.4f}"
            )
    if problems:
        raise ParityError("export parity failed: " + "; ".join(problems))


def _stack(
    dataset: ShardDataset, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 views, lateral mask and labels of some studies, as numpy batches."""
    if hasattr(dataset, "get_batch"):
        batch = dataset.get_batch(indices)
        keys = ("frontal", "lateral", "has_lateral", "labels")
        frontal, lateral, has_lateral, labels = (batch[k].numpy() for k in keys)
        return frontal, lateral, has_lateral.astype(bool), labels
    samples = [dataset[int(i)] for i in indices]
    frontal = np.stack([s["frontal"].numpy() for s in samples])
    lateral = np.stack([s["lateral"].numpy() for s in samples])
    has_lateral = np.array([bool(s["has_lateral"]) for s in samples])
    labels = np.stack([s["labels"].numpy() for s in samples])
    return frontal, lateral, has_lateral, labels


def run_parity(
    reference: Runner,
    runners: dict[str, Runner],
    dataset: ShardDataset,
    batch: int,
    limit: int = 0,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Every runner against ``reference`` on the studies of ``dataset``.

    Returns:
        (figures per format, a summary: studies, with_lateral, seconds per format).

    Raises:
        ExportError: the dataset is empty.
    """
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    if n == 0:
        raise ExportError("export: no test studies in the prepared data to check parity on")
    outputs: dict[str, list[np.ndarray]] = {k: [] for k in ["eager", *runners]}
    seconds = dict.fromkeys(outputs, 0.0)
    labels, lateral_count = [], 0
    for start in range(0, n, batch):
        f, lat, has, y = _stack(dataset, np.arange(start, min(start + batch, n)))
        labels.append(y)
        lateral_count += int(has.sum())
        for name, runner in [("eager", reference), *runners.items()]:
            t0 = time.perf_counter()
            outputs[name].append(np.asarray(runner(f, lat, has), dtype=np.float32))
            seconds[name] += time.perf_counter() - t0
    y_all = np.concatenate(labels)
    ref = np.concatenate(outputs.pop("eager"))
    figures = {k: parity_figures(ref, np.concatenate(v), y_all) for k, v in outputs.items()}
    summary = {
        "studies": n,
        "with_lateral": lateral_count,
        "seconds_per_study": {k: v / n for k, v in seconds.items()},
    }
    return figures, summary


# --------------------------------------------------------------------------- model card


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _dist_version(name: str) -> str | None:
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


Thresholds = dict[str, dict[str, float | None]]


def _policies(data: dict[str, Any]) -> Thresholds:
    """Entries mapping finding names to numbers (or null): one threshold policy each."""
    table: Thresholds = {}
    for policy, values in data.items():
        if not isinstance(values, dict) or not set(values) & set(FINDINGS):
            continue
        table[policy] = {
            f: (float(v) if isinstance(v, int | float) else None)
            for f, v in values.items()
            if f in FINDINGS
        }
    return table


def read_thresholds(path: Path) -> dict[str, Any]:
    """evaluate's validation-chosen thresholds, as the model card carries them.

    evaluate writes ``{"youden": {finding: t}, "sensitivity_target": {...}, "frontal_only":
    {"youden": {...}, ...}, "chosen_on": "val", "rule": ..., "target_sensitivity": 0.9}``: every
    mapping of finding names to numbers is a policy (also under a ``thresholds`` key); those
    under ``frontal_only`` were chosen on the model run without lateral views; plain scalar
    entries are kept as notes.

    Returns:
        ``{"thresholds": {policy: {finding: t}}, "thresholds_frontal_only": {...},
        "notes": {...}}``, all empty when the file is absent.

    Raises:
        ExportError: the file exists but is not a JSON object.
    """
    empty: dict[str, Any] = {"thresholds": {}, "thresholds_frontal_only": {}, "notes": {}}
    if not path.is_file():
        log.warning("export: %s not found; the model card will carry no thresholds", path)
        return empty
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object of threshold policies")
    if isinstance(data.get("thresholds"), dict):
        data = data | data["thresholds"]
    frontal = data.get("frontal_only")
    return {
        "thresholds": _policies(data),
        "thresholds_frontal_only": _policies(frontal) if isinstance(frontal, dict) else {},
        "notes": {k: v for k, v in data.items() if isinstance(v, str | int | float | bool)},
    }


def read_test_metrics(path: Path) -> dict[str, Any] | None:
    """evaluate's test metrics (with CIs) for the model card; None when absent.

    Raises:
        ExportError: the file exists but is not JSON.
    """
    if not path.is_file():
        log.warning("export: %s not found; the model card will carry no test metrics", path)
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc.msg})") from exc


def training_data_summary(prepared: Path) -> dict[str, Any]:
    """Counts only (studies, with lateral, positives and annotated per finding, per split)."""
    index = read_index(prepared)
    splits: dict[str, Any] = {}
    for split in index["splits"]:
        ds = ShardDataset(prepared, split)
        labels = ds.labels
        splits[split] = {
            "studies": len(ds),
            "with_lateral": int(ds.has_lateral.sum()),
            "positives": {f: int(np.nansum(labels[:, j] == 1)) for j, f in enumerate(FINDINGS)},
            "annotated": {f: int((~np.isnan(labels[:, j])).sum()) for j, f in enumerate(FINDINGS)},
        }
    return {"prepared_size": index["size"], "splits": splits}


def versions() -> dict[str, Any]:
    """Library and code versions for the model card."""
    import onnx
    import onnxruntime

    git = git_commit() or {}
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": _dist_version("onnxscript"),
        "executorch": _dist_version("executorch"),
        "cxr_dag": _dist_version("cxr-dag"),
        "code_commit": git.get("commit"),
        "code_dirty": git.get("dirty"),
    }


def model_card(
    *,
    meta: dict[str, Any],
    input_size: int,
    files: dict[str, dict[str, Any]],
    parity: dict[str, dict[str, float]],
    parity_summary: dict[str, Any],
    thresholds: dict[str, Any],
    default_policy: str,
    test_metrics: dict[str, Any] | None,
    data_summary: dict[str, Any] | None,
    n_params: int,
    no_window: str = "bits",
) -> dict[str, Any]:
    """The ``metadata.json`` of the export folder (no PHI: counts, specs and versions only).

    ``no_window`` is how preprocess scaled DICOMs without a VOI window (``bits`` or ``minmax``,
    :func:`pipelines.imaging.prepare_image`); ``cxr predict`` decodes the same way.
    """
    from pipelines.model import PIXEL_MEAN, PIXEL_STD

    findings = list(meta.get("findings", FINDINGS))
    model_params = dict(meta.get("model_params", {}))
    return {
        "schema": "cxr-dag-model-card/1",
        "name": "cxr-dag two-branch DenseNet-121 (frontal + optional lateral chest radiograph)",
        "task": "multi-label classification of the 14 ChestX-ray14 findings",
        "intended_use": "research and engineering; not a medical device, not for diagnosis",
        "versions": versions(),
        "model": {
            "architecture": "DualViewDenseNet (pipelines.model)",
            "model_params": model_params,
            "parameters": n_params,
            "epoch": meta.get("epoch"),
            "val_macro_auroc": meta.get("val_macro_auroc"),
            "trained_size": meta.get("size"),
            "precision": meta.get("precision"),
        },
        "input": {
            "names": list(INPUT_NAMES),
            "views": {
                "frontal": "PA or AP (PA preferred)",
                "lateral": "LATERAL (LL / RL), optional",
            },
            "shape": {
                "frontal": ["batch", 1, input_size, input_size],
                "lateral": ["batch", 1, input_size, input_size],
                "has_lateral": ["batch"],
            },
            "size": input_size,
            "channels": 1,
            "dtype": "uint8",
            "has_lateral": "bool; false: the lateral input is ignored (frontal-only use)",
            "value_range": [0, 255],
            "normalisation": {
                "inside_model": True,
                "formula": "(x / 255 - mean) / std, then resized to trained_size if different",
                "mean": PIXEL_MEAN,
                "std": PIXEL_STD,
            },
            "photometric": {
                "decoder": "pipelines.imaging.prepare_image (same code as preprocess)",
                "modality_lut": "applied (rescale slope / intercept)",
                "voi_lut": "applied (window centre / width or VOI LUT)",
                "monochrome1": "inverted (bright = dense)",
                "color": "RGB / RGBA converted to grey",
                "no_window": no_window,
                "resize": (
                    f"aspect ratio kept, bicubic with antialiasing, padded with black to "
                    f"{input_size} x {input_size} (pipelines.imaging.to_square)"
                ),
            },
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(findings)],
            "activation": "sigmoid (independent per finding)",
            "findings": findings,
            "thresholds": thresholds.get("thresholds", {}),
            "thresholds_frontal_only": thresholds.get("thresholds_frontal_only", {}),
            "threshold_notes": thresholds.get("notes", {}),
            "threshold_rule": "positive when probability >= threshold",
            "default_threshold_policy": default_policy,
        },
        "files": files,
        "parity": {"test": parity, **parity_summary},
        "metrics": {"test": test_metrics},
        "training_data": data_summary,
        "notes": [
            "TorchScript (torch.jit.trace) is deprecated in PyTorch; kept for its users.",
            "The Lite Interpreter (.ptl) is deprecated in favour of ExecuTorch (.pte).",
            "int8: onnxruntime static quantization, calibrated on training studies.",
        ],
    }


# --------------------------------------------------------------------------- the stage


def export_all(
    module: CXRInference,
    meta: dict[str, Any],
    params: ExportParams,
    seed: int = 0,
) -> dict[str, Any]:
    """Write every format, check parity on the test studies, write the card and the metrics.

    Args:
        module: the inference module around the trained model.
        meta: the checkpoint's meta (``findings``, ``size``, ``model_params`` ...).
        params: the export params.
        seed: sampling seed for int8 calibration studies.

    Returns:
        The metrics written to ``params.metrics``.

    Raises:
        ExportError: missing inputs or a failed export.
        ParityError: an exported model beyond its tolerance (the metrics are written first).
    """
    torch.set_num_threads(params.threads)
    prepared, out = Path(params.prepared), Path(params.out)
    index = read_index(prepared)
    size = int(index["size"])
    test = ShardDataset(prepared, "test")
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():  # no stale file of a format not made this time
        (out / name).unlink(missing_ok=True)
    module = module.eval()

    files: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    timings: dict[str, float] = {}
    traced = None
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        for fmt in params.formats:
            path = out / FILES[fmt]
            t0 = time.perf_counter()
            if fmt in ("torchscript", "mobile") and traced is None:
                traced = trace(module, size)
            if fmt == "torchscript":
                info = export_torchscript(traced, path)
            elif fmt == "onnx":
                info = export_onnx(module, path, size, params.opset)
            elif fmt == "int8":
                reader = ShardCalibrationReader(
                    ShardDataset(prepared, "train"),
                    params.calibration_studies,
                    params.parity_batch,
                    seed,
                )
                if len(reader.indices) == 0:
                    raise ExportError(f"{prepared}: no training studies to calibrate int8 on")
                info = quantize_onnx(out / FILES["onnx"], path, reader, Path(tmp))
            elif fmt == "mobile":
                info = export_mobile(traced, path)
            else:
                if not executorch_available():
                    skipped[fmt] = "the executorch package is not installed"
                    log.info("export: skipping ExecuTorch (.pte): package not installed")
                    continue
                info = export_executorch(module, path, size)
            timings[fmt] = time.perf_counter() - t0
            files[fmt] = {
                "file": path.name,
                "runtime": RUNTIME_OF[fmt],
                "bytes": path.stat().st_size,
                "sha256": sha256(path),
                **info,
            }
            log.info("export: %s -> %s (%.1f s)", fmt, path, timings[fmt])

    runners = {
        fmt: load_runner(out / files[fmt]["file"], RUNTIME_OF[fmt], params.threads) for fmt in files
    }
    figures, summary = run_parity(
        eager_runner(module), runners, test, params.parity_batch, params.parity_studies
    )
    metrics = {
        "parity": figures,
        "studies": summary["studies"],
        "with_lateral": summary["with_lateral"],
        "seconds_per_study": summary["seconds_per_study"],
        "export_seconds": timings,
        "bytes": {fmt: f["bytes"] for fmt, f in files.items()},
        "skipped": skipped,
        "tolerances": {fmt: params.tolerances[fmt].model_dump() for fmt in files},
    }
    try:
        check_parity(figures, params.tolerances)
    except ParityError as exc:
        write_json(params.metrics, metrics | {"passed": False, "error": str(exc)})
        raise
    metrics["passed"] = True

    card = model_card(
        meta=meta,
        input_size=size,
        files=files,
        parity=figures,
        parity_summary={
            "studies": summary["studies"],
            "with_lateral": summary["with_lateral"],
            "skipped": skipped,
        },
        thresholds=read_thresholds(Path(params.thresholds)),
        default_policy=params.default_threshold_policy,
        test_metrics=read_test_metrics(Path(params.evaluation)),
        data_summary=training_data_summary(prepared),
        n_params=sum(p.numel() for p in module.parameters()),
        no_window=str(index.get("no_window", "bits")),
    )
    write_json(out / CARD_FILE, card)
    write_json(params.metrics, metrics)
    return metrics


def run_export(params: ExportParams, seed: int = 0) -> dict[str, Any]:
    """Load the checkpoint and run :func:`export_all`.

    Raises:
        ExportError, ParityError, CheckpointError: see :func:`export_all` and
            :func:`pipelines.model.load_model`.
    """
    from pipelines.model import load_model

    model, meta = load_model(params.checkpoint)
    prepared_size = read_index(params.prepared)["size"]
    if meta.get("prepared_size") not in (None, prepared_size):
        raise ExportError(
            f"{params.prepared}: image size {prepared_size} differs from the "
            f"{meta['prepared_size']} px the model was trained on"
        )
    if list(meta.get("findings", FINDINGS)) != list(FINDINGS):
        raise ExportError(f"{params.checkpoint}: label space differs from pipelines.labels")
    return export_all(CXRInference(model, meta.get("size")), meta, params, seed)


def main() -> None:
    """DVC entry point: ``python -m pipelines.export`` reads ``export`` and ``base``."""

    def go() -> dict[str, Any]:
        raw = load_params()
        base = parse_section(BaseParams, "base", raw, "params.yaml")
        return run_export(parse_section(ExportParams, "export", raw, "params.yaml"), base.seed)

    run_stage(go)


if __name__ == "__main__":
    main()
