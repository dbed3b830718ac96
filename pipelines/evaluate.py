"""evaluate stage: score val and test with the best checkpoint, twice, and write the report.

Each study of the ``val`` and ``test`` splits of ``data/prepared`` is scored two ways by the
checkpoint ``models/best.pt``:

- ``dual``: the model as trained, with the study's frontal and (if present) lateral view;
- ``frontal_only``: **the same model with the lateral view masked**: ``has_lateral = False`` and
  a blank lateral image, i.e. exactly how the model sees a study that has no lateral view. The
  difference therefore measures what the lateral view adds to this model (not what a model
  trained on frontal images alone would reach). A model built with ``frontal_only: true`` has no
  lateral branch; it is scored once and no comparison is made.

Outputs (paths from the ``evaluate`` params section):

- ``outputs/evaluation/predictions.parquet``: one row per (split, study, mode): ``split``,
  ``study_key``, ``patient_key``, ``has_lateral``, ``mode``, ``y_<finding>``, ``p_<finding>``
  (salted keys only, no PHI); ``df.attrs`` holds the model summary;
- ``metrics/evaluate.json`` and ``metrics/evaluate_findings.json`` (DVC metrics: headline and
  per-finding details), ``outputs/evaluation/thresholds.json`` (validation-
  chosen thresholds for the model card), ``plots/evaluate/{roc,pr,calibration}/<finding>.csv``
  (DVC plots), ``outputs/evaluation/report.html`` (self-contained) and ``report.md``;
- ``metrics/evaluate_localisation.json``: the saliency localisation on the synthetic set's
  recorded finding regions, per finding and view, against a random-map baseline
  (:mod:`pipelines.evaluation.saliency`; ``measurable: false`` with the reason on real data).
  The report also shows, per finding, a gallery of test studies with their Grad-CAM overlays.

Everything after scoring is :func:`pipelines.evaluation.summary.summarize` on the saved
predictions, so ``cxr report --predictions outputs/evaluation/predictions.parquet --out DIR``
reproduces it without the model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch.utils.data import DataLoader

from pipelines.config import BaseParams, load_params, parse_section
from pipelines.data import ShardDataset
from pipelines.errors import UserError
from pipelines.evaluation.outputs import write_outputs
from pipelines.evaluation.provenance import collect_versions
from pipelines.evaluation.saliency import SaliencyParams, saliency_results
from pipelines.evaluation.summary import (
    FRONTAL_ONLY_METHOD,
    Evaluation,
    ReportParams,
    summarize,
)
from pipelines.explain import Explainer
from pipelines.io import write_json, write_parquet
from pipelines.labels import FINDINGS
from pipelines.model import load_model, to_model_input
from pipelines.runtime import resolve_device
from pipelines.stage import run_stage

log = logging.getLogger(__name__)

SPLITS_SCORED: tuple[str, ...] = ("val", "test")


class EvaluateParams(ReportParams, SaliencyParams):
    """The ``evaluate`` section of params.yaml (report keys: see :class:`ReportParams`; saliency
    keys: :class:`~pipelines.evaluation.saliency.SaliencyParams`).

    Attributes:
        checkpoint: the trained model (``models/best.pt``).
        prepared: the prepared shards to score (their ``val`` and ``test`` splits).
        batch_size: studies per forward pass (each pass scores both modes: 2x this).
        workers: DataLoader worker processes (0 = load in the main process).
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        out: folder of predictions, thresholds and the report.
        metrics: the headline DVC metrics JSON (macro / micro AUROC, lateral gain ...).
        findings_metrics: the per-finding DVC metrics JSON (CIs, counts, operating points).
        plots: folder of the DVC plot CSVs.
    """

    checkpoint: str = "models/best.pt"
    prepared: str = "data/prepared"
    batch_size: int = Field(32, ge=1)
    workers: int = Field(0, ge=0)
    device: str = "auto"
    out: str = "outputs/evaluation"
    metrics: str = "metrics/evaluate.json"
    findings_metrics: str = "metrics/evaluate_findings.json"
    plots: str = "plots/evaluate"


@torch.inference_mode()
def score_dataset(
    model: torch.nn.Module,
    dataset: ShardDataset,
    size: int | None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    workers: int = 0,
    frontal_only: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities of every study, with both views and with the lateral view masked.

    Both modes go through one forward pass per batch (the masked copies are appended to the
    batch; eval-mode batch norm is per sample, so this equals two separate passes).

    Args:
        model: in eval mode, ``model(frontal, lateral, has_lateral) -> logits (B, F)``.
        dataset: the studies (uint8 views).
        size: input size of the model (views are resized when the shards differ).
        batch_size: studies per pass.
        device: where to run.
        workers: DataLoader workers.
        frontal_only: also score with the lateral view masked.

    Returns:
        ``(dual, masked)``: float32 (N, F) probabilities in dataset order; ``masked`` is None
        when ``frontal_only`` is False.
    """
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    dual, masked = [], []
    for batch in loader:
        frontal = to_model_input(batch["frontal"].to(device), size)
        lateral = to_model_input(batch["lateral"].to(device), size)
        has_lateral = batch["has_lateral"].to(device=device, dtype=torch.bool)
        n = len(frontal)
        if frontal_only:
            blank = to_model_input(torch.zeros_like(batch["lateral"]).to(device), size)
            frontal = torch.cat([frontal, frontal])
            lateral = torch.cat([lateral, blank])
            has_lateral = torch.cat([has_lateral, torch.zeros_like(has_lateral)])
        probs = torch.sigmoid(model(frontal, lateral, has_lateral).float()).cpu().numpy()
        dual.append(probs[:n])
        if frontal_only:
            masked.append(probs[n:])
    width = len(dataset.findings)
    stack = lambda parts: np.concatenate(parts) if parts else np.zeros((0, width), np.float32)  # noqa: E731
    return stack(dual), (stack(masked) if frontal_only else None)


