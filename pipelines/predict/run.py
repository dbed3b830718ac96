"""``cxr predict``: decode the studies, run the exported model, decide per finding."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.dicom_out import algorithm_from_card, require_dicom, write_study
from pipelines.errors import DecodeError, PredictError
from pipelines.imaging import prepare_image
from pipelines.io import atomic_path
from pipelines.predict.decisions import REFUSED, Decisions, data_notice, decisions_from_card
from pipelines.predict.explain import (
    DEFAULT_CHECKPOINT,
    OVERLAY_SIZE,
    Overlays,
    findings_to_explain,
    load_explainer,
    study_overlays,
    write_overlays,
)
from pipelines.predict.render import FORMATS, OutputFormat, format_predictions
from pipelines.predict.studies import StudyInput, collect_studies
from pipelines.runners import CARD_FILE, Runner, Scores, load_runner, read_model_card
from pipelines.tta import draws_from_json, tta_runner

log = logging.getLogger(__name__)

DEFAULT_MODEL = "models/export/model.onnx"

#: The explanation's hook for ``--dicom-out``: given one study's rows of :func:`predict`, the
#: overlays to write as Secondary Captures, per (finding, view): RGB uint8 (H, W, 3).
OverlaysFor = Callable[[pd.DataFrame], Mapping[tuple[str, str], np.ndarray]]


def _decode(path: Path, size: int, no_window: str = "bits") -> np.ndarray:
    try:
        image = prepare_image(path, size, no_window=no_window)  # type: ignore[arg-type]
    except DecodeError as exc:
        detail = f" ({exc.detail})" if exc.detail else ""
        raise PredictError(f"{path}: cannot read the image: {exc.reason}{detail}") from None
    except FileNotFoundError:
        raise PredictError(f"{path}: image file not found") from None
    return np.asarray(image, dtype=np.uint8)


def _score(
    chunk: list[StudyInput], runner: Runner, card: dict[str, Any], frontal_only: bool
) -> tuple[Scores, np.ndarray]:
    """The model's scores of one batch and which studies had a lateral view read."""
    size = int(card["input"]["size"])
    no_window = card["input"].get("photometric", {}).get("no_window", "bits")
    frontal = np.stack([_decode(s.frontal, size, no_window) for s in chunk])[:, None]
    lateral = np.zeros_like(frontal)
    has_lateral = np.zeros(len(chunk), dtype=bool)
    for i, s in enumerate(chunk):
        if s.lateral is not None and not frontal_only:
            lateral[i, 0] = _decode(s.lateral, size, no_window)
            has_lateral[i] = True
    return runner(frontal, lateral, has_lateral), has_lateral


def _with_tta(runner: Runner, card: dict[str, Any], model: str | Path) -> Runner:
    """The runner with the card's test-time augmentation (:mod:`pipelines.tta`), if any: the
    calibration and thresholds were fitted on those means, so predict scores the same way."""
    draws = card["output"].get("tta")
    if not draws:
        return runner
    try:
        return tta_runner(runner, draws_from_json(draws))
    except ValueError as exc:
        raise PredictError(f"{Path(model).parent / CARD_FILE}: {exc}") from None


def _rows(
    study: StudyInput,
    probs: np.ndarray,
    has_lateral: bool,
    findings: list[str],
    dec: Decisions,
    refused: str | None,
) -> list[dict[str, Any]]:
    base = {
        "study": study.study,
        "frontal": str(study.frontal),
        "lateral": str(study.lateral) if has_lateral else "",
        "views": "frontal+lateral" if has_lateral else "frontal",
    }
    if refused is not None:
        return [base | {"finding": f} | dec.refuse(f, refused) for f in findings]
    return [
        base | {"finding": f} | dec.decide(f, float(probs[j]), has_lateral)
        for j, f in enumerate(findings)
    ]


