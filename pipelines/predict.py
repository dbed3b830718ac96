"""Run an exported model on chest X-ray studies (``cxr predict PATH``).

``PATH`` is one of:

- a **DICOM study folder** (searched recursively): the frontal and lateral images are chosen from
  the headers (:func:`pipelines.dicom.view.dicom_view`);
- **a pair of image files** ``(frontal, lateral)`` or one frontal image: DICOM, PNG or JPEG,
  recognised by content;
- a **CSV of studies** with a ``frontal`` column, an optional ``lateral`` column and an optional
  ``study`` column; relative paths are relative to the CSV's folder.

Images are decoded by :func:`pipelines.imaging.prepare_image`, the code that preprocess uses
(modality + VOI LUT, MONOCHROME1 inverted, resized to the model card's size), so a study is seen
here exactly as the model saw its training data.

DICOM headers are checked with ingest's rules (:mod:`pipelines.dicom.policy`): only radiographs
count (Modality CR, DX or DR, or no Modality), and a study whose BodyPartExamined names a
non-chest part (and no chest word) is refused, so predict refuses exactly the studies ingest
rejects as ``not_chest``; a blank, ``PORTABLE`` or ``UNKNOWN`` body part is accepted. A
``FOR PROCESSING`` image (raw detector data, ingest's ``for_processing``) is never used: in a
study folder it is skipped, as ingest rejects it, and a folder of nothing else, or such an image
given directly, is refused.

View choice in a DICOM folder (deterministic, documented here and in the output's ``frontal``
and ``lateral`` columns) is the pair stage's rule (:mod:`pipelines.dicom.choice`): the
**frontal** image is a PA view if there is one, else an AP view, then the one with the most
pixels (rows x columns), then the first path in string order; the **lateral** is a LATERAL
(LL / RL ...) view, the one with the most pixels, then the first path. Views ``OTHER``
(oblique, unknown) are not used.

Models are loaded by :mod:`pipelines.runners` (onnxruntime by default, so no PyTorch is needed
at inference); the model card beside the model gives the image size, the finding names and the
validation-chosen thresholds.

Errors about the input (a folder with no usable frontal view, images of several patients or
studies in one folder, a non-chest study, an unreadable image, a missing model card) raise
:class:`PredictError` with one clear sentence and no PHI: header values of identifying tags are
compared, never printed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydicom.errors import InvalidDicomError

from pipelines.dicom.choice import best_index
from pipelines.dicom.header import HEADER_TAGS, integer, quiet, read_header, text
from pipelines.dicom.policy import RADIOGRAPH_MODALITIES, for_processing, is_chest
from pipelines.dicom.view import FRONTAL_VIEWS, dicom_view
from pipelines.errors import DecodeError, PredictError
from pipelines.imaging import prepare_image, sniff_format
from pipelines.io import atomic_path
from pipelines.runners import load_runner, read_model_card

log = logging.getLogger(__name__)

DEFAULT_MODEL = "models/export/model.onnx"
OutputFormat = Literal["table", "json", "csv"]


# --------------------------------------------------------------------------- study discovery


@dataclass(frozen=True)
class StudyInput:
    """One study to predict: its display name and the chosen image files."""

    study: str
    frontal: Path
    lateral: Path | None = None
    frontal_view: str = ""  # PA / AP from a DICOM header, '' when unknown (PNG/JPEG)


@dataclass(frozen=True)
class _Header:
    path: Path
    view: str
    width: int  # Columns
    height: int  # Rows
    modality: str
    body_part: str
    patient: str  # compared only, never printed
    study_uid: str  # compared only, never printed
    processing: str = ""  # why it is a FOR PROCESSING image ('' when it is not)


def _read_header(path: Path) -> _Header | None:
    """The header of a DICOM image, or None for a file that is not a DICOM image."""
    with quiet():  # values are converted on access: keep pydicom's value-quoting warnings off
        try:
            ds = read_header(path, HEADER_TAGS)
        except (InvalidDicomError, EOFError, OSError, ValueError):
            return None
        if "Rows" not in ds or "Columns" not in ds:  # DICOMDIR, reports, presentation states
            return None
        view, _raw = dicom_view(ds)
        return _Header(
            path=path,
            view=view,
            width=integer(ds, "Columns", 0, strict=False) or 0,
            height=integer(ds, "Rows", 0, strict=False) or 0,
            modality=text(ds, "Modality").upper(),
            body_part=text(ds, "BodyPartExamined").upper(),
            patient=text(ds, "PatientID"),
            study_uid=text(ds, "StudyInstanceUID"),
            processing=for_processing(ds),
        )


def check_headers(headers: Sequence[_Header], where: str, *, folder: bool) -> list[_Header]:
    """Keep the FOR PRESENTATION radiographs of one chest study; raise on anything else.

    Raises:
        PredictError: no radiograph (e.g. a CT series), a FOR PROCESSING one given directly
            (``folder`` False) or only such ones, a non-chest body part (ingest's rule,
            :func:`pipelines.dicom.policy.non_chest_part`), several patients or several studies.
            Identifying values are compared, never printed.
    """
    radiographs = [h for h in headers if h.modality in RADIOGRAPH_MODALITIES]
    if not radiographs:
        found = ", ".join(sorted({h.modality for h in headers}))
        raise PredictError(
            f"{where}: not a chest radiograph study: modality {found}; "
            "predict accepts CR / DX radiographs"
        )
    raw = [h for h in radiographs if h.processing]  # skipped in a folder, as ingest rejects them
    if raw and (len(raw) == len(radiographs) or not folder):
        raise PredictError(
            f"{raw[0].path}: a FOR PROCESSING image ({raw[0].processing}): the detector's data "
            "before the vendor's processing, which the model never saw; use its FOR PRESENTATION "
            "version"
        )
    radiographs = [h for h in radiographs if not h.processing]
    not_chest = sorted({h.body_part for h in radiographs if not is_chest(h.body_part)})
    if not_chest:
        raise PredictError(
            f"{where}: not a chest study: BodyPartExamined is {', '.join(not_chest)}"
        )
    patients = {h.patient for h in radiographs if h.patient}
    if len(patients) > 1:
        raise PredictError(
            f"{where}: images of {len(patients)} different patients (PatientID differs); "
            "put one study per folder"
        )
    studies = {h.study_uid for h in radiographs if h.study_uid}
    if len(studies) > 1:
        raise PredictError(
            f"{where}: images of {len(studies)} different studies (StudyInstanceUID differs); "
            "put one study per folder"
        )
    return radiographs


def _best(headers: Sequence[_Header], frontal: bool) -> _Header:
    """The pair stage's choice among candidates (:mod:`pipelines.dicom.choice`)."""
    candidates = pd.DataFrame(
        {
            "view": [h.view for h in headers],
            "width": [h.width for h in headers],
            "height": [h.height for h in headers],
            "path": [str(h.path) for h in headers],
        }
    )
    return headers[best_index(candidates, frontal)]


