"""PadChest: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` -> manifest rows.

Columns read: ``ImageID``, ``ImageDir``, ``StudyID``, ``PatientID``, ``Projection``, ``Labels``
and, when present, ``Rows_DICOM`` / ``Columns_DICOM`` / ``BitsStored_DICOM`` and
``PatientSex_DICOM``, ``PatientBirth`` (a year) and ``StudyDate_DICOM``: the last two only to
compute the age band at the study (:mod:`pipelines.demographics`; study year minus birth year),
then dropped. The ``Report`` text never enters memory, let alone an output.

- Path: ``{ImageDir}/{ImageID}`` relative to ``options.images`` (default: the CSV's folder).
- Keys: patient = ``PatientID``, study = ``StudyID``, image = ``ImageID``, prefixed ``padchest:``.
- View: ``Projection``: PA, AP, ``AP_horizontal`` (a supine AP) -> AP, L -> LATERAL; COSTAL, UNK
  and blank -> OTHER (accepted). ``EXCLUDE`` (images the PadChest curators flagged as unusable)
  is rejected with reason ``excluded_projection``.
- Labels: ``Labels`` is a Python-list string (``"['cardiomegaly', 'pleural effusion']"``),
  parsed with :func:`ast.literal_eval` once per distinct string; terms are lower-cased and
  stripped, then mapped by :data:`pipelines.labels.PADCHEST_TO_FINDINGS` (exact terms: e.g.
  ``mediastinal mass`` -> Mass but ``breast mass`` -> none; ``emphysema`` -> Emphysema but
  ``subcutaneous emphysema`` -> none; the table is ``docs/label-mapping.md``). A row with real
  terms is annotated for all 14: absent -> 0, ``['normal']`` -> all 0.
- Not annotated (all 14 NaN, the row accepted): a blank cell, and a row whose terms are only
  placeholders (:data:`pipelines.labels.PADCHEST_PLACEHOLDERS`: ``unchanged``, ``exclude``,
  ``suboptimal study``), which say nothing about the findings; beside real terms they are
  ignored. The reader logs how many accepted rows are placeholder-only, and how many carry terms
  outside PadChest's vocabulary (ignored), and returns both in ``SourceResult.counts``
  (``placeholder_labels``, ``unknown_terms``). A string that is not a list of strings is
  rejected (``unparsable_labels``).
- Sizes without verification: ``Columns_DICOM`` x ``Rows_DICOM``. Bits: ``BitsStored_DICOM``
  (the 16-bit PNGs hold 12-bit values; file verification keeps this value), else 0;
  photometric ''.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.demographics import age_bands, sexes, years_from_birth_year
from pipelines.labels import PADCHEST_PLACEHOLDERS, PADCHEST_TERMS, PADCHEST_TO_FINDINGS
from pipelines.sources import ReadOptions, SourceResult
from pipelines.sources.common import finish, make_source_keys, to_int, view_columns
from pipelines.sources.label_parsing import term_labels
from pipelines.sources.rows import TEXT_CHARS, Rows, blank
from pipelines.sources.tables import find_table, read_table

log = logging.getLogger(__name__)

SOURCE = "padchest"
IMAGE, DIR, STUDY, PATIENT = "ImageID", "ImageDir", "StudyID", "PatientID"
PROJECTION, LABELS = "Projection", "Labels"
ROWS, COLUMNS, BITS = "Rows_DICOM", "Columns_DICOM", "BitsStored_DICOM"
SEX, BIRTH, STUDY_DATE = "PatientSex_DICOM", "PatientBirth", "StudyDate_DICOM"


def parse_label_list(text: str) -> list[str] | None:
    """``"['a', ' B']"`` -> ``['a', 'b']``; None when the text is not a list of strings."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return None
    return [v.strip().lower() for v in value if v.strip()]


