"""MIMIC-CXR-JPG 2.0.0: ``mimic-cxr-2.0.0-metadata.csv(.gz)`` + a label CSV -> manifest rows.

Input: the metadata CSV (one row per image: ``dicom_id``, ``subject_id``, ``study_id``,
``ViewPosition`` and, when present, ``Rows`` / ``Columns``). ``StudyDate``, ``StudyTime`` and
the procedure text are never read. ``options.labels`` (required) is
``mimic-cxr-2.0.0-chexpert.csv(.gz)`` or ``-negbio.csv(.gz)``: one row per study
(``subject_id``, ``study_id`` and the CheXpert observation names).

- Path: ``files/p{first two digits of subject}/p{subject}/s{study}/{dicom_id}.jpg`` relative to
  ``options.images`` (default: the metadata CSV's folder).
- Keys: patient = ``subject_id``, study = ``study_id``, image = ``dicom_id``, prefixed
  ``mimic:``. Non-numeric subject/study ids are rejected (``invalid_id``).
- Labels: per study, joined onto every image of the study on (subject_id, study_id); the same
  mapping and rules as CheXpert (:mod:`pipelines.sources.chexpert`): a blank (not mentioned) by
  ``options.blank`` (``zeros``: 0, the default; ``nan``; ``nan_unless_no_finding``: 0 where the
  study's ``No Finding`` is 1, else NaN) for the seven annotated findings, -1 by
  ``options.uncertain``, the other seven NaN. An image whose study has no label row is rejected
  (``missing_labels``). A study repeated in the label file is an error.
- View: ``ViewPosition`` through the canonical map (PA, AP, LATERAL/LL -> LATERAL; AP AXIAL,
  LAO, SWIMMERS, blank ... -> OTHER). Sizes without verification: ``Columns`` x ``Rows``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.errors import SourceError
from pipelines.labels import CHEXPERT_NO_FINDING, CHEXPERT_TO_FINDINGS
from pipelines.limits import MAX_CSV_LINE_BYTES
from pipelines.sources import ReadOptions, SourceResult
from pipelines.sources.common import finish, make_source_keys, to_int, view_columns
from pipelines.sources.label_parsing import blank_fill, coded_labels
from pipelines.sources.rows import Rows
from pipelines.sources.tables import find_table, read_table

SOURCE = "mimic"
DICOM, SUBJECT, STUDY, VIEW = "dicom_id", "subject_id", "study_id", "ViewPosition"
ROWS, COLUMNS = "Rows", "Columns"


def read_labels(path: Path, max_line_bytes: int = MAX_CSV_LINE_BYTES) -> pd.DataFrame:
    """Read the chexpert/negbio CSV: one row per (subject_id, study_id), text cells.

    The seven mapped observations are required, ``No Finding`` is read when present; a line over
    ``max_line_bytes`` refuses the file.

    Raises:
        SourceError: unreadable, a required column missing, or a study given twice.
    """
    what = "MIMIC label CSV"
    required = [SUBJECT, STUDY, *CHEXPERT_TO_FINDINGS]
    labels = read_table(
        path, required, [CHEXPERT_NO_FINDING], what=what, max_line_bytes=max_line_bytes
    )
    labels[SUBJECT] = labels[SUBJECT].str.strip()
    labels[STUDY] = labels[STUDY].str.strip()
    dup = labels.duplicated([SUBJECT, STUDY])
    if dup.any():
        raise SourceError(
            f"{path}: {what} has {int(dup.sum())} repeated (subject_id, study_id) rows"
        )
    return labels


def study_findings(
    subject: pd.Series, study: pd.Series, labels: pd.DataFrame, rows: Rows, options: ReadOptions
) -> pd.DataFrame:
    """Each image's findings from its study's label row (``missing_labels`` when it has none).

    Args:
        subject: each image's subject_id.
        study: each image's study_id.
        labels: :func:`read_labels` of ``options.labels``.
        rows: row tracker for ``missing_labels`` and ``label_out_of_domain``.
        options: ``labels`` (named in the rejection), ``blank`` and ``uncertain``.

    Raises:
        SourceError: ``blank: nan_unless_no_finding`` and the label CSV has no ``No Finding``.
    """
    label_file = Path(options.labels or "")
    joined = pd.DataFrame({SUBJECT: subject, STUDY: study}).merge(
        labels, on=[SUBJECT, STUDY], how="left", indicator=True, validate="many_to_one"
    )
    unlabeled = (joined["_merge"] == "left_only").to_numpy()
    rows.reject(unlabeled, "missing_labels", f"study has no row in {label_file.name}")
    joined.loc[unlabeled, [c for c in labels.columns if c not in (SUBJECT, STUDY)]] = ""
    blank_value = blank_fill(joined, options.blank, label_file, "MIMIC label CSV")
    return coded_labels(
        joined, CHEXPERT_TO_FINDINGS, rows, blank_value=blank_value, policy=options.uncertain
    )


def read(input_path: Path, options: ReadOptions) -> SourceResult:
    """Read MIMIC-CXR-JPG metadata and join the study labels.

    Args:
        input_path: the metadata CSV (or a folder with exactly one
            ``mimic-cxr-2.0.0-metadata.csv(.gz)``).
        options: reader options; ``labels`` names the chexpert/negbio CSV; ``blank`` and
            ``uncertain`` resolve its blank and -1 cells.

    Raises:
        SourceError: no label file given, or a CSV missing/unreadable/lacking a column
            (``No Finding`` too under ``blank: nan_unless_no_finding``).
    """
    table = find_table(
        input_path,
        ["mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-metadata.csv.gz"],
        "MIMIC metadata CSV",
    )
    if options.labels is None:
        raise SourceError(
            f"{table}: MIMIC needs a label file: set ingest.labels to "
            "mimic-cxr-2.0.0-chexpert.csv(.gz) or mimic-cxr-2.0.0-negbio.csv(.gz)"
        )
    df = read_table(
        table,
        [DICOM, SUBJECT, STUDY, VIEW],
        [ROWS, COLUMNS],
        what="MIMIC metadata CSV",
        max_line_bytes=options.max_csv_line_bytes,
    )
    labels = read_labels(Path(options.labels), options.max_csv_line_bytes)
    root = Path(options.images) if options.images else table.parent
    rows = Rows(len(df), SOURCE, table)
    rows.reject_blank(df, [DICOM, SUBJECT, STUDY])
    subject = df[SUBJECT].str.strip()
    study = df[STUDY].str.strip()
    for name, values in ((SUBJECT, subject), (STUDY, study)):
        bad = ~values.str.fullmatch(r"\d{2,}").to_numpy()
        rows.reject(bad, "invalid_id", f"'{name}' is not a number of two or more digits")

    findings = study_findings(subject, study, labels, rows, options)
    dicom = df[DICOM].str.strip()
    rows.reject_duplicates(dicom)

    keep = rows.keep
    sub = df.loc[keep].reset_index(drop=True)
    subject, study, dicom = (s[keep].reset_index(drop=True) for s in (subject, study, dicom))
    path = (
        "files/p" + subject.str.slice(0, 2) + "/p" + subject + "/s" + study + "/" + dicom + ".jpg"
    )
    frame = pd.DataFrame(
        {
            **make_source_keys(SOURCE, subject, study, dicom, options.salt),
            "source": SOURCE,
            "path": path,
            **view_columns(sub[VIEW]),
            "width": to_int(sub[COLUMNS]) if COLUMNS in sub else 0,
            "height": to_int(sub[ROWS]) if ROWS in sub else 0,
            "bits": 0,
            "photometric": "",
        }
    )
    frame = pd.concat([frame, findings.loc[keep].reset_index(drop=True)], axis=1)
    return finish(frame, rows, root, options, len(df))
