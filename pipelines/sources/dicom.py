"""DICOM folder reader (ingest source ``dicom``): one manifest row per accepted file.

Every regular file under the input folder (any name, with or without ``.dcm``, nested; symlinked
folders are followed once, so a link loop is never walked twice) is an input, and is either
accepted or rejected with a stable reason code (:mod:`pipelines.dicom.reasons`), so
``n_inputs == len(manifest) + len(rejected)``. Entries that are not regular files (a dangling or
looping symlink, a FIFO) are inputs too, rejected unopened (``broken_link``,
``not_a_regular_file``), so nothing in the folder is silently skipped.

Each file is opened once, in a pool of worker processes, and only its header is parsed
(:data:`pipelines.dicom.header.HEADER_TAGS`); then, without decoding any pixel:

1. the Pixel Data element is there and whole (:mod:`pipelines.dicom.integrity`);
2. the image is a usable chest radiograph (:func:`pipelines.dicom.policy.check_image`: modality,
   not FOR PROCESSING, body part, one frame, decodable photometric interpretation and transfer
   syntax);
3. it has a patient, study and SOP instance id, and a view (:func:`pipelines.dicom.view.find_view`).

An optional labels CSV keyed by ``study_uid`` (:func:`read_study_labels`) gives the findings.

PHI: identifying values (PatientID, StudyInstanceUID, SOPInstanceUID) are read only to be hashed
with the salt (:mod:`pipelines.keys`, values prefixed ``dicom:``); names, accession numbers and
institutions are never read. PatientSex, PatientAge, PatientBirthDate and StudyDate are read only
to keep the sex and a 10-year age band (:mod:`pipelines.demographics`; the age at the study from
the dates when PatientAge is absent); the dates themselves are dropped. Rejection details name
tags, sizes and syntaxes only, and pydicom's value-validation warnings (which quote values) are
switched off while reading.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.demographics import dicom_age_band, sex_of
from pipelines.dicom.header import (
    HEADER_TAGS,
    integer,
    open_dicom,
    quiet,
    text,
    transfer_syntax,
)
from pipelines.dicom.integrity import check_pixel_data, check_pixel_element, parse_header
from pipelines.dicom.policy import check_image
from pipelines.dicom.reasons import (
    BROKEN_LINK,
    CORRUPT,
    DUPLICATE_IMAGE_ID,
    EMPTY_FILE,
    NO_PATIENT_ID,
    NO_SOP_UID,
    NO_STUDY_UID,
    NO_VIEW,
    NOT_A_REGULAR_FILE,
    TOO_LARGE,
    UNREADABLE,
    Reject,
)
from pipelines.dicom.view import find_view
from pipelines.errors import SourceError
from pipelines.io import Rejection
from pipelines.keys import get_salt, make_key
from pipelines.labels import FINDINGS, UncertainPolicy, apply_uncertain_policy
from pipelines.limits import (
    MAX_CSV_LINE_BYTES,
    MAX_IMAGE_PIXELS,
    dataset_bytes_limit,
    too_many_pixels,
)
from pipelines.schema import conform_manifest
from pipelines.sources import ReadOptions, SourceResult

SOURCE = "dicom"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Outcome:
    path: str
    row: dict[str, Any] | None = None
    reason: str = ""
    detail: str = ""


# ---------------------------------------------------------------------------------------------
# Per-file checks (run in worker processes)
# ---------------------------------------------------------------------------------------------


def _identity(ds: Dataset) -> tuple[str, str, str]:
    patient = text(ds, "PatientID")
    if not patient:
        raise Reject(NO_PATIENT_ID, "PatientID (0010,0020) is missing or empty")
    study = text(ds, "StudyInstanceUID")
    if not study:
        raise Reject(NO_STUDY_UID, "StudyInstanceUID (0020,000D) is missing or empty")
    sop = text(ds, "SOPInstanceUID")
    if not sop and hasattr(ds, "file_meta"):
        sop = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
    if not sop:
        raise Reject(NO_SOP_UID, "SOPInstanceUID (0008,0018) is missing or empty")
    return patient, study, sop


def _inspect_open(
    fh: BinaryIO, path: str, rel: str, size: int, salt: bytes, max_pixels: int
) -> dict[str, Any]:
    # other elements are skipped by seeking, not parsed
    ds = parse_header(fh, HEADER_TAGS, dataset_bytes_limit(max_pixels))
    syntax = transfer_syntax(ds) or ExplicitVRLittleEndian
    check_pixel_element(ds, fh, size, syntax)
    check_image(ds, syntax)
    too_large = too_many_pixels(
        integer(ds, "Rows", 0), integer(ds, "Columns", 0), max_pixels, "ingest"
    )
    if too_large:
        raise Reject(TOO_LARGE, too_large)
    check_pixel_data(ds, fh, path, size, syntax)
    patient, study, sop = _identity(ds)
    found = find_view(ds)
    if not found.view:
        raise Reject(NO_VIEW, found.note)

    rows, cols = integer(ds, "Rows"), integer(ds, "Columns")
    return {
        "image_id": make_key("image", f"dicom:{sop}", salt),
        "patient_key": make_key("patient", f"dicom:{patient}", salt),
        "study_key": make_key("study", f"dicom:{study}", salt),
        "path": rel,
        "view": found.view,
        "view_raw": found.raw,
        "width": cols,
        "height": rows,
        "bits": integer(ds, "BitsStored") or integer(ds, "BitsAllocated") or 0,
        "photometric": text(ds, "PhotometricInterpretation").upper(),
        "sex": sex_of(text(ds, "PatientSex")),
        "age_band": dicom_age_band(
            text(ds, "PatientAge"), text(ds, "PatientBirthDate"), text(ds, "StudyDate")
        ),
    }


def _inspect_file(
    root: str | Path, rel: str, salt: bytes, max_pixels: int = MAX_IMAGE_PIXELS
) -> _Outcome:
    """Check one file and build its manifest row (no finding columns), or say why not.

    Never raises for a bad file: every failure becomes a reason code and a PHI-free detail.
    ``max_pixels``: rows x columns above which an image is rejected (``too_large``).
    """
    path = os.path.join(root, rel)
    try:
        size = os.path.getsize(path)
        if size == 0:
            return _Outcome(rel, reason=EMPTY_FILE, detail="the file is empty (0 bytes)")
        with quiet(), open_dicom(path) as fh:
            return _Outcome(rel, row=_inspect_open(fh, path, rel, size, salt, max_pixels))
    except Reject as rej:
        return _Outcome(rel, reason=rej.reason, detail=rej.detail)
    except OSError as exc:
        return _Outcome(rel, reason=UNREADABLE, detail=f"cannot be read ({type(exc).__name__})")
    except Exception as exc:  # a header value pydicom cannot convert, etc.
        return _Outcome(
            rel,
            reason=CORRUPT,
            detail=f"a header value cannot be decoded ({type(exc).__name__})",
        )


def _inspect_chunk(
    root: str, rels: Sequence[str], salt: bytes, max_pixels: int = MAX_IMAGE_PIXELS
) -> list[_Outcome]:
    return [_inspect_file(root, rel, salt, max_pixels) for rel in rels]


# ---------------------------------------------------------------------------------------------
# Folder walk, parallel map, labels, assembly
# ---------------------------------------------------------------------------------------------


def list_files(
    root: Path,
    exclude: Sequence[Path] = (),
    unreadable: list[str] | None = None,
    not_files: list[tuple[str, str, str]] | None = None,
) -> list[str]:
    """Every regular file under ``root``, as sorted POSIX paths relative to it.

    Symlinked folders are followed, but each real folder is walked once (no loops). Entries that
    are neither folders nor regular files (a dangling or looping symlink, a FIFO, a socket, a
    device) are never opened: a FIFO would block the reader.

    Args:
        root: the folder.
        exclude: files that are not inputs (the labels CSV when it sits inside ``root``).
        unreadable: if given, receives the relative paths (ending in ``/``) of folders that
            could not be listed.
        not_files: if given, receives ``(relative path, reason, detail)`` for every entry that is
            neither a folder nor a regular file (reasons ``broken_link``, ``not_a_regular_file``),
            so that the caller can list them as rejected inputs instead of losing them.
    """
    skip = {os.path.realpath(p) for p in exclude}
    seen: set[tuple[int, int]] = set()
    out: list[str] = []

    def on_error(exc: OSError) -> None:
        if unreadable is not None and exc.filename is not None:
            unreadable.append(Path(os.path.relpath(exc.filename, root)).as_posix() + "/")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full):
                if os.path.realpath(full) not in skip:
                    out.append(Path(os.path.relpath(full, root)).as_posix())
            elif not_files is not None:
                not_files.append(_not_a_file(full, root))
    if unreadable is not None:
        unreadable.sort()
    if not_files is not None:
        not_files.sort()
    return sorted(out)


def _not_a_file(full: str, root: Path) -> tuple[str, str, str]:
    """Why a folder entry that is not a regular file is not read (no target path is quoted)."""
    rel = Path(os.path.relpath(full, root)).as_posix()
    if os.path.islink(full):
        try:
            os.stat(full)
        except OSError as exc:
            why = "loops" if exc.errno == errno.ELOOP else "points to nothing"
            return rel, BROKEN_LINK, f"a symbolic link that {why} ({exc.strerror})"
    return rel, NOT_A_REGULAR_FILE, "not a regular file (a FIFO, socket or device): not opened"


def _resolve_workers(workers: int) -> int:
    if workers < 0:
        raise SourceError(f"workers must be 0 (all cores) or positive, got {workers}")
    if workers == 0:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    return workers


def _inspect_all(
    root: Path, rels: list[str], salt: bytes, workers: int, max_pixels: int = MAX_IMAGE_PIXELS
) -> list[_Outcome]:
    if workers == 1 or len(rels) < 2:
        return _inspect_chunk(str(root), rels, salt, max_pixels)
    size = max(1, min(128, math.ceil(len(rels) / (workers * 4))))
    chunks = [rels[i : i + size] for i in range(0, len(rels), size)]
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
            futures = [
                pool.submit(_inspect_chunk, str(root), chunk, salt, max_pixels) for chunk in chunks
            ]
            return [outcome for future in futures for outcome in future.result()]
    except BrokenProcessPool as exc:
        raise SourceError(
            f"{root}: a worker process died while reading DICOM headers (out of memory?); "
            "retry with fewer workers"
        ) from exc


def read_study_labels(
    path: Path, uncertain: UncertainPolicy, max_line_bytes: int = MAX_CSV_LINE_BYTES
) -> pd.DataFrame:
    """Read a DICOM labels CSV: ``study_uid`` plus finding columns coded 1 / 0 / -1 / blank.

    Columns that are not findings are ignored (logged); findings it lacks are NaN.

    Args:
        path: the CSV.
        uncertain: policy for -1 (:func:`pipelines.labels.apply_uncertain_policy`).
        max_line_bytes: the longest line (:func:`pipelines.sources.tables.check_lines`).

    Returns:
        float32 frame indexed by ``study_uid`` with the finding columns it has.

    Raises:
        SourceError: unreadable file, no ``study_uid`` or no finding column, a blank study_uid,
            a value outside 1 / 0 / -1 / blank (names the line, column and value), or one study
            with two different label rows.
    """
    if not path.is_file():
        raise SourceError(f"{path}: labels file not found")
    from pipelines.sources.tables import READ_ERRORS, check_lines

    check_lines(path, "labels CSV", max_line_bytes)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except UnicodeDecodeError:
        from pipelines.sources.tables import utf8_error_message

        raise SourceError(utf8_error_message(path, "labels CSV")) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, *READ_ERRORS) as exc:
        raise SourceError(f"{path}: not a readable CSV ({type(exc).__name__})") from None
    table.columns = [str(c).strip() for c in table.columns]
    if "study_uid" not in table.columns:
        raise SourceError(f"{path}: missing required column 'study_uid'")
    findings = [f for f in FINDINGS if f in table.columns]
    if not findings:
        raise SourceError(f"{path}: no finding column (expected some of {', '.join(FINDINGS)})")
    extra = [c for c in table.columns if c != "study_uid" and c not in FINDINGS]
    if extra:
        logger.warning("%s: ignoring non-finding columns %s", path, extra)

    uids = table["study_uid"].str.strip()
    blank_uid = np.flatnonzero(uids == "")
    if blank_uid.size:
        raise SourceError(f"{path}: line {blank_uid[0] + 2}: study_uid is blank")
    cells = table[findings].apply(lambda col: col.str.strip())
    codes = cells.apply(pd.to_numeric, errors="coerce")
    bad = (cells != "") & ~codes.isin([1, 0, -1])
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        value = str(cells.iat[row, col])[:20]
        raise SourceError(
            f"{path}: line {row + 2}, column '{findings[col]}': value '{value}' is not "
            f"1, 0, -1 or blank ({int(bad.to_numpy().sum())} such cell(s))"
        )
    values = apply_uncertain_policy(codes.to_numpy(dtype=np.float32), uncertain)
    labels = pd.DataFrame(values, columns=findings, index=pd.Index(uids, name="study_uid"))
    labels = labels.astype("float32")
    dup = labels.index.duplicated(keep=False)
    if dup.any():
        groups = labels[dup].groupby(level=0, sort=False)
        for _, group in groups:
            if len(group.drop_duplicates()) != 1:
                lines = [int(i) + 2 for i in np.flatnonzero(labels.index == group.index[0])]
                raise SourceError(
                    f"{path}: lines {', '.join(map(str, lines))} give different labels for "
                    "the same study_uid"
                )
        labels = labels[~labels.index.duplicated(keep="first")]
    return labels


def read(input: Path, options: ReadOptions) -> SourceResult:
    """Read a folder of DICOM files into manifest rows (headers only, in parallel).

    Args:
        input: the folder; every regular file below it is an input.
        options: ``labels`` (CSV keyed by ``study_uid``; not an input even inside the folder),
            ``uncertain``, ``workers`` (0 = all cores, 1 = in this process), ``salt`` (empty:
            :func:`pipelines.keys.get_salt`). ``images`` and ``verify_files`` do not apply:
            headers are always read.

    Returns:
        Manifest sorted by path (conformed to ``MANIFEST_COLUMNS``), rejections sorted by path,
        ``n_inputs`` and ``data_root = str(input)``.

    Raises:
        SourceError: the folder does not exist or is not a folder, a bad labels CSV
            (:func:`read_study_labels`), or a worker process died.
    """
    input = Path(input)
    if not input.exists():
        raise SourceError(f"{input}: DICOM folder not found")
    if not input.is_dir():
        raise SourceError(f"{input}: expected a folder of DICOM files, got a file")
    labels = (
        read_study_labels(Path(options.labels), options.uncertain, options.max_csv_line_bytes)
        if options.labels is not None
        else None
    )
    if options.labels is None and (input / "labels.csv").is_file():
        logger.warning(
            "%s: labels.csv found but no labels file was given: it is read as an input (and "
            "rejected); set the labels option to use it",
            input,
        )
    workers = _resolve_workers(options.workers)
    salt = options.salt or get_salt()
    unlisted: list[str] = []
    not_files: list[tuple[str, str, str]] = []
    exclude = [Path(options.labels)] if options.labels else []
    rels = list_files(input, exclude, unlisted, not_files)
    outcomes = _inspect_all(input, rels, salt, workers, options.max_image_pixels)

    rejected = [
        Rejection(SOURCE, rel, UNREADABLE, "the folder cannot be listed (permission denied?)")
        for rel in unlisted
    ]
    rejected += [Rejection(SOURCE, *entry) for entry in not_files]
    rows = _keep_first(outcomes, rejected)

    manifest = _assemble(rows, labels, salt)
    manifest.attrs["data_root"] = str(input)
    counts = Counter(r.reason for r in rejected)
    logger.info(
        "dicom: %d file(s), %d accepted, %d rejected %s",
        len(rels) + len(unlisted) + len(not_files),
        len(manifest),
        len(rejected),
        dict(sorted(counts.items())),
    )
    return SourceResult(
        manifest=manifest,
        rejected=sorted(rejected, key=lambda r: r.path),
        n_inputs=len(rels) + len(unlisted) + len(not_files),
        data_root=str(input),
    )


def _keep_first(outcomes: Sequence[_Outcome], rejected: list[Rejection]) -> list[dict[str, Any]]:
    """The accepted rows; rejected outcomes and repeated SOP instances go to ``rejected``.

    The outcomes are sorted by path: the first of a duplicate pair is kept.
    """
    rows: list[dict[str, Any]] = []
    first_by_id: dict[str, str] = {}
    for outcome in outcomes:
        if outcome.row is None:
            rejected.append(Rejection(SOURCE, outcome.path, outcome.reason, outcome.detail))
            continue
        image_id = outcome.row["image_id"]
        if image_id in first_by_id:
            rejected.append(
                Rejection(
                    SOURCE,
                    outcome.path,
                    DUPLICATE_IMAGE_ID,
                    f"same SOPInstanceUID as {first_by_id[image_id]} (kept)",
                )
            )
            continue
        first_by_id[image_id] = outcome.path
        rows.append(outcome.row)
    return rows


def _assemble(rows: list[dict[str, Any]], labels: pd.DataFrame | None, salt: bytes) -> pd.DataFrame:
    columns = ["image_id", "patient_key", "study_key", "path", "view", "view_raw"]
    columns += ["width", "height", "bits", "photometric", "sex", "age_band"]
    frame = pd.DataFrame(rows, columns=columns).assign(source=SOURCE)
    if labels is not None and len(labels):
        keyed = labels.set_axis(
            [make_key("study", f"dicom:{uid}", salt) for uid in labels.index], axis=0
        )
        matched = frame["study_key"].isin(keyed.index)
        n_studies = frame["study_key"].nunique()
        logger.info(
            "dicom labels: %d of %d studies have a labels row; %d labels row(s) match no study",
            frame.loc[matched, "study_key"].nunique(),
            n_studies,
            int((~keyed.index.isin(frame["study_key"])).sum()),
        )
        frame = frame.join(keyed, on="study_key")
    return conform_manifest(frame)