def predictions_frame(
    dataset: ShardDataset, split: str, dual: np.ndarray, masked: np.ndarray | None
) -> pd.DataFrame:
    """The predictions rows of one split: one per study and mode (keys, source, labels and
    probabilities of the dataset's findings)."""
    meta, findings = dataset.meta, dataset.findings
    base = pd.DataFrame(
        {
            "split": split,
            "study_key": meta["study_key"].astype(str).to_numpy(),
            "patient_key": meta["patient_key"].astype(str).to_numpy(),
            "has_lateral": dataset.has_lateral,
        }
    )
    if "source" in meta:
        base["source"] = meta["source"].astype(str).to_numpy()
    labels = pd.DataFrame(dataset.labels, columns=[f"y_{f}" for f in findings])
    frames = []
    for mode, probs in (("dual", dual), ("frontal_only", masked)):
        if probs is None:
            continue
        scores = pd.DataFrame(probs, columns=[f"p_{f}" for f in findings])
        frames.append(pd.concat([base.assign(mode=mode), labels, scores], axis=1))
    return pd.concat(frames, ignore_index=True)


def _model_summary(meta: dict[str, Any]) -> dict[str, Any]:
    keep = ("epoch", "val_macro_auroc", "size", "model_params")
    return {k: meta[k] for k in keep if k in meta}


def _datasets(params: EvaluateParams, findings: list[str]) -> dict[str, ShardDataset]:
    try:
        datasets = {s: ShardDataset(params.prepared, s, findings) for s in SPLITS_SCORED}
    except ValueError as exc:
        raise UserError(f"{params.prepared}: {exc}") from exc
    if len(datasets["test"]) == 0:
        raise UserError(f"{params.prepared}: no studies in the test split to evaluate")
    return datasets


def score_splits(params: EvaluateParams, device: torch.device) -> pd.DataFrame:
    """Load the checkpoint and score the val and test splits (both modes).

    Raises:
        CheckpointError: the checkpoint is missing or unusable.
        UserError: no test studies, or the checkpoint's label space differs from the shards'.
        FileNotFoundError: the prepared folder has no index.
    """
    datasets = _datasets(params, FINDINGS)  # data first: bad data fails before the model loads
    model, meta = load_model(params.checkpoint, map_location=device)
    findings = list(meta.get("findings", FINDINGS))
    if not set(findings) <= set(FINDINGS):
        raise UserError(
            f"{params.checkpoint}: model findings {findings} are not in the label space of the "
            "prepared data"
        )
    if tuple(findings) != FINDINGS:  # a head of chosen findings reads just those labels
        datasets = _datasets(params, findings)
    masked = not (meta.get("model_params") or {}).get("frontal_only", False)
    size = meta.get("size")
    frames = []
    for split, dataset in datasets.items():
        if len(dataset) == 0:
            log.warning("evaluate: no %s studies; operating points will not be chosen", split)
            continue
        start = time.perf_counter()
        dual, frontal = score_dataset(
            model, dataset, size, params.batch_size, device, params.workers, masked
        )
        log.info(
            "evaluate: scored %d %s studies in %.1f s",
            len(dataset),
            split,
            time.perf_counter() - start,
        )
        frames.append(predictions_frame(dataset, split, dual, frontal))
    predictions = pd.concat(frames, ignore_index=True)
    predictions.attrs["model"] = _model_summary(meta)
    predictions.attrs["untrained"] = dict(meta.get("untrained") or {})
    predictions.attrs["label_coverage"] = dict(meta.get("label_coverage") or {})
    predictions.attrs["frontal_only"] = (
        FRONTAL_ONLY_METHOD if masked else "not scored: the model has no lateral branch"
    )
    return predictions


