"""The model card, ``metadata.json`` of the export folder (MONAI bundle spirit), from small pieces.

It holds versions (torch, onnxruntime, code commit), the input spec (views, size, channels,
dtype, normalisation, photometric handling), the output spec (finding names, validation-chosen
thresholds from evaluate), test metrics with CIs from ``metrics/evaluate.json``, a training data
summary (counts only), the parity figures and the exported files with their hashes. No PHI:
nothing of the DICOM headers reaches it.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.coverage import finding_status, label_coverage
from pipelines.data import ShardDataset, read_index
from pipelines.errors import ExportError
from pipelines.evaluation.calibration import calibration_from_json
from pipelines.evaluation.provenance import code_version
from pipelines.export.formats import dist_version
from pipelines.labels import FINDINGS
from pipelines.model import PIXEL_MEAN, PIXEL_STD
from pipelines.notices import data_notice
from pipelines.ood import METHOD, OodGate
from pipelines.runners import INPUT_NAMES, OOD_OUTPUT, OUTPUT_NAME
from pipelines.tta import RULE as TTA_RULE
from pipelines.tta import draws_from_json

log = logging.getLogger(__name__)

SCHEMA = "cxr-dag-model-card/1"
NOTES = (
    "TorchScript (torch.jit.trace) is deprecated in PyTorch; kept for its users.",
    "The Lite Interpreter (.ptl) is deprecated in favour of ExecuTorch (.pte).",
    "int8: onnxruntime static quantization, calibrated on training studies.",
)


# --------------------------------------------------------------------------- inputs of the card


Thresholds = dict[str, dict[str, float | None]]
#: Mappings of thresholds.json keyed by finding that are not threshold policies.
NOT_POLICIES = ("not_trained",)


def _policies(data: dict[str, Any]) -> Thresholds:
    """Entries mapping finding names to numbers (or null): one threshold policy each."""
    table: Thresholds = {}
    for policy, values in data.items():
        if (
            policy in NOT_POLICIES
            or not isinstance(values, dict)
            or not set(values) & set(FINDINGS)
        ):
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
        "not_trained": {finding: reason}, "notes": {...}, "calibration": {mode: maps},
        "tta": [draws]}``, all empty when the file is absent.

    Raises:
        ExportError: the file exists but is not a JSON object.
    """
    empty: dict[str, Any] = {
        "thresholds": {},
        "thresholds_frontal_only": {},
        "not_trained": {},
        "notes": {},
        "calibration": {},
        "tta": [],
    }
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
        "not_trained": {str(k): str(v) for k, v in (data.get("not_trained") or {}).items()},
        "notes": {k: v for k, v in data.items() if isinstance(v, str | int | float | bool)},
        "calibration": _calibration(path, data.get("calibration")),
        "tta": _tta(path, data.get("tta")),
    }


def _tta(path: Path, data: Any) -> list[dict[str, Any]]:
    """The test-time augmentation draws the thresholds were fitted with (checked: they load)."""
    if data is None:
        return []
    draws = data.get("draws") if isinstance(data, dict) else data
    try:
        draws_from_json(draws)
    except ValueError as exc:
        raise ExportError(f"{path}: {exc}") from exc
    return list(draws)


def _calibration(path: Path, data: Any) -> dict[str, Any]:
    """Per mode, the calibration maps the thresholds are on (checked: each must load)."""
    if not isinstance(data, dict):
        return {}
    for mode, cal in data.items():
        try:
            calibration_from_json(cal)
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"{path}: calibration of mode {mode} is malformed ({exc})") from exc
    return data


def gate_spec(gate: OodGate | None, measured: dict[str, Any] | None) -> dict[str, Any] | None:
    """The card's out-of-distribution gate: thresholds, the rule and what evaluate measured."""
    if gate is None:
        return None
    keep = ("test_refusal_rate", "test_refused", "test_studies", "reference_refused",
            "reference_images", "auroc", "by_kind")  # fmt: skip
    return {
        "method": METHOD,
        "output": OOD_OUTPUT,
        "thresholds": gate.thresholds(),
        "rule": "a study is refused when a view's squared distance exceeds its threshold "
        "(the lateral only when the study's lateral view is read)",
        "fit": "statistics on the training studies' features, thresholds on validation "
        f"(aiming to refuse {gate.fit_refusal:.1%} of validation studies)",
        "training_studies": {v: g.n_train for v, g in gate.views.items()},
        "measured": {k: v for k, v in (measured or {}).items() if k in keep},
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


def training_data_summary(prepared: Path, findings: Sequence[str] = FINDINGS) -> dict[str, Any]:
    """Counts only: per split, studies, with lateral and the label coverage of each finding
    (labelled positives, negatives and unannotated studies; :mod:`pipelines.coverage`); per
    source, what it is and its studies per split (from the prepared index)."""
    index = read_index(prepared)
    splits: dict[str, Any] = {}
    for split in index["splits"]:
        ds = ShardDataset(prepared, split, findings)
        splits[split] = {
            "studies": len(ds),
            "with_lateral": int(ds.has_lateral.sum()),
            "label_coverage": label_coverage(ds.labels, ds.findings),
        }
    # per source: its reader, whether it is the embedded synthetic dataset, studies per split
    # (cxr predict's data notice reads it; absent for data prepared before sources were kept)
    sources = index.get("sources") or {}
    return {"prepared_size": index["size"], "splits": splits, "sources": sources}


def versions() -> dict[str, Any]:
    """Library and code versions for the model card."""
    import onnx
    import onnxruntime

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": dist_version("onnxscript"),
        "executorch": dist_version("executorch"),
        "code": code_version(),
    }