def parse_labels(cells: pd.Series, rows: Rows) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The findings of the ``Labels`` cells (unparsable ones rejected through ``rows``).

    Args:
        cells: the ``Labels`` column (text).
        rows: row tracker for ``unparsable_labels``.

    Returns:
        (findings: float32 frame of the 14, NaN for blank and placeholder-only rows;
        placeholder-only mask; mask of rows with a term outside
        :data:`pipelines.labels.PADCHEST_TERMS`).
    """
    text = cells.str.strip()
    unlabeled = blank(text)
    uniques = text[~unlabeled].unique()
    parsed = {u: parse_label_list(u) for u in uniques}
    terms = text.map(pd.Series(parsed, dtype=object, index=pd.Index(uniques)))
    rows.reject(
        (terms.isna().to_numpy() & ~unlabeled),
        "unparsable_labels",
        "Labels is not a Python list of strings",
    )
    good = {u: t for u, t in parsed.items() if t is not None}
    placeholder = text.map(
        {u: bool(t) and set(t) <= PADCHEST_PLACEHOLDERS for u, t in good.items()}
    )
    unknown = text.map({u: not set(t) <= PADCHEST_TERMS for u, t in good.items()})
    placeholder, unknown = (s.eq(True).to_numpy() for s in (placeholder, unknown))
    findings = term_labels(terms, PADCHEST_TO_FINDINGS)
    findings.loc[unlabeled | placeholder] = np.nan
    return findings, placeholder, unknown


def label_counts(
    manifest: pd.DataFrame, placeholder_ids: pd.Series, unknown: pd.DataFrame
) -> dict[str, int]:
    """Count (and log) the manifest rows that are placeholder-only or carry unknown terms.

    Args:
        manifest: the accepted rows (after file verification).
        placeholder_ids: image ids of the placeholder-only rows.
        unknown: ``image_id`` and ``terms`` (the ``Labels`` cell) of the rows with unknown terms.
    """
    kept = set(manifest["image_id"])
    unknown = unknown[unknown["image_id"].isin(kept)]
    counts = {
        "placeholder_labels": int(placeholder_ids.isin(kept).sum()),
        "unknown_terms": len(unknown),
    }
    if counts["placeholder_labels"]:
        log.info(
            "padchest: %d of %d images are labelled only 'unchanged' / 'exclude' / "
            "'suboptimal study': their 14 findings are not annotated (NaN)",
            counts["placeholder_labels"],
            len(manifest),
        )
    if counts["unknown_terms"]:
        found = {t for c in unknown["terms"].unique() for t in parse_label_list(c) or ()}
        examples = ", ".join(repr(t[:TEXT_CHARS]) for t in sorted(found - PADCHEST_TERMS)[:3])
        log.warning(
            "padchest: %d images carry terms outside PadChest's vocabulary (e.g. %s); those "
            "terms set no finding",
            counts["unknown_terms"],
            examples,
        )
    return counts


def _age_bands(sub: pd.DataFrame) -> pd.Series | str:
    """Age bands at the study from the birth year and the study date ('' when either is absent)."""
    if BIRTH not in sub or STUDY_DATE not in sub:
        return ""
    return age_bands(years_from_birth_year(sub[BIRTH], sub[STUDY_DATE]))


def read(input_path: Path, options: ReadOptions) -> SourceResult:
    """Read the PadChest label CSV.

    Args:
        input_path: the CSV (or a folder with exactly one ``PADCHEST_*.csv``).
        options: reader options (``images``, ``verify_files``, ``workers``, ``salt``).

    Raises:
        SourceError: the CSV is missing, unreadable or lacks a required column.
    """
    table = find_table(input_path, ["PADCHEST_*.csv", "PADCHEST_*.csv.gz"], "PadChest CSV")
    required = [IMAGE, DIR, STUDY, PATIENT, PROJECTION, LABELS]
    df = read_table(
        table,
        required,
        [ROWS, COLUMNS, BITS, SEX, BIRTH, STUDY_DATE],
        what="PadChest CSV",
        max_line_bytes=options.max_csv_line_bytes,
    )
    root = Path(options.images) if options.images else table.parent
    rows = Rows(len(df), SOURCE, table)
    rows.reject_blank(df, [IMAGE, DIR, STUDY, PATIENT])
    projection = df[PROJECTION].str.strip()
    rows.reject(
        (projection.str.upper() == "EXCLUDE").to_numpy(),
        "excluded_projection",
        "Projection is EXCLUDE (flagged unusable by the PadChest curators)",
    )
    findings, placeholder, unknown = parse_labels(df[LABELS], rows)
    image = df[IMAGE].str.strip()
    rows.reject_duplicates(image)

    keep = rows.keep
    sub = df.loc[keep].reset_index(drop=True)
    image = image[keep].reset_index(drop=True)
    frame = pd.DataFrame(
        {
            **make_source_keys(
                SOURCE, sub[PATIENT].str.strip(), sub[STUDY].str.strip(), image, options.salt
            ),
            "source": SOURCE,
            "path": sub[DIR].str.strip() + "/" + image,
            **view_columns(sub[PROJECTION]),
            "width": to_int(sub[COLUMNS]) if COLUMNS in sub else 0,
            "height": to_int(sub[ROWS]) if ROWS in sub else 0,
            "bits": to_int(sub[BITS]) if BITS in sub else 0,
            "photometric": "",
            "sex": sexes(sub[SEX]) if SEX in sub else "",
            "age_band": _age_bands(sub),
        }
    )
    frame = pd.concat([frame, findings.loc[keep].reset_index(drop=True)], axis=1)
    result = finish(frame, rows, root, options, len(df))
    unknown_rows = pd.DataFrame({"image_id": frame["image_id"], "terms": sub[LABELS].str.strip()})[
        unknown[keep]
    ]
    result.counts = label_counts(
        result.manifest, frame["image_id"][placeholder[keep]], unknown_rows
    )
    return result