def explain_test(
    params: EvaluateParams, predictions: pd.DataFrame, ev: Evaluation, device: torch.device
) -> dict[str, Any]:
    """Grad-CAM galleries and localisation of the test studies (the report's saliency).

    Raises:
        CheckpointError: the checkpoint is missing or unusable.
    """
    start = time.perf_counter()
    explainer = Explainer.from_checkpoint(params.checkpoint, device)
    dataset = ShardDataset(params.prepared, "test", explainer.findings)
    dual = ev.modes["dual"].thresholds
    thresholds = {
        f: (dual.get(f) or {}).get("youden") for f in ev.findings if f not in ev.not_trained
    }
    result = saliency_results(params, explainer, dataset, predictions, thresholds)
    loc = result["localisation"]
    if loc.get("measurable"):
        for view, m in loc["mean"].items():
            log.info(
                "evaluate: %s heatmap mass inside the finding regions %.1f%% (random map %.1f%%)",
                view,
                100 * m["mass_inside"],
                100 * m["baseline"],
            )
    else:
        log.info("evaluate: localisation not measurable: %s", loc.get("reason"))
    log.info("evaluate: saliency in %.1f s", time.perf_counter() - start)
    return result


def evaluate(
    params: EvaluateParams,
    run_params: dict[str, Any] | None = None,
    versions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score with the checkpoint, save the predictions, and write metrics, plots and report.

    Args:
        params: the stage params.
        run_params: params shown in the report (default: ``params``).
        versions: shown in the report (default: git commit and the DVC hashes of the
            checkpoint and the prepared data from ``dvc.lock``).

    Returns:
        The full metrics dict (``params.metrics`` and ``params.findings_metrics`` together).

    Raises:
        CheckpointError, UserError, FileNotFoundError: unusable inputs (see :func:`score_splits`).
    """
    device = resolve_device(params.device, "evaluate.device")
    predictions = score_splits(params, device)
    out = Path(params.out)
    write_parquet(predictions, out / "predictions.parquet")
    if versions is None:
        versions = collect_versions([params.checkpoint, params.prepared])
    start = time.perf_counter()
    ev = summarize(predictions, params, str(out / "predictions.parquet"))
    saliency = explain_test(params, predictions, ev, device) if params.saliency else None
    localisation = (saliency or {}).get("localisation") or {
        "measurable": False,
        "reason": "evaluate.saliency is false",
    }
    write_json(params.localisation_metrics, localisation)
    metrics = write_outputs(
        ev,
        html_path=out / "report.html",
        markdown_path=out / "report.md",
        metrics_path=params.metrics,
        findings_metrics_path=params.findings_metrics,
        thresholds_path=out / "thresholds.json",
        plots_dir=params.plots,
        run_params=run_params or params.model_dump(),
        versions=versions,
        saliency=saliency,
    )
    macro = ev.modes["dual"].discrimination.macro_auroc
    log.info(
        "evaluate: macro AUROC %s on %d test studies (%d patients); report in %.1f s -> %s",
        macro.format(),
        ev.counts["test_studies"],
        ev.counts["test_patients"],
        time.perf_counter() - start,
        out / "report.html",
    )
    if ev.paired_macro is not None:
        log.info("evaluate: lateral view, macro AUROC gain %s", ev.paired_macro.format())
    return metrics


def main() -> None:
    """DVC entry point: ``python -m pipelines.evaluate`` reads ``evaluate`` (and ``base``)."""

    def go() -> dict[str, Any]:
        raw = load_params()
        base = parse_section(BaseParams, "base", raw, "params.yaml")
        params = parse_section(EvaluateParams, "evaluate", raw, "params.yaml")
        return evaluate(params, run_params={"base": base.model_dump(), **params.model_dump()})

    run_stage(go)


if __name__ == "__main__":
    main()
