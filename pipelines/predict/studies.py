"""Which files make a study for ``cxr predict``: folders, image pairs and CSVs of studies.

The rules (view choice, header checks) are in :mod:`pipelines.predict`'s docstring; they are
ingest's and the pair stage's (:mod:`pipelines.dicom`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.dicom.choice import best_index
from pipelines.dicom.header import HEADER_TAGS, integer, quiet, read_header, text
from pipelines.dicom.policy import RADIOGRAPH_MODALITIES, for_processing, is_chest
from pipelines.dicom.reasons import Reject
from pipelines.dicom.view import FRONTAL_VIEWS, dicom_view
from pipelines.errors import PredictError, SourceError
from pipelines.imaging import sniff_format
from pipelines.limits import MAX_STUDY_FILES
from pipelines.sources.tables import check_lines


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
    """The header of a DICOM image, or None for a file that is not a readable DICOM image.

    Raises:
        PredictError: a deflated data set that would inflate past the limit (``too_large``).
    """
    with quiet():  # values are converted on access: keep pydicom's value-quoting warnings off
        try:
            return _parse_header(path)
        except Reject as rej:
            raise PredictError(f"{path}: {rej.reason}: {rej.detail}") from None
        except MemoryError:
            raise
        except Exception:  # not DICOM, or a header pydicom cannot parse or convert
            return None


def _parse_header(path: Path) -> _Header | None:
    """The header's values predict uses (None: not an image); pydicom's errors propagate."""
    ds = read_header(path, HEADER_TAGS)
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


def study_files(folder: Path, limit: int = MAX_STUDY_FILES) -> list[Path]:
    """The files of a study folder, sorted: recursive, hidden files and linked folders left out.

    The walk stops at the first file over ``limit``, so that a folder of 100,000 files costs
    ``limit`` paths of memory and time, not its whole listing.

    Raises:
        PredictError: more than ``limit`` files (:data:`pipelines.limits.MAX_STUDY_FILES`).
    """
    found: list[Path] = []
    folders = [folder]
    while folders:
        try:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(Path(entry.path))
                    elif entry.is_file() and not entry.name.startswith("."):
                        found.append(Path(entry.path))
                        if len(found) > limit:
                            raise PredictError(
                                f"{folder}: more than {limit:,} files; a study folder holds one "
                                "study's few images (a folder of many studies? give one study "
                                "folder, or a CSV of studies)"
                            )
        except OSError:  # an unreadable folder holds no file we can read
            continue
    return sorted(found)


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
    files = study_files(folder)
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
    # the messages name the study and its files (a study given as one file is named after it)
    where = f"{study.study} ({', '.join(str(p) for p in paths)})"
    check_headers(headers, where, folder=False)
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
        check_lines(csv, "CSV of studies", param="pipelines.limits.MAX_CSV_LINE_BYTES")
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except SourceError as exc:
        raise PredictError(str(exc)) from None
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