def predict(
    path: str | Path | Sequence[str | Path],
    model: str | Path = DEFAULT_MODEL,
    runtime: str = "auto",
    frontal_only: bool = False,
    threshold: str | None = None,
    batch_size: int = 8,
    threads: int | None = None,
) -> pd.DataFrame:
    """Probabilities and threshold decisions of an exported model for each study in ``path``.

    Args:
        path: a DICOM study folder, a CSV of studies, an image file, or two image files
            (frontal, lateral); see :mod:`pipelines.predict`.
        model: the exported model; its ``metadata.json`` must lie beside it.
        runtime: ``auto`` (by suffix: .onnx -> onnxruntime), ``onnxruntime``, ``torchscript``,
            ``lite`` or ``executorch``.
        frontal_only: ignore lateral views (the model's frontal-only entry).
        threshold: a threshold policy of the card (e.g. ``youden``); None: the card's default.
        batch_size: studies per model call.
        threads: runtime threads (None: the runtime's default).

    Returns:
        One row per study and finding: ``study``, ``frontal``, ``lateral`` (file paths, '' when
        none), ``views`` (``frontal+lateral`` or ``frontal``), ``finding``, ``status``
        (``trained`` or ``not trained``), ``reason`` (why not trained), ``probability``,
        ``threshold``, ``positive`` (probability >= threshold; all three empty when not
        trained), ``threshold_policy`` (with `` (frontal-only)`` where a study read without a
        lateral view took the card's frontal-only thresholds). ``probability`` is calibrated by
        the card's maps. A study the out-of-distribution gate refuses has ``status``
        ``refused`` on every row, the reason in ``reason``, and no probability or decision.
        ``attrs["notice"]``: the model's data notice, if any
        (:func:`pipelines.predict.data_notice`).

    Raises:
        PredictError: any input, model or card problem (one clear sentence, no PHI).
    """
    card = read_model_card(model)
    findings = list(card["output"]["findings"])
    decisions = decisions_from_card(card, threshold)
    studies = collect_studies(path)
    runner = _with_tta(load_runner(model, runtime, threads), card, model)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(studies), max(1, batch_size)):
        chunk = studies[start : start + batch_size]
        scores, has_lateral = _score(chunk, runner, card, frontal_only)
        probs = scores.probabilities
        if probs.shape != (len(chunk), len(findings)):
            raise PredictError(
                f"{model}: output shape {probs.shape}, the card says {len(findings)} findings"
            )
        refused = decisions.refusals(scores.ood, has_lateral)
        for i, s in enumerate(chunk):
            rows += _rows(s, probs[i], bool(has_lateral[i]), findings, decisions, refused[i])
    df = pd.DataFrame(rows)
    df.attrs["notice"] = data_notice(card)
    return df


def refused_studies(df: pd.DataFrame) -> dict[str, str]:
    """The studies of :func:`predict`'s output that were refused, with the reason."""
    rows = df[df["status"] == REFUSED].drop_duplicates("study")
    return dict(zip(rows["study"].astype(str), rows["reason"].astype(str), strict=True))


def write_dicom_outputs(
    df: pd.DataFrame,
    model: str | Path,
    out_dir: str | Path,
    overlays_for: OverlaysFor | None = None,
) -> list[Path]:
    """Each scored study's SR (and SCs of its overlays) in ``out_dir``
    (:mod:`pipelines.dicom_out`); a refused study gets none (it has no result to report)."""
    algorithm = algorithm_from_card(read_model_card(model), model)
    written: list[Path] = []
    for _study, rows in df.groupby("study", sort=False):
        if (rows["status"] == REFUSED).any():
            continue
        overlays = overlays_for(rows) if overlays_for is not None else None
        written += write_study(rows, algorithm, out_dir, overlays)
    log.info("wrote %d DICOM object(s) to %s", len(written), out_dir)
    return written