def find_study_views(folder: str | Path) -> StudyInput:
    """Choose the frontal and lateral images of a DICOM study folder from their headers.

    Args:
        folder: a folder of DICOM files (searched recursively; non-DICOM files are skipped).

    Returns:
        The study, named after the folder, with the chosen files (rule in the module docstring).

    Raises:
        PredictError: no DICOM image, not a chest radiograph study, mixed patients or studies,
            or no PA / AP view.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    headers = [h for h in map(_read_header, files) if h is not None]
    if not headers:
        raise PredictError(f"{folder}: no DICOM images found ({len(files)} files looked at)")
    radiographs = check_headers(headers, str(folder), folder=True)
    frontal = [h for h in radiographs if h.view in FRONTAL_VIEWS]
    laterals = [h for h in radiographs if h.view == "LATERAL"]
    if not frontal:
        counts = Counter(h.view for h in radiographs)
        found = ", ".join(f"{v or 'none'} x{n}" for v, n in sorted(counts.items()))
        raise PredictError(
            f"{folder}: no usable frontal view (PA or AP) among {len(radiographs)} "
            f"radiograph(s); views found: {found}"
        )
    chosen = _best(frontal, frontal=True)
    lateral = _best(laterals, frontal=False).path if laterals else None
    return StudyInput(folder.name or str(folder), chosen.path, lateral, chosen.view)


def _is_dicom(path: Path) -> bool:
    try:
        return sniff_format(path) == "dicom"
    except Exception:  # unreadable: prepare_image reports it with its reason
        return False


def _check_image_files(study: StudyInput) -> StudyInput:
    """Header checks for DICOM files given directly (PNG / JPEG carry no header to check)."""
    paths = [p for p in (study.frontal, study.lateral) if p is not None]
    for p in paths:
        if not p.is_file():
            raise PredictError(f"{p}: image file not found")
    headers = [h for p in paths if _is_dicom(p) and (h := _read_header(p)) is not None]
    if not headers:
        return study
    check_headers(headers, study.study, folder=False)
    front = next((h for h in headers if h.path == study.frontal), None)
    if front is not None and front.view == "LATERAL":
        raise PredictError(
            f"{study.frontal}: its header says it is a LATERAL view, given as the frontal one "
            "(order: frontal first, lateral second)"
        )
    view = front.view if front is not None and front.view in ("PA", "AP") else ""
    return StudyInput(study.study, study.frontal, study.lateral, view)


def _read_csv_studies(csv: Path) -> list[StudyInput]:
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PredictError(f"{csv}: not a readable CSV ({type(exc).__name__})") from None
    table.columns = [c.strip().lower() for c in table.columns]
    if "frontal" not in table.columns:
        raise PredictError(f"{csv}: needs a 'frontal' column (and optionally 'lateral', 'study')")
    if table.empty:
        raise PredictError(f"{csv}: no studies listed")
    studies = []
    for row_no, row in enumerate(table.itertuples(index=False), start=2):
        row = row._asdict()
        frontal = str(row["frontal"]).strip()
        if not frontal:
            raise PredictError(f"{csv}:{row_no}: empty 'frontal' cell")
        lateral = str(row.get("lateral", "") or "").strip()
        name = str(row.get("study", "") or "").strip() or f"{csv.name}:{row_no}"
        studies.append(
            StudyInput(name, csv.parent / frontal, csv.parent / lateral if lateral else None)
        )
    return studies


def collect_studies(path: str | Path | Sequence[str | Path]) -> list[StudyInput]:
    """Turn ``PATH`` (folder, image file(s) or CSV) into studies with chosen files.

    Raises:
        PredictError: the path does not exist, or a rule in the module docstring is broken.
    """
    if not isinstance(path, str | Path):
        paths = [Path(p) for p in path]
        if len(paths) == 1:
            return collect_studies(paths[0])
        if len(paths) != 2:
            raise PredictError(
                f"give one folder / CSV / image, or two images (frontal, lateral); got {len(paths)}"
            )
        return [_check_image_files(StudyInput(paths[0].stem, paths[0], paths[1]))]
    path = Path(path)
    if path.is_dir():
        return [find_study_views(path)]
    if not path.exists():
        raise PredictError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".csv":
        return [_check_image_files(s) for s in _read_csv_studies(path)]
    return [_check_image_files(StudyInput(path.stem, path))]


# --------------------------------------------------------------------------- prediction


def _decode(path: Path, size: int, no_window: str = "bits") -> np.ndarray:
    try:
        image = prepare_image(path, size, no_window=no_window)  # type: ignore[arg-type]
    except DecodeError as exc:
        detail = f" ({exc.detail})" if exc.detail else ""
        raise PredictError(f"{path}: cannot read the image: {exc.reason}{detail}") from None
    except FileNotFoundError:
        raise PredictError(f"{path}: image file not found") from None
    return np.asarray(image, dtype=np.uint8)


@dataclass(frozen=True)
class Cutoffs:
    """Per-finding thresholds of one policy, for studies read with and without a lateral view."""

    policy: str
    dual: dict[str, float]
    frontal: dict[str, float]
    frontal_policy: str


def thresholds_from_card(card: dict[str, Any], policy: str) -> Cutoffs:
    """The thresholds of ``policy`` from the card (0.5 when the card has none).

    Studies read without a lateral view take the policy's ``thresholds_frontal_only`` (chosen
    by evaluate on the model run frontal-only) where the card has them. A finding whose
    threshold is null (not estimable on validation) gets 0.5.

    Raises:
        PredictError: the card has thresholds but not for this policy.
    """
    findings = card["output"]["findings"]
    table = card["output"].get("thresholds") or {}
    frontal = card["output"].get("thresholds_frontal_only") or {}
    if not table:
        log.warning("model card has no validation thresholds; using 0.5 for every finding")
        fixed = dict.fromkeys(findings, 0.5)
        return Cutoffs("fixed_0.5", fixed, fixed, "fixed_0.5")
    if policy not in table:
        raise PredictError(
            f"threshold policy '{policy}' not in the model card; choose one of {', '.join(table)}"
        )

    def fill(values: dict[str, Any]) -> dict[str, float]:
        return {f: 0.5 if values.get(f) is None else float(values[f]) for f in findings}

    dual = fill(table[policy])
    if policy in frontal:
        return Cutoffs(policy, dual, fill(frontal[policy]), f"{policy} (frontal-only)")
    return Cutoffs(policy, dual, dual, policy)


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
            (frontal, lateral); see the module docstring.
        model: the exported model; its ``metadata.json`` must lie beside it.
        runtime: ``auto`` (by suffix: .onnx -> onnxruntime), ``onnxruntime``, ``torchscript``,
            ``lite`` or ``executorch``.
        frontal_only: ignore lateral views (the model's frontal-only entry).
        threshold: a threshold policy of the card (e.g. ``youden``); None: the card's default.
        batch_size: studies per model call.
        threads: runtime threads (None: the runtime's default).

    Returns:
        One row per study and finding: ``study``, ``frontal``, ``lateral`` (file paths, '' when
        none), ``views`` (``frontal+lateral`` or ``frontal``), ``finding``, ``probability``,
        ``threshold``, ``positive`` (probability >= threshold), ``threshold_policy`` (with
        `` (frontal-only)`` where a study read without a lateral view took the card's
        frontal-only thresholds).

    Raises:
        PredictError: any input, model or card problem (one clear sentence, no PHI).
    """
    card = read_model_card(model)
    size = int(card["input"]["size"])
    no_window = card["input"].get("photometric", {}).get("no_window", "bits")
    findings = list(card["output"]["findings"])
    policy = threshold or card["output"].get("default_threshold_policy", "youden")
    cutoffs = thresholds_from_card(card, policy)
    studies = collect_studies(path)
    runner = load_runner(model, runtime, threads)

    rows: list[dict[str, Any]] = []
    for start in range(0, len(studies), max(1, batch_size)):
        chunk = studies[start : start + batch_size]
        frontal = np.stack([_decode(s.frontal, size, no_window) for s in chunk])[:, None]
        lateral = np.zeros_like(frontal)
        has_lateral = np.zeros(len(chunk), dtype=bool)
        for i, s in enumerate(chunk):
            if s.lateral is not None and not frontal_only:
                lateral[i, 0] = _decode(s.lateral, size, no_window)
                has_lateral[i] = True
        probs = runner(frontal, lateral, has_lateral)
        if probs.shape != (len(chunk), len(findings)):
            raise PredictError(
                f"{model}: output shape {probs.shape}, the card says {len(findings)} findings"
            )
        for i, s in enumerate(chunk):
            cuts = cutoffs.dual if has_lateral[i] else cutoffs.frontal
            label = cutoffs.policy if has_lateral[i] else cutoffs.frontal_policy
            for j, finding in enumerate(findings):
                p = float(probs[i, j])
                rows.append(
                    {
                        "study": s.study,
                        "frontal": str(s.frontal),
                        "lateral": str(s.lateral) if has_lateral[i] else "",
                        "views": "frontal+lateral" if has_lateral[i] else "frontal",
                        "finding": finding,
                        "probability": p,
                        "threshold": cuts[finding],
                        "positive": p >= cuts[finding],
                        "threshold_policy": label,
                    }
                )
    return pd.DataFrame(rows)


