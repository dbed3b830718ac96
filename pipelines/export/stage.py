"""Export stage: the trained model as files that run outside this code base, each proven to agree.

``python -m pipelines.export`` loads ``models/best.pt``, wraps it in
:class:`pipelines.export.inference.CXRInference` and runs :func:`export_all`: one short step per
format in ``export.formats`` (:mod:`pipelines.export.formats`, :mod:`pipelines.export.quantize`),
then parity of every file against the eager module on the test studies
(:mod:`pipelines.export.parity`), then the model card (:mod:`pipelines.export.card`). Outputs:
the files and ``metadata.json`` in ``export.out`` (``models/export``) and the parity figures in
``metrics/export.json``. A file beyond its tolerance fails the stage after the metrics are
written, and no card is written.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator

from pipelines.config import BaseParams, StageParams, load_params, parse_section
from pipelines.data import ShardDataset, read_index
from pipelines.errors import ExportError, ParityError
from pipelines.evaluation.provenance import dvc_hashes
from pipelines.export.card import (
    gate_spec,
    model_card,
    read_test_metrics,
    read_thresholds,
    training_data_summary,
)
from pipelines.export.formats import (
    FILES,
    FORMATS,
    RUNTIME_OF,
    Format,
    executorch_available,
    export_executorch,
    export_mobile,
    export_onnx,
    export_torchscript,
    sha256,
    trace,
)
from pipelines.export.inference import CXRInference, eager_runner
from pipelines.export.parity import check_parity, run_parity
from pipelines.export.quantize import ShardCalibrationReader, quantize_onnx
from pipelines.io import write_json, write_metrics
from pipelines.labels import FINDINGS
from pipelines.ood import OodGate
from pipelines.runners import CARD_FILE, load_runner
from pipelines.stage import run_stage

log = logging.getLogger(__name__)


class Tolerance(StageParams):
    """How far an exported model may stray from the eager one on the test studies.

    Attributes:
        max_abs_prob: bound on max |Δprobability| over all test studies and findings.
        max_auroc_drop: bound on (eager - exported) test macro AUROC.
        max_ood_shift: bound on the largest difference of the out-of-distribution gate's
            distance (:mod:`pipelines.ood`) over the test studies and views, as a share of the
            view's threshold.
    """

    max_abs_prob: float = Field(1e-4, gt=0)
    max_auroc_drop: float = Field(1e-3, ge=0)
    max_ood_shift: float = Field(1e-3, gt=0)


def _default_tolerances() -> dict[str, Tolerance]:
    return {
        "torchscript": Tolerance(max_abs_prob=1e-4, max_auroc_drop=1e-3, max_ood_shift=1e-3),
        "onnx": Tolerance(max_abs_prob=1e-4, max_auroc_drop=1e-3, max_ood_shift=1e-3),
        "mobile": Tolerance(max_abs_prob=1e-4, max_auroc_drop=1e-3, max_ood_shift=1e-3),
        "executorch": Tolerance(max_abs_prob=1e-3, max_auroc_drop=1e-3, max_ood_shift=1e-2),
        "int8": Tolerance(max_abs_prob=0.1, max_auroc_drop=0.005, max_ood_shift=0.5),
    }


class ExportParams(StageParams):
    """The ``export`` section of ``params.yaml``.

    Attributes:
        checkpoint: the trained model (``models/best.pt``).
        prepared: the prepared shards (test studies for parity, train for calibration).
        thresholds: evaluate's validation-chosen thresholds and calibration maps (optional:
            without them ``cxr predict`` decides nothing).
        evaluation: evaluate's test metrics with CIs (optional; copied into the model card).
        ood_gate: evaluate's out-of-distribution gate (:mod:`pipelines.ood`), built into every
            exported model (optional: without it ``cxr predict`` refuses every study).
        ood_metrics: what evaluate measured of the gate (copied into the model card).
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
    ood_gate: str = "outputs/evaluation/ood_gate.npz"
    ood_metrics: str = "metrics/evaluate_ood.json"
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


# --------------------------------------------------------------------------- the steps


@dataclass
class _Job:
    """What the per-format steps share: the module, the params, the folders, one trace."""

    module: CXRInference
    params: ExportParams
    size: int
    seed: int
    workdir: Path
    _traced: torch.jit.ScriptModule | None = None

    @property
    def out(self) -> Path:
        return Path(self.params.out)

    @property
    def traced(self) -> torch.jit.ScriptModule:
        """The traced module, traced once for TorchScript and the Lite Interpreter."""
        if self._traced is None:
            self._traced = trace(self.module, self.size)
        return self._traced


def _torchscript(job: _Job, path: Path) -> dict[str, Any]:
    return export_torchscript(job.traced, path)


def _onnx(job: _Job, path: Path) -> dict[str, Any]:
    return export_onnx(job.module, path, job.size, job.params.opset)


def _int8(job: _Job, path: Path) -> dict[str, Any]:
    prepared = Path(job.params.prepared)
    reader = ShardCalibrationReader(
        ShardDataset(prepared, "train"),
        job.params.calibration_studies,
        job.params.parity_batch,
        job.seed,
    )
    if len(reader.indices) == 0:
        raise ExportError(f"{prepared}: no training studies to calibrate int8 on")
    return quantize_onnx(job.out / FILES["onnx"], path, reader, job.workdir)


def _mobile(job: _Job, path: Path) -> dict[str, Any]:
    return export_mobile(job.traced, path)


def _executorch(job: _Job, path: Path) -> dict[str, Any]:
    return export_executorch(job.module, path, job.size)


STEPS: dict[str, Callable[[_Job, Path], dict[str, Any]]] = {
    "torchscript": _torchscript,
    "onnx": _onnx,
    "int8": _int8,
    "mobile": _mobile,
    "executorch": _executorch,
}


