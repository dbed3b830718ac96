"""Exported models as callables over numpy batches: the model card, the runtimes, the runner.

``cxr predict`` and the export stage's parity checks load models here. onnxruntime runs
without PyTorch; ``torchscript``, ``lite`` (``.ptl``) and ``executorch`` (``.pte``) import
torch lazily. The model card ``metadata.json`` (:data:`CARD_FILE`) beside the model gives the
image size, the finding names and the validation-chosen thresholds.

Loading never imports the DICOM or decoding modules.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipelines.errors import PredictError

CARD_FILE = "metadata.json"
INPUT_NAMES: tuple[str, str, str] = ("frontal", "lateral", "has_lateral")
OUTPUT_NAME = "probabilities"
OOD_OUTPUT = "ood_distance"  # the second output of a model with the gate (pipelines.ood)

Runtime = Literal["auto", "onnxruntime", "torchscript", "lite", "executorch"]
RUNTIMES: tuple[str, ...] = ("auto", "onnxruntime", "torchscript", "lite", "executorch")


@dataclass(frozen=True)
class Scores:
    """What a model returns for a batch of studies.

    Attributes:
        probabilities: float32 (B, F), raw (the card's calibration maps turn them into the
            probabilities its thresholds apply to).
        ood: float32 (B, 2), each view's squared distance to the training features (the
            out-of-distribution gate, :mod:`pipelines.ood`); None for a model exported
            without the gate.
    """

    probabilities: np.ndarray
    ood: np.ndarray | None = None

    @classmethod
    def of(cls, out: Any) -> Scores:
        """From a module's output: probabilities, or (probabilities, distances)."""
        if isinstance(out, tuple | list):
            return cls(_float32(out[0]), _float32(out[1]) if len(out) > 1 else None)
        return cls(_float32(out))


def _float32(x: Any) -> np.ndarray:
    x = x.float().numpy() if hasattr(x, "float") and hasattr(x, "numpy") else x
    return np.asarray(x, dtype=np.float32)


#: Runner: (frontal uint8 (B,1,S,S), lateral uint8 (B,1,S,S), has_lateral bool (B,)) -> Scores
Runner = Callable[[np.ndarray, np.ndarray, np.ndarray], Scores]


def read_model_card(model: str | Path) -> dict[str, Any]:
    """Read ``metadata.json`` beside an exported model.

    Raises:
        PredictError: the model or its card is missing or unreadable.
    """
    model = Path(model)
    if not model.is_file():
        raise PredictError(f"{model}: model file not found (run the export stage, or pass --model)")
    card_path = model.parent / CARD_FILE
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PredictError(f"{card_path}: model card not found beside the model") from None
    except json.JSONDecodeError as exc:
        raise PredictError(f"{card_path}: model card is not valid JSON ({exc.msg})") from None
    for key in ("input", "output"):
        if key not in card:
            raise PredictError(f"{card_path}: model card lacks its '{key}' section")
    return card


def resolve_runtime(model: str | Path, runtime: str = "auto") -> str:
    """The runtime for a model file: ``auto`` picks by suffix (.onnx, .ptl, .pte, else TorchScript).

    Raises:
        PredictError: an unknown runtime name.
    """
    if runtime not in RUNTIMES:
        raise PredictError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    suffix = Path(model).suffix.lower()
    return {".onnx": "onnxruntime", ".ptl": "lite", ".pte": "executorch"}.get(suffix, "torchscript")


