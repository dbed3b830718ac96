"""Open-i / Indiana University chest X-ray: the paired CSV -> manifest rows.

Input: the CSV (``.csv`` or ``.csv.gz``), or a folder holding exactly one such file.

Columns read: ``study_uid``, ``image_id``, ``png_name``, ``view_position``, ``mesh_major`` and,
when present, ``rows`` / ``columns`` and ``sex`` (kept as F / M / unknown,
:mod:`pipelines.demographics`; the public release leaves it mostly blank, and has no age). The
report text (``findings``, ``impression``) is never read.

- Path: ``png_name`` relative to ``options.images`` (default: the CSV's folder).
- Keys: IU has **no patient ids**: patient = study = ``study_uid`` (each report is treated as its
  own patient, so a real patient with two reports may land in two splits; nothing in the public
  release can prevent that). image = ``image_id``. All prefixed ``openi:``.
- View: ``view_position`` through the canonical map (PA, AP, LL/LATERAL -> LATERAL).
- Labels: ``mesh_major`` is ``|``-joined MeSH terms with ``/`` modifiers
  (``Pleural Effusion/bilateral/small``). The main term (before the first ``/``, case-folded) is
  mapped by :data:`pipelines.labels.OPENI_MESH_TO_FINDINGS`, and (main term, modifier) pairs by
  :data:`pipelines.labels.OPENI_MESH_QUALIFIED` (``Thickening/pleura`` -> Pleural_Thickening).
  All 14 are annotated: absent -> 0; ``normal`` -> all 0; unmapped terms are ignored. A blank
  cell or ``No Indexing`` (a report never indexed) -> all NaN (not annotated), accepted.
- Sizes without verification: ``columns`` x ``rows``; bits 0, photometric ''.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.demographics import sexes
from pipelines.labels import (
    FINDINGS,
    OPENI_MESH_QUALIFIED,
    OPENI_MESH_TO_FINDINGS,
    OPENI_NOT_INDEXED,
)
from pipelines.sources import ReadOptions, SourceResult
from pipelines.sources.common import finish, make_source_keys, to_int, view_columns
from pipelines.sources.label_parsing import flat_term_labels
from pipelines.sources.rows import Rows, blank
from pipelines.sources.tables import find_table, read_table

SOURCE = "openi"
STUDY, IMAGE, PNG, VIEW, MESH = "study_uid", "image_id", "png_name", "view_position", "mesh_major"
ROWS, COLUMNS, SEX = "rows", "columns", "sex"


def mesh_findings(mesh: pd.Series) -> pd.DataFrame:
    """Findings (float32, all 14) from ``|``-joined MeSH major strings; see the module docstring.

    Args:
        mesh: ``mesh_major`` cells with a RangeIndex.
    """
    text = mesh.astype(str).str.strip().str.lower()
    terms = text.str.split("|").explode().str.strip()
    key = terms.str.split("/", n=1).str[0].str.strip()
    lookup = dict(OPENI_MESH_TO_FINDINGS)
    for (term, modifier), findings in OPENI_MESH_QUALIFIED.items():
        qualified = terms.str.contains("/" + re.escape(modifier) + "(?:/|$)", regex=True)
        key = key.mask((key == term) & qualified, f"{term}/{modifier}")
        lookup[f"{term}/{modifier}"] = findings
    out = flat_term_labels(key, len(mesh), lookup)
    not_annotated = blank(text) | (text == OPENI_NOT_INDEXED).to_numpy()
    out.loc[not_annotated, list(FINDINGS)] = np.nan
    return out.set_axis(mesh.index)


def read(input_path: Path, options: ReadOptions) -> SourceResult:
    """Read the Open-i / IU paired CSV.

    Args:
        input_path: the CSV (``.csv`` / ``.csv.gz``), or a folder holding exactly one.
        options: reader options (``images``, ``verify_files``, ``workers``, ``salt``).

    Raises:
        SourceError: the CSV is missing, unreadable or lacks a required column.
    """
    table = find_table(input_path, ["*.csv"], "Open-i CSV")
    df = read_table(
        table,
        [STUDY, IMAGE, PNG, VIEW, MESH],
        [ROWS, COLUMNS, SEX],
        what="Open-i CSV",
        max_line_bytes=options.max_csv_line_bytes,
    )
    root = Path(options.images) if options.images else table.parent
    rows = Rows(len(df), SOURCE, table)
    rows.reject_blank(df, [STUDY, IMAGE, PNG])
    findings = mesh_findings(df[MESH])
    image = df[IMAGE].str.strip()
    rows.reject_duplicates(image)

    keep = rows.keep
    sub = df.loc[keep].reset_index(drop=True)
    image = image[keep].reset_index(drop=True)
    study = sub[STUDY].str.strip()
    frame = pd.DataFrame(
        {
            **make_source_keys(SOURCE, study, study, image, options.salt),
            "source": SOURCE,
            "path": sub[PNG].str.strip(),
            **view_columns(sub[VIEW]),
            "width": to_int(sub[COLUMNS]) if COLUMNS in sub else 0,
            "height": to_int(sub[ROWS]) if ROWS in sub else 0,
            "bits": 0,
            "photometric": "",
            "sex": sexes(sub[SEX]) if SEX in sub else "",
        }
    )
    frame = pd.concat([frame, findings.loc[keep].reset_index(drop=True)], axis=1)
    return finish(frame, rows, root, options, len(df))