@dataclass
class Written:
    """What the format steps made: per format its card entry, what was skipped and timings."""

    files: dict[str, dict[str, Any]]
    skipped: dict[str, str]
    seconds: dict[str, float]


def write_formats(module: CXRInference, params: ExportParams, size: int, seed: int) -> Written:
    """Run the step of every format in ``params.formats``, in order, into ``params.out``.

    Raises:
        ExportError: an exporter failed, or no training studies to calibrate int8 on.
    """
    written = Written({}, {}, {})
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        job = _Job(module, params, size, seed, Path(tmp))
        for fmt in params.formats:
            if fmt == "executorch" and not executorch_available():
                written.skipped[fmt] = "the executorch package is not installed"
                log.info("export: skipping ExecuTorch (.pte): package not installed")
                continue
            path = job.out / FILES[fmt]
            t0 = time.perf_counter()
            info = STEPS[fmt](job, path)
            written.seconds[fmt] = time.perf_counter() - t0
            written.files[fmt] = {
                "file": path.name,
                "runtime": RUNTIME_OF[fmt],
                "bytes": path.stat().st_size,
                "sha256": sha256(path),
                **info,
            }
            log.info("export: %s -> %s (%.1f s)", fmt, path, written.seconds[fmt])
    return written


# --------------------------------------------------------------------------- the stage


def export_all(
    module: CXRInference,
    meta: dict[str, Any],
    params: ExportParams,
    seed: int = 0,
    gate: OodGate | None = None,
) -> dict[str, Any]:
    """Write every format, check parity on the test studies, write the card and the metrics.

    Args:
        module: the inference module around the trained model.
        meta: the checkpoint's meta (``findings``, ``size``, ``model_params`` ...).
        params: the export params.
        seed: sampling seed for int8 calibration studies.
        gate: the out-of-distribution gate ``module`` computes (recorded in the card).

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
    test = ShardDataset(prepared, "test", meta.get("findings", FINDINGS))
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():  # no stale file of a format not made this time
        (out / name).unlink(missing_ok=True)
    module = module.eval()

    written = write_formats(module, params, size, seed)
    runners = {
        fmt: load_runner(out / f["file"], RUNTIME_OF[fmt], params.threads)
        for fmt, f in written.files.items()
    }
    figures, summary = run_parity(
        eager_runner(module),
        runners,
        test,
        params.parity_batch,
        params.parity_studies,
        gate.thresholds() if gate is not None else None,
    )
    metrics = parity_metrics(figures, summary, written, params)
    try:
        check_parity(figures, params.tolerances)
    except ParityError as exc:
        write_metrics(params.metrics, metrics | {"passed": False, "error": str(exc)})
        raise
    metrics["passed"] = True
    card = model_card(
        meta=meta,
        input_size=size,
        files=written.files,
        parity=figures,
        parity_summary={k: summary[k] for k in ("studies", "with_lateral")}
        | {"skipped": written.skipped},
        thresholds=read_thresholds(Path(params.thresholds)),
        default_policy=params.default_threshold_policy,
        test_metrics=read_test_metrics(Path(params.evaluation)),
        data_summary=training_data_summary(prepared, test.findings)
        | {"dvc": dvc_hashes([params.checkpoint, params.prepared])},
        n_params=sum(p.numel() for p in module.parameters()),
        no_window=str(index.get("no_window", "bits")),
        gate=gate_spec(gate, read_test_metrics(Path(params.ood_metrics))),
    )
    write_json(out / CARD_FILE, card)
    write_metrics(params.metrics, metrics)
    return metrics


def parity_metrics(
    figures: dict[str, dict[str, float]],
    summary: dict[str, Any],
    written: Written,
    params: ExportParams,
) -> dict[str, Any]:
    """``metrics/export.json`` (without the verdict): parity, timings, sizes, tolerances."""
    return {
        "parity": figures,
        "studies": summary["studies"],
        "with_lateral": summary["with_lateral"],
        "seconds_per_study": summary["seconds_per_study"],
        "export_seconds": written.seconds,
        "bytes": {fmt: f["bytes"] for fmt, f in written.files.items()},
        "skipped": written.skipped,
        "tolerances": {fmt: params.tolerances[fmt].model_dump() for fmt in written.files},
    }


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
    unknown = set(meta.get("findings", FINDINGS)) - set(FINDINGS)
    if unknown:
        raise ExportError(
            f"{params.checkpoint}: findings {sorted(unknown)} are not in the label space "
            "(pipelines.labels)"
        )
    gate = load_gate(Path(params.ood_gate))
    return export_all(CXRInference(model, meta.get("size"), gate), meta, params, seed, gate)


def load_gate(path: Path) -> OodGate | None:
    """evaluate's gate, or None (logged: ``cxr predict`` will refuse every study).

    Raises:
        ExportError: the file exists but is not a gate.
    """
    if not path.is_file():
        log.warning("export: %s not found; the models will have no out-of-distribution gate "
                    "and cxr predict will refuse every study", path)  # fmt: skip
        return None
    try:
        return OodGate.load(path)
    except (KeyError, ValueError, OSError) as exc:
        raise ExportError(f"{path}: not an out-of-distribution gate ({exc})") from exc


def main() -> None:
    """DVC entry point: ``python -m pipelines.export`` reads ``export`` and ``base``."""

    def go() -> dict[str, Any]:
        raw = load_params()
        base = parse_section(BaseParams, "base", raw, "params.yaml")
        return run_export(parse_section(ExportParams, "export", raw, "params.yaml"), base.seed)

    run_stage(go)


if __name__ == "__main__":
    main()
