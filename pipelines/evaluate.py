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

With ``tta_views: K`` > 0 (test-time augmentation, :mod:`pipelines.tta`), every probability is
the mean over the study as it is and ``K`` seeded views of the augment policy; the predictions
keep the single pass beside it (``s_<finding>``), the report compares the two (paired AUROC
difference), and ``thresholds.json`` carries the draws for the card and ``cxr predict``.

Everything after scoring is :func:`pipelines.evaluation.summary.summarize` on the saved
predictions, so ``cxr report --predictions outputs/evaluation/predictions.parquet --out DIR``
reproduces it without the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from pipelines.augment import AugmentParams
from pipelines.config import BaseParams, load_params, parse_section
from pipelines.data import ShardDataset
from pipelines.errors import UserError
from pipelines.evaluation.gate import gate_metrics, reference_images
from pipelines.evaluation.outputs import write_outputs
from pipelines.evaluation.provenance import collect_versions
from pipelines.evaluation.saliency import SaliencyParams, saliency_results
from pipelines.evaluation.scoring import (
    SplitScores,
    predictions_frame,
    probabilities,
    score_dataset,
)
from pipelines.evaluation.summary import Evaluation, ReportParams, summarize
from pipelines.evaluation.table import FRONTAL_ONLY_METHOD
from pipelines.explain import Explainer
from pipelines.io import write_json, write_parquet
from pipelines.labels import FINDINGS
from pipelines.model import load_model, to_model_input
from pipelines.ood import OodGate, fit_gate
from pipelines.runtime import resolve_device
from pipelines.stage import run_stage
from pipelines.tta import ViewDraws, draws_to_json, tta_draws

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
        subgroups_metrics: the subgroup DVC metrics JSON (AUROC per sex, age band, view and
            source; the largest gaps and their flags).
        ood_gate: where the fitted out-of-distribution gate goes (for the export stage).
        ood_metrics: the gate's DVC metrics JSON (thresholds, refusal rates, AUROCs).
        ood_fit_refusal: the share of validation studies the gate's thresholds aim to refuse.
        tta_views: test-time augmentation: the probabilities are the mean over the study as it
            is and this many seeded views of the augment policy (:mod:`pipelines.tta`); 0: off.
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
    subgroups_metrics: str = "metrics/evaluate_subgroups.json"
    ood_gate: str = "outputs/evaluation/ood_gate.npz"
    ood_metrics: str = "metrics/evaluate_ood.json"
    ood_fit_refusal: float = Field(0.005, gt=0.0, lt=0.5)
    ood_shrinkage: float = Field(0.1, ge=0.0, le=1.0)
    tta_views: int = Field(0, ge=0, le=32)


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


@dataclass
class Scored:
    """What scoring with the checkpoint gave: the predictions table, each split's scores and
    features, and the model (for the gate's reference images)."""

    predictions: pd.DataFrame
    splits: dict[str, SplitScores]
    model: torch.nn.Module
    size: int | None
    findings: list[str]


def score_splits(
    params: EvaluateParams, device: torch.device, draws: Sequence[ViewDraws] = ()
) -> Scored:
    """Load the checkpoint and score the val and test splits (both modes; with the
    test-time augmentation ``draws``, if any: :mod:`pipelines.tta`).

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
    frames, splits = [], {}
    for split, dataset in datasets.items():
        if len(dataset) == 0:
            log.warning("evaluate: no %s studies; operating points will not be chosen", split)
            continue
        start = time.perf_counter()
        splits[split] = scores = score_dataset(
            model, dataset, size, params.batch_size, device, params.workers, masked, draws
        )
        log.info(
            "evaluate: scored %d %s studies in %.1f s",
            len(dataset),
            split,
            time.perf_counter() - start,
        )
        single = (scores.single, scores.single_masked) if draws else None
        frames.append(predictions_frame(dataset, split, scores.dual, scores.masked, single))
    predictions = pd.concat(frames, ignore_index=True)
    predictions.attrs["model"] = _model_summary(meta)
    predictions.attrs["untrained"] = dict(meta.get("untrained") or {})
    predictions.attrs["label_coverage"] = dict(meta.get("label_coverage") or {})
    predictions.attrs["frontal_only"] = (
        FRONTAL_ONLY_METHOD if masked else "not scored: the model has no lateral branch"
    )
    if draws:
        predictions.attrs["tta"] = {"views": len(draws), "draws": draws_to_json(draws)}
    return Scored(predictions, splits, model, size, findings)


def _by_view(scores: SplitScores) -> dict[str, np.ndarray]:
    """Each view's features of the studies that have it (frontal: all)."""
    out = {"frontal": scores.frontal}
    if scores.lateral is not None:
        out["lateral"] = scores.lateral[scores.has_lateral]
    return out