# --------------------------------------------------------------------------- the card's pieces


def model_summary(meta: dict[str, Any], n_params: int) -> dict[str, Any]:
    """What was trained: architecture, its params, size, epoch, validation AUROC, precision."""
    return {
        "architecture": "DualViewDenseNet (pipelines.model)",
        "model_params": dict(meta.get("model_params", {})),
        "parameters": n_params,
        "epoch": meta.get("epoch"),
        "val_macro_auroc": meta.get("val_macro_auroc"),
        "trained_size": meta.get("size"),
        "precision": meta.get("precision"),
    }


def photometric_spec(input_size: int, no_window: str = "bits") -> dict[str, Any]:
    """How a DICOM becomes the input pixels (the same decoder as preprocess and ``cxr predict``).

    Args:
        input_size: the side of the square input.
        no_window: how preprocess scaled DICOMs without a VOI window (``bits`` or ``minmax``,
            :func:`pipelines.imaging.prepare_image`).
    """
    return {
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
    }


def input_spec(input_size: int, no_window: str = "bits") -> dict[str, Any]:
    """The inputs: names, views, shapes, dtype, value range, normalisation, photometrics."""
    view = ["batch", 1, input_size, input_size]
    return {
        "names": list(INPUT_NAMES),
        "views": {
            "frontal": "PA or AP (PA preferred)",
            "lateral": "LATERAL (LL / RL), optional",
        },
        "shape": {"frontal": view, "lateral": list(view), "has_lateral": ["batch"]},
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
        "photometric": photometric_spec(input_size, no_window),
    }


def output_spec(
    findings: list[str],
    thresholds: dict[str, Any],
    default_policy: str,
    untrained: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The output: name, shape, activation, findings, each finding's status and the thresholds.

    Args:
        findings: the model's outputs.
        thresholds: what :func:`read_thresholds` returns.
        default_policy: the policy ``cxr predict`` uses by default.
        untrained: what training recorded as not trained (the checkpoint meta's ``untrained``).

    ``status`` is ``trained`` or ``not trained: <reason>``
    (:func:`pipelines.coverage.finding_status` on the default policy): ``cxr predict`` decides
    only on trained findings.
    """
    not_trained = dict(untrained or {}) | thresholds.get("not_trained", {})
    policy = thresholds.get("thresholds", {}).get(default_policy)
    return {
        "name": OUTPUT_NAME,
        "shape": ["batch", len(findings)],
        "activation": "sigmoid (independent per finding)",
        "findings": findings,
        "status": finding_status(findings, not_trained, policy),
        "thresholds": thresholds.get("thresholds", {}),
        "thresholds_frontal_only": thresholds.get("thresholds_frontal_only", {}),
        "threshold_notes": thresholds.get("notes", {}),
        "threshold_rule": "positive when calibrated probability >= threshold",
        "default_threshold_policy": default_policy,
        "calibration": thresholds.get("calibration", {}),
        "calibration_rule": "each finding's raw probability goes through its map (calibration"
        "[dual] for studies read with a lateral view, calibration[frontal_only] without one) "
        "before the threshold",
        **({"tta": thresholds["tta"], "tta_rule": TTA_RULE} if thresholds.get("tta") else {}),
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
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metadata.json`` of the export folder (no PHI: counts, specs and versions only).

    Args:
        meta: the checkpoint's meta (``findings``, ``size``, ``model_params`` ...).
        input_size: the side of the exported models' square inputs (the prepared size).
        files: per format, what :func:`pipelines.export.stage.export_all` recorded.
        parity: per format, the parity figures on the test studies.
        parity_summary: studies and laterals compared, formats skipped.
        thresholds: what :func:`read_thresholds` returns.
        default_policy: the threshold policy ``cxr predict`` uses by default.
        test_metrics: evaluate's test metrics (None when absent).
        data_summary: :func:`training_data_summary` (None when unknown).
        n_params: the model's parameter count.
        no_window: how preprocess scaled DICOMs without a VOI window (``bits`` or ``minmax``);
            ``cxr predict`` decodes the same way.
        gate: :func:`gate_spec` (None: the model has no out-of-distribution gate, and
            ``cxr predict`` refuses every study with it).

    Returns:
        The card, plain JSON types.
    """
    return {
        "schema": SCHEMA,
        "name": "cxr-dag two-branch DenseNet-121 (frontal + optional lateral chest radiograph)",
        "task": "multi-label classification of the 14 ChestX-ray14 findings",
        "intended_use": "research and engineering; not a medical device, not for diagnosis",
        "notice": data_notice((data_summary or {}).get("sources")),
        "versions": versions(),
        "model": model_summary(meta, n_params),
        "input": input_spec(input_size, no_window),
        "output": output_spec(
            list(meta.get("findings", FINDINGS)), thresholds, default_policy, meta.get("untrained")
        )
        | {"ood_gate": gate},
        "files": files,
        "parity": {"test": parity, **parity_summary},
        "metrics": {"test": test_metrics},
        "training_data": data_summary,
        "notes": list(NOTES),
    }