def explain_predictions(
    path: str | Path | Sequence[str | Path],
    df: pd.DataFrame,
    model: str | Path,
    checkpoint: str | Path,
    out_dir: str | Path,
    findings: Sequence[str] | None = None,
    frontal_only: bool = False,
    threshold: str | None = None,
) -> tuple[list[Path], dict[str, Overlays]]:
    """Grad-CAM overlays of the predictions ``df`` of ``path`` (:mod:`pipelines.predict.explain`).

    Args:
        path: what :func:`predict` was given.
        df: its output.
        model: the exported model (its card: findings, status, decode settings).
        checkpoint: the eager checkpoint it was exported from.
        out_dir: where the PNGs go (created).
        findings: explain these (None: each study's positive findings).
        frontal_only, threshold: as in :func:`predict`.

    Returns:
        The PNG files written, and the overlays per study (``df``'s ``study``).

    Raises:
        PredictError: a missing or mismatched checkpoint, or an unknown finding.
    """
    card = read_model_card(model)
    names = list(card["output"]["findings"])
    unknown = sorted(set(findings or []) - set(names))
    if unknown:
        raise PredictError(f"unknown findings {unknown}; the model's: {', '.join(names)}")
    explainer = load_explainer(checkpoint, names)
    decisions = decisions_from_card(card, threshold)
    no_window = card["input"].get("photometric", {}).get("no_window", "bits")
    decode = lambda p: _decode(p, OVERLAY_SIZE, no_window)  # noqa: E731
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    by_study: dict[str, Overlays] = {}
    for n, study in enumerate(collect_studies(path)):
        rows = df.iloc[n * len(names) : (n + 1) * len(names)]
        chosen = findings_to_explain(rows, findings, decisions)
        overlays = study_overlays(study, chosen, explainer, decode, frontal_only)
        by_study[str(rows["study"].iloc[0])] = overlays
        written += write_overlays(overlays, n + 1, out)
    return written, by_study


def predict_command(
    paths: Sequence[str | Path],
    model: str | Path = DEFAULT_MODEL,
    runtime: str = "auto",
    frontal_only: bool = False,
    fmt: OutputFormat = "table",
    out: str | Path | None = None,
    threshold: str | None = None,
    dicom_out: str | Path | None = None,
    overlays_for: OverlaysFor | None = None,
    explain: str | Path | None = None,
    checkpoint: str | Path = DEFAULT_CHECKPOINT,
    explain_findings: Sequence[str] | None = None,
) -> str:
    """What ``cxr predict PATH... [--model] [--runtime] [--frontal-only] [--format] [--out]
    [--dicom-out DIR] [--explain DIR [--checkpoint] [--explain-finding]]`` does.

    Args:
        paths: one folder / CSV / image, or two images (frontal, lateral).
        model, runtime, frontal_only, threshold: as in :func:`predict`.
        fmt: ``table``, ``json`` or ``csv``.
        out: write the rendering there (atomically) as well as returning it.
        dicom_out: also write each study's DICOM SR there (:mod:`pipelines.dicom_out`); DICOM
            inputs only. With ``explain``, each overlay is also a Secondary Capture there.
        overlays_for: with ``dicom_out``, the overlays of a study (:data:`OverlaysFor`),
            written as Secondary Captures; None: those of ``explain``, if any.
        explain: write Grad-CAM overlays there (:func:`explain_predictions`).
        checkpoint: the eager checkpoint explaining needs.
        explain_findings: the findings to explain (None: the positive ones).

    Returns:
        The rendered predictions (the CLI prints it); the data notice, if any, is also logged
        (a CSV has no place for it).

    Raises:
        PredictError: as :func:`predict`, or an unknown format, or no usable checkpoint.
    """
    if fmt not in FORMATS:
        raise PredictError(f"unknown output format '{fmt}'; choose {', '.join(FORMATS)}")
    if dicom_out is not None:
        require_dicom(paths)
    if explain is not None and not Path(checkpoint).is_file():  # fail before predicting
        load_explainer(checkpoint, [])
    df = predict(
        paths if len(paths) != 1 else paths[0],
        model=model,
        runtime=runtime,
        frontal_only=frontal_only,
        threshold=threshold,
    )
    refused = refused_studies(df)
    if refused and df["study"].nunique() == 1:  # a single study: its refusal is the answer
        ((study, why),) = refused.items()
        raise PredictError(f"{study}: refused: {why}")
    for study, why in refused.items():
        log.warning("%s: refused: %s", study, why)
    if df.attrs.get("notice"):
        log.warning("%s", df.attrs["notice"])
    explained: dict[str, Overlays] = {}
    if explain is not None:
        target = paths if len(paths) != 1 else paths[0]
        written, explained = explain_predictions(
            target, df, model, checkpoint, explain, explain_findings, frontal_only, threshold
        )
        log.warning("explain: %d overlay(s) in %s (from %s)", len(written), explain, checkpoint)
    text = format_predictions(df, fmt)
    if dicom_out is not None:
        hook = overlays_for or (lambda rows: explained.get(str(rows["study"].iloc[0]), {}))
        write_dicom_outputs(df, model, dicom_out, hook)
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return text