def format_predictions(df: pd.DataFrame, fmt: OutputFormat = "table") -> str:
    """Render :func:`predict`'s frame as a text table, JSON (one object per study) or CSV.

    Raises:
        PredictError: an unknown format.
    """
    if fmt == "csv":
        return df.to_csv(index=False, float_format="%.6f")
    if fmt == "json":
        studies = []
        for study, group in df.groupby("study", sort=False):
            first = group.iloc[0]
            studies.append(
                {
                    "study": study,
                    "frontal": first["frontal"],
                    "lateral": first["lateral"],
                    "views": first["views"],
                    "threshold_policy": first["threshold_policy"],
                    "findings": {
                        r.finding: {
                            "probability": round(float(r.probability), 6),
                            "threshold": round(float(r.threshold), 6),
                            "positive": bool(r.positive),
                        }
                        for r in group.itertuples()
                    },
                }
            )
        return json.dumps({"studies": studies}, indent=2) + "\n"
    if fmt == "table":
        blocks = []
        for study, group in df.groupby("study", sort=False):
            first = group.iloc[0]
            views = first["frontal"] + (f" + {first['lateral']}" if first["lateral"] else "")
            body = group[["finding", "probability", "threshold", "positive"]].copy()
            body["positive"] = body["positive"].map({True: "yes", False: ""})
            text = body.to_string(index=False, float_format=lambda v: f"{v:.3f}")
            blocks.append(
                f"study {study} ({first['views']}: {views}; "
                f"thresholds: {first['threshold_policy']})\n{text}"
            )
        return "\n\n".join(blocks) + "\n"
    raise PredictError(f"unknown output format '{fmt}'; choose table, json or csv")


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
        The rendered predictions (the CLI prints it).

    Raises:
        PredictError: as :func:`predict`, or an unknown format.
    """
    if fmt not in ("table", "json", "csv"):
        raise PredictError(f"unknown output format '{fmt}'; choose table, json or csv")
    df = predict(
        paths if len(paths) != 1 else paths[0],
        model=model,
        runtime=runtime,
        frontal_only=frontal_only,
        threshold=threshold,
    )
    text = format_predictions(df, fmt)
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return text
