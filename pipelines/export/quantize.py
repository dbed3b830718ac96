"""int8 ONNX by onnxruntime post-training static quantization, calibrated on training studies.

``model.int8.onnx`` is onnxruntime ``quantize_static`` (QDQ, per-channel int8 weights in 7-bit
range, uint8 activations, MinMax calibration through a ``CalibrationDataReader`` over
``calibration_studies`` seeded train studies, :class:`ShardCalibrationReader`) after
``quant_pre_process`` and :func:`batchnorm_to_depthwise_conv` (DenseNet's pre-activation
BatchNorms cannot be folded and onnxruntime has no int8 BatchNormalization).

Weights use the reduced (7-bit) range: on x86 CPUs without VNNI (AVX2 only, e.g. many AMD EPYC
hosts) onnxruntime's u8 x s8 kernels sum pairs of products in saturating int16
(``vpmaddubsw``), which full-range weights overflow. On such a machine the demo model's int8
file was 0.30 off the eager probabilities (test macro AUROC -0.0095) with full range, 0.043 off
(-0.0003) with reduced range; MinMax, percentile and entropy calibration, 256 studies or
excluding the head and first convolutions all stayed near 0.30. A file that passes parity only
on some CPUs is not a product, so the range is not a parameter.

It was chosen over PyTorch FX graph-mode PTQ (x86 qconfig) and torchao pt2e: the onnxruntime
model needs no PyTorch at inference and is not deprecated, while ``torch.ao.quantization`` is
deprecated for torchao, warns that its quantized ``cat`` inputs need shared scales and runs only
under PyTorch, and pt2e with X86InductorQuantizer needs torchao and is fast only after a
``torch.compile`` per process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data import ShardDataset
from pipelines.errors import ExportError
from pipelines.export.formats import first_line, quiet
from pipelines.export.inference import stack_studies


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
            f, lat, has = stack_studies(self.dataset, self.indices[start : start + self.batch])[:3]
            yield {"frontal": f, "lateral": lat, "has_lateral": has}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration batch (input name -> array), None when all were read."""
        return next(self._batches, None)

    def rewind(self) -> None:
        """Start over from the first batch."""
        self._batches = self._iter()


def batchnorm_to_depthwise_conv(model: Any) -> int:
    """Rewrite each inference-mode ``BatchNormalization`` as the equal 1x1 depthwise ``Conv``.

    DenseNet is pre-activation (BN -> ReLU -> Conv): most BatchNorms follow a concatenation,
    not a convolution, so no exporter can fold them. onnxruntime has no int8 BatchNormalization,
    so each would stay float between a DequantizeLinear and a QuantizeLinear and break the int8
    chain; as a depthwise convolution (weight ``gamma / sqrt(var + eps)``, bias ``beta - mean *
    weight``) it quantizes like any convolution, and the int8 chain stays unbroken.

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
    """int8 ONNX by onnxruntime static quantization (QDQ, per-channel 7-bit weights, MinMax).

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
        with quiet():
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
                reduce_range=True,  # 7-bit weights: exact on CPUs without VNNI (docstring)
            )
    except Exception as exc:
        raise ExportError(f"{path}: onnxruntime quantization failed: {first_line(exc)}") from exc
    return {
        "method": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8 per-channel, 7-bit range (reduce_range)",
        "activations": "uint8 per-tensor",
        "calibration": "MinMax",
        "batchnorm_as_depthwise_conv": n_bn,
        "calibration_studies": len(reader.indices),
        "calibration_split": "train",
    }