@torch.inference_mode()
def _reference_scores(
    scored: Scored, gate: OodGate, prepared_size: int, device: torch.device
) -> dict[str, Any]:
    """The gate's reference images (:mod:`pipelines.evaluation.gate`) scored as studies."""
    images, skipped = reference_images(prepared_size)
    if not images:
        return {"distances": np.zeros((0, 2)), "probs": np.zeros((0, 1)), "kinds": [],
                "names": [], "frontal_distances": np.zeros(0), "skipped": skipped}  # fmt: skip
    x = torch.from_numpy(np.stack([r.pixels for r in images])[:, None]).to(device)
    x = to_model_input(x, scored.size)
    f, lat = scored.model.view_features(x, x)
    present = torch.ones(len(x), dtype=torch.bool, device=device)
    lat_np = None if lat is None else lat.float().cpu().numpy()
    distances = gate.distances(f.float().cpu().numpy(), lat_np)
    return {
        "distances": distances,
        "frontal_distances": distances[:, 0],
        "probs": probabilities(scored.model, f, lat, present),
        "kinds": [r.kind for r in images],
        "names": [r.name for r in images],
        "skipped": skipped,
    }


def gate_results(params: EvaluateParams, scored: Scored, device: torch.device) -> dict[str, Any]:
    """Fit the out-of-distribution gate (:mod:`pipelines.ood`) and measure it.

    Statistics from the training studies' features, thresholds from validation; measured on
    the test studies and the real reference images. Writes the gate (``params.ood_gate``) for
    the export stage.

    Returns:
        :func:`pipelines.evaluation.gate.gate_metrics`, or ``{"fitted": False, "reason"}``.
    """
    if "val" not in scored.splits:
        return {"fitted": False, "reason": "no validation studies to fit the thresholds on"}
    start = time.perf_counter()
    train_set = ShardDataset(params.prepared, "train", scored.findings)
    if len(train_set) < 2:
        return {"fitted": False, "reason": "fewer than 2 training studies"}
    train = score_dataset(
        scored.model, train_set, scored.size, params.batch_size, device, params.workers, False
    )
    try:
        gate = fit_gate(
            _by_view(train),
            _by_view(scored.splits["val"]),
            params.ood_fit_refusal,
            params.ood_shrinkage,
        )
    except ValueError as exc:
        return {"fitted": False, "reason": str(exc)}
    gate.save(params.ood_gate)
    test = scored.splits["test"]
    test_part = {
        "distances": gate.distances(test.frontal, test.lateral),
        "has_lateral": test.has_lateral,
        "probs": test.dual,
    }
    reference = _reference_scores(scored, gate, train_set.size, device)
    metrics = {"fitted": True} | gate_metrics(gate, test_part, reference)
    log.info(
        "evaluate: ood gate refuses %d of %d test studies and %d of %d reference images "
        "(CT, MR, US, photographs); AUROC %s (energy %s, max logit %s); %.1f s",
        metrics["test_refused"],
        metrics["test_studies"],
        metrics["reference_refused"],
        metrics["reference_images"],
        *(metrics["auroc"][k] for k in ("mahalanobis", "energy", "max_logit")),
        time.perf_counter() - start,
    )
    return metrics


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
    augment: AugmentParams | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Score with the checkpoint, save the predictions, and write metrics, plots and report.

    Args:
        params: the stage params.
        run_params: params shown in the report (default: ``params``).
        versions: shown in the report (default: git commit and the DVC hashes of the
            checkpoint and the prepared data from ``dvc.lock``).
        augment, seed: the augment policy and ``base.seed`` the test-time augmentation draws
            from (``params.tta_views`` > 0; defaults: the params' defaults).

    Returns:
        The full metrics dict (``params.metrics`` and ``params.findings_metrics`` together).

    Raises:
        CheckpointError, UserError, FileNotFoundError: unusable inputs (see :func:`score_splits`).
    """
    device = resolve_device(params.device, "evaluate.device")
    seed = BaseParams().seed if seed is None else seed
    draws = tta_draws(augment or AugmentParams(), seed, params.tta_views)
    scored = score_splits(params, device, draws)
    predictions = scored.predictions
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
    gate = gate_results(params, scored, device)
    write_json(params.ood_metrics, gate)
    metrics = write_outputs(
        ev,
        html_path=out / "report.html",
        markdown_path=out / "report.md",
        metrics_path=params.metrics,
        findings_metrics_path=params.findings_metrics,
        thresholds_path=out / "thresholds.json",
        plots_dir=params.plots,
        subgroups_path=params.subgroups_metrics,
        run_params=run_params or params.model_dump(),
        versions=versions,
        saliency=saliency,
        gate=gate,
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
        augment = parse_section(AugmentParams, "augment", raw, "params.yaml")
        shown = {"base": base.model_dump(), **params.model_dump()}
        return evaluate(params, run_params=shown, augment=augment, seed=base.seed)

    run_stage(go)


if __name__ == "__main__":
    main()
