"""Write a study's DICOM outputs: the SR always, an SC per overlay given.

File names carry no PHI: ``sr-<study key>-<model key>.dcm`` and
``sc-<study key>-<model key>-<finding>-<view>.dcm``, the study key being the salted key ingest
gives the study (:func:`pipelines.dicom_out.identity.study_key`) and the model key 8 hex digits
of the algorithm version. The same study and model version always give the same names and UIDs,
so a rerun rewrites the same objects.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset

from pipelines.dicom_out.identity import Algorithm, Source, read_source, study_key
from pipelines.dicom_out.sc import build_sc
from pipelines.dicom_out.sr import FindingResult, build_sr
from pipelines.errors import PredictError
from pipelines.imaging import sniff_format
from pipelines.io import atomic_path

log = logging.getLogger(__name__)

#: An overlay per (finding, view): RGB uint8 (H, W, 3), view ``frontal`` or ``lateral``.
Overlays = Mapping[tuple[str, str], np.ndarray]
VIEWS = ("frontal", "lateral")


def require_dicom(paths: Sequence[str | Path]) -> None:
    """Refuse ``--dicom-out`` for inputs that are not DICOM (a DICOM folder or DICOM files).

    Raises:
        PredictError: a CSV of studies or a PNG / JPEG image (one line).
    """
    for p in map(Path, paths):
        if p.is_dir() or not p.is_file():
            continue  # a folder is read for DICOM only; a missing file is predict's error
        if p.suffix.lower() == ".csv":
            kind = "a CSV of studies"
        elif (fmt := sniff_format(p)) != "dicom":
            kind = f"a {fmt.upper()} image"
        else:
            continue
        raise PredictError(
            f"{p}: --dicom-out writes DICOM into the source study and needs DICOM inputs; "
            f"this is {kind}"
        )


def _result(row: pd.Series) -> FindingResult:
    trained = row["status"] == "trained"
    return FindingResult(
        finding=str(row["finding"]),
        trained=trained,
        probability=float(row["probability"]) if trained else math.nan,
        threshold=float(row["threshold"]) if trained else math.nan,
        positive=bool(row["positive"]) if trained else None,
        reason=str(row.get("reason", "") or ""),
        policy=str(row.get("threshold_policy", "") or ""),
    )


def _save(ds: Dataset, path: Path) -> Path:
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _sources(rows: pd.DataFrame) -> list[Source]:
    first = rows.iloc[0]
    sources = [read_source("frontal", first["frontal"])]
    if first["lateral"]:
        sources.append(read_source("lateral", first["lateral"]))
    return sources


def write_study(
    rows: pd.DataFrame,
    algorithm: Algorithm,
    out_dir: str | Path,
    overlays: Overlays | None = None,
) -> list[Path]:
    """Write the SR of one study's rows of :func:`pipelines.predict.predict` and its SCs.

    Args:
        rows: one study's rows (``frontal``, ``lateral``, ``finding``, ``status`` ...).
        algorithm: :func:`pipelines.dicom_out.identity.algorithm_from_card`.
        out_dir: the folder to write to (created).
        overlays: per (finding, view) an RGB uint8 overlay; None: the SR only.

    Returns:
        The files written: the SR first, then the SCs in the order of ``overlays``.

    Raises:
        ValueError: an overlay of a view the study did not use, or not RGB uint8.
    """
    out_dir = Path(out_dir)
    sources = _sources(rows)
    by_view = {s.view: s for s in sources}
    model_key = hashlib.sha256(algorithm.version.encode()).hexdigest()[:8]
    stem = f"{study_key(sources[0])}-{model_key}"
    results = [_result(r) for _, r in rows.iterrows()]
    written = [_save(build_sr(sources, results, algorithm), out_dir / f"sr-{stem}.dcm")]
    for n, ((finding, view), overlay) in enumerate((overlays or {}).items(), start=1):
        if view not in by_view:
            raise ValueError(f"overlay of {finding} on the {view} view, which was not read")
        sc = build_sc(by_view[view], overlay, finding, algorithm, sources, n)
        written.append(_save(sc, out_dir / f"sc-{stem}-{finding}-{view}.dcm"))
    return written
