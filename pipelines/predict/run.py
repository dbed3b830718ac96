"""``cxr predict``: decode the studies, run the exported model, decide per finding."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import DecodeError, PredictError
from pipelines.imaging import prepare_image
from pipelines.io import atomic_path
from pipelines.predict.decisions import Decisions, data_notice, decisions_from_card
from pipelines.predict.render import FORMATS, OutputFormat, format_predictions
from pipelines.predict.studies import StudyInput, collect_studies
from pipelines.runners import Runner, load_runner, read_model_card

log = logging.getLogger(__name__)

DEFAULT_MODEL = "models/export/model.onnx"


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
) -> tuple[np.ndarray, np.ndarray]:
    """(studies, findings) probabilities of one batch and which studies had a lateral view."""
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


def _rows(
    study: StudyInput, probs: np.ndarray, has_lateral: bool, findings: list[str], dec: Decisions
) -> list[dict[str, Any]]:
    base = {
        "study": study.study,
        "frontal": str(study.frontal),
        "lateral": str(study.lateral) if has_lateral else "",
        "views": "frontal+lateral" if has_lateral else "frontal",
    }
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
        lateral view took the card's frontal-only thresholds). ``attrs["notice"]``: the
        model's data notice, if any (:func:`pipelines.predict.data_notice`).

    Raises:
        PredictError: any input, model or card problem (one clear sentence, no PHI).
    """
    card = read_model_card(model)
    findings = list(card["output"]["findings"])
    decisions = decisions_from_card(card, threshold)
    studies = collect_studies(path)
    runner = load_runner(model, runtime, threads)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(studies), max(1, batch_size)):
        chunk = studies[start : start + batch_size]
        probs, has_lateral = _score(chunk, runner, card, frontal_only)
        if probs.shape != (len(chunk), len(findings)):
            raise PredictError(
                f"{model}: output shape {probs.shape}, the card says {len(findings)} findings"
            )
        for i, s in enumerate(chunk):
            rows += _rows(s, probs[i], bool(has_lateral[i]), findings, decisions)
    df = pd.DataFrame(rows)
    df.attrs["notice"] = data_notice(card)
    return df


def predict_command(
    paths: Sequence[str | Path],
    model: str | Path = DEFAULT_MODEL,
    runtime: str = "auto",
    frontal_only: bool = False,
    fmt: OutputFormat = "table",
    out: str | Path | None = None,
    threshold: str | None = None,
) -> str:
    """What ``cxr predict PATH... [--model] [--runtime] [--frontal-only] [--format] [--out]`` does.

    Args:
        paths: one folder / CSV / image, or two images (frontal, lateral).
        model, runtime, frontal_only, threshold: as in :func:`predict`.
        fmt: ``table``, ``json`` or ``csv``.
        out: write the rendering there (atomically) as well as returning it.

    Returns:
        The rendered predictions (the CLI prints it); the data notice, if any, is also logged
        (a CSV has no place for it).

    Raises:
        PredictError: as :func:`predict`, or an unknown format.
    """
    if fmt not in FORMATS:
        raise PredictError(f"unknown output format '{fmt}'; choose {', '.join(FORMATS)}")
    df = predict(
        paths if len(paths) != 1 else paths[0],
        model=model,
        runtime=runtime,
        frontal_only=frontal_only,
        threshold=threshold,
    )
    if df.attrs.get("notice"):
        log.warning("%s", df.attrs["notice"])
    text = format_predictions(df, fmt)
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return text
