"""NIH ChestX-ray14: ``Data_Entry_2017*.csv`` -> manifest rows.

Input: the Data_Entry CSV (or a folder holding exactly one ``Data_Entry_2017*.csv``). Columns
used: ``Image Index``, ``Finding Labels`` (``|``-joined names of the 14 findings, or
``No Finding``), ``Patient ID``, ``View Position`` (PA/AP: NIH has no lateral views) and, when
present, ``OriginalImage[Width`` / ``Height]`` (the header's ``[Width,Height]`` splits in two)
and ``Patient Gender`` / ``Patient Age`` (kept only as sex and a 10-year age band,
:mod:`pipelines.demographics`; the 2017 release writes ages as ``058Y``, the 2020 one as ``58``,
and a few ages over 120 are data errors: unknown).

- Images: under ``options.images`` (default: the CSV's folder), found by file name in the root
  itself or in ``images*/`` and ``images*/images/`` (the official release splits them across
  ``images_001/images`` ... ``images_012/images``); ``path`` is relative to that root. A name
  found nowhere keeps the bare file name (a ``missing_file`` rejection if files are verified).
- Keys: patient = ``Patient ID``; study = the image index stem (NIH has one image per
  follow-up); image = ``Image Index``; all prefixed ``nih:``.
- Labels: all 14 annotated: a finding absent from ``Finding Labels`` is 0. A name outside the
  14 and ``No Finding`` rejects the row (``label_out_of_domain``); a blank cell is
  ``missing_value``.
- Sizes without verification: the original width/height columns (the 1024 px release PNGs are
  downsampled from them; verification reads the real size); bits 0, photometric ''.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.demographics import age_bands, sexes, years_of_age_string
from pipelines.labels import FINDINGS, NIH_NO_FINDING
from pipelines.sources import ReadOptions, SourceResult
from pipelines.sources.common import finish, make_source_keys, to_int, view_columns
from pipelines.sources.files import index_images
from pipelines.sources.label_parsing import term_labels
from pipelines.sources.rows import Rows
from pipelines.sources.tables import find_table, read_table

SOURCE = "nih"
IMAGE, LABELS, PATIENT, VIEW = "Image Index", "Finding Labels", "Patient ID", "View Position"
WIDTH, HEIGHT = "OriginalImage[Width", "Height]"
SEX, AGE = "Patient Gender", "Patient Age"


def read(input_path: Path, options: ReadOptions) -> SourceResult:
    """Read an NIH Data_Entry CSV.

    Args:
        input_path: the CSV, or a folder holding exactly one ``Data_Entry_2017*.csv``.
        options: reader options (``images``, ``verify_files``, ``workers``, ``salt``).

    Raises:
        SourceError: the CSV is missing, unreadable or lacks a required column.
    """
    table = find_table(input_path, ["Data_Entry_2017*.csv", "Data_Entry_2017*.csv.gz"], "NIH CSV")
    df = read_table(
        table,
        [IMAGE, LABELS, PATIENT, VIEW],
        [WIDTH, HEIGHT, SEX, AGE],
        what="NIH CSV",
        max_line_bytes=options.max_csv_line_bytes,
    )
    root = Path(options.images) if options.images else table.parent
    rows = Rows(len(df), SOURCE, table)
    rows.reject_blank(df, [IMAGE, PATIENT, LABELS])

    terms = df[LABELS].str.replace(r"\s*\|\s*", "|", regex=True).str.strip().str.split("|")
    labels = term_labels(terms, {f: (f,) for f in FINDINGS}, none_terms=[NIH_NO_FINDING], rows=rows)
    image = df[IMAGE].str.strip()
    rows.reject_duplicates(image)

    keep = rows.keep
    image = image[keep].reset_index(drop=True)
    sub = df.loc[keep].reset_index(drop=True)
    located = index_images(root)
    path = image.map(located).fillna(image) if located else image
    frame = pd.DataFrame(
        {
            **make_source_keys(
                SOURCE,
                sub[PATIENT].str.strip(),
                image.str.replace(r"\.[^./]*$", "", regex=True),
                image,
                options.salt,
            ),
            "source": SOURCE,
            "path": path,
            **view_columns(sub[VIEW]),
            "width": to_int(sub[WIDTH]) if WIDTH in sub else 0,
            "height": to_int(sub[HEIGHT]) if HEIGHT in sub else 0,
            "bits": 0,
            "photometric": "",
            "sex": sexes(sub[SEX]) if SEX in sub else "",
            "age_band": _age_bands(sub[AGE]) if AGE in sub else "",
        }
    )
    frame = pd.concat([frame, labels.loc[keep].reset_index(drop=True)], axis=1)
    return finish(frame, rows, root, options, len(df))


def _age_bands(ages: pd.Series) -> pd.Series:
    """Bands of NIH ages: ``58`` (2020 release) or ``058Y`` / ``006M`` (2017 release)."""
    return ages.map(years_of_age_string).pipe(age_bands)
