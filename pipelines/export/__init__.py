"""The export stage: the trained model as files that run outside this code base.

- :mod:`~pipelines.export.inference`: :class:`CXRInference`, the one module every format
  exports (uint8 views + lateral mask -> probabilities), and the eager parity reference;
- :mod:`~pipelines.export.formats`: TorchScript, ONNX, the Lite Interpreter, ExecuTorch;
- :mod:`~pipelines.export.quantize`: int8 ONNX by onnxruntime static quantization;
- :mod:`~pipelines.export.parity`: every file against the eager module on the test studies;
- :mod:`~pipelines.export.card`: the model card ``metadata.json``;
- :mod:`~pipelines.export.stage`: :class:`ExportParams`, :func:`export_all`, the stage entry
  (``python -m pipelines.export``).

What tests, benchmarks and ``cxr predict``'s tests use is importable from here.
"""

from pipelines.export.card import model_card, read_thresholds
from pipelines.export.formats import (
    FILES,
    executorch_available,
    export_onnx,
    export_torchscript,
    trace,
)
from pipelines.export.inference import CXRInference, eager_runner, example_inputs
from pipelines.export.parity import check_parity, parity_figures
from pipelines.export.quantize import (
    ShardCalibrationReader,
    batchnorm_to_depthwise_conv,
    quantize_onnx,
)
from pipelines.export.stage import ExportParams, Tolerance, export_all, run_export

__all__ = [
    "FILES",
    "CXRInference",
    "ExportParams",
    "ShardCalibrationReader",
    "Tolerance",
    "batchnorm_to_depthwise_conv",
    "check_parity",
    "eager_runner",
    "example_inputs",
    "executorch_available",
    "export_all",
    "export_onnx",
    "export_torchscript",
    "model_card",
    "parity_figures",
    "quantize_onnx",
    "read_thresholds",
    "run_export",
    "trace",
]