def load_runner(model: str | Path, runtime: str = "auto", threads: int | None = None) -> Runner:
    """Load an exported model into a callable over numpy batches.

    Args:
        model: the exported file (``model.onnx``, ``model.int8.onnx``, ``model.ts.pt``,
            ``model.ptl`` or ``model.pte``).
        runtime: ``auto`` (by suffix), ``onnxruntime``, ``torchscript``, ``lite`` or
            ``executorch``. Only onnxruntime runs without PyTorch.
        threads: intra-op threads (None: the runtime's default).

    Returns:
        ``runner(frontal, lateral, has_lateral) -> Scores`` (probabilities float32 (B, F), and
        the gate's distances when the model has them); images uint8 (B, 1, S, S), has_lateral
        bool (B,).

    Raises:
        PredictError: the file is missing or the runtime cannot load it.
    """
    model = Path(model)
    if not model.is_file():
        raise PredictError(f"{model}: model file not found")
    runtime = resolve_runtime(model, runtime)
    try:
        if runtime == "onnxruntime":
            return _onnx_runner(model, threads)
        if runtime == "executorch":
            return _executorch_runner(model)
        return _torch_runner(model, lite=runtime == "lite", threads=threads)
    except PredictError:
        raise
    except ImportError as exc:
        raise PredictError(f"{model}: runtime '{runtime}' is not installed ({exc.name})") from None
    except Exception as exc:  # a corrupt or foreign file: one line, not a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PredictError(f"{model}: {runtime} cannot load it: {first[:300]}") from None


def _onnx_runner(model: Path, threads: int | None) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if tuple(names) != INPUT_NAMES:
        raise PredictError(f"{model}: inputs {names}, expected {list(INPUT_NAMES)}")
    outputs = [o.name for o in session.get_outputs() if o.name in (OUTPUT_NAME, OOD_OUTPUT)]

    def run(frontal: np.ndarray, lateral: np.ndarray, has_lateral: np.ndarray) -> Scores:
        feed = {
            "frontal": np.ascontiguousarray(frontal, dtype=np.uint8),
            "lateral": np.ascontiguousarray(lateral, dtype=np.uint8),
            "has_lateral": np.ascontiguousarray(has_lateral, dtype=bool),
        }
        return Scores.of(session.run(outputs, feed))

    return run


def _torch_runner(model: Path, lite: bool, threads: int | None) -> Runner:
    import torch  # lazily: onnxruntime inference needs no PyTorch

    if threads:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():  # "torch.jit.load is deprecated": said in the model card
        warnings.simplefilter("ignore", FutureWarning)
        if lite:
            from torch.jit.mobile import _load_for_lite_interpreter

            module = _load_for_lite_interpreter(str(model), map_location="cpu")
        else:
            module = torch.jit.load(str(model), map_location="cpu").eval()

    def run(frontal: np.ndarray, lateral: np.ndarray, has_lateral: np.ndarray) -> Scores:
        with torch.inference_mode():
            out = module(
                torch.from_numpy(np.ascontiguousarray(frontal, dtype=np.uint8)),
                torch.from_numpy(np.ascontiguousarray(lateral, dtype=np.uint8)),
                torch.from_numpy(np.ascontiguousarray(has_lateral, dtype=bool)),
            )
        return Scores.of(out)

    return run


def _executorch_runner(model: Path) -> Runner:
    import torch
    from executorch.runtime import Runtime  # optional package (see pipelines.export)

    method = Runtime.get().load_program(str(model)).load_method("forward")

    def run(frontal: np.ndarray, lateral: np.ndarray, has_lateral: np.ndarray) -> Scores:
        outs = []
        for i in range(len(frontal)):  # exported for batch 1 (pipelines.export)
            out = method.execute(
                [
                    torch.from_numpy(np.ascontiguousarray(frontal[i : i + 1], dtype=np.uint8)),
                    torch.from_numpy(np.ascontiguousarray(lateral[i : i + 1], dtype=np.uint8)),
                    torch.from_numpy(np.ascontiguousarray(has_lateral[i : i + 1], dtype=bool)),
                ]
            )
            outs.append(Scores.of(tuple(out)))
        if not outs:
            return Scores(np.zeros((0, 0), dtype=np.float32))
        ood = [o.ood for o in outs]
        return Scores(
            np.concatenate([o.probabilities for o in outs]),
            None if ood[0] is None else np.concatenate(ood),
        )

    return run
