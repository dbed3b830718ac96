"""Generic CSV for image folders: one row per image -> manifest rows.

Input: the CSV (``.csv`` or ``.csv.gz``), or a folder holding exactly one such file.

Required columns: ``path`` (image file, relative to the image root), ``patient``, ``study``,
``view``. Optional ``sex`` (F / M / O, Female / Male) and ``age`` (years) columns, kept only as sex
and a 10-year age band (:mod:`pipelines.demographics`). Optional label columns:

- one column per finding, named exactly as in :data:`pipelines.labels.FINDINGS`, with ``1``,
  ``0``, ``-1`` (uncertain, resolved by ``options.uncertain``) or blank (not annotated -> NaN);
- and/or ``labels``: ``|``-joined finding names (case and ``_``/space insensitive; ``No Finding``
  / ``normal`` or blank = none). With a ``labels`` column every finding is annotated: the named
  ones are 1, the others 0. A non-blank finding column overrides ``labels`` for that finding.

Anything else in a label cell (a value outside 1/0/-1/blank, an unknown finding name) rejects the
row with ``label_out_of_domain`` naming the column and the value. Other columns are ignored.

- Image root: ``options.images`` (default: the CSV's folder). Paths are normalised (``\\`` ->
  ``/``, leading ``./`` dropped); an absolute path under the root is made relative; one outside
  the root or climbing with ``..`` is rejected (``path_outside_root``).
- Keys: patient, study and image (= the normalised path) prefixed ``csv:``.
- View: ``view`` through the canonical map (PA, AP, L/LL/LAT/LATERAL ...); unknown or blank ->
  OTHER (accepted). Sizes: 0 / '' unless ``verify_files`` reads them from the files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.demographics import age_bands, sexes
from pipelines.labels import FINDINGS
from pipelines.sources import ReadOptions, SourceResult
from pipelines.sources.common import finish, make_source_keys, view_columns
from pipelines.sources.label_parsing import coded_labels, term_labels
from pipelines.sources.rows import Rows, blank
from pipelines.sources.tables import find_table, read_table

SOURCE = "csv"
REQUIRED = ("path", "patient", "study", "view")
LABELS = "labels"
SEX, AGE = "sex", "age"
_NONE_TERMS = ("no_finding", "normal")


def _norm_name(text: pd.Series) -> pd.Series:
    return text.str.strip().str.lower().str.replace(r"[\s_]+", "_", regex=True)


def normalise_paths(raw: pd.Series, root: Path) -> tuple[pd.Series, np.ndarray]:
    """Paths relative to ``root`` with ``/`` separators, and a mask of paths outside it."""
    path = raw.str.strip().str.replace("\\", "/", regex=False)
    path = path.str.replace(r"^(?:\./)+", "", regex=True)
    root_text = Path(root).absolute().as_posix().rstrip("/") + "/"
    absolute = path.str.startswith("/") | path.str.match(r"^[A-Za-z]:/")
    inside = path.str.startswith(root_text)
    path = path.mask(absolute & inside, path.str.slice(len(root_text)))
    climbs = path.str.contains(r"(?:^|/)\.\.(?:/|$)", regex=True)
    outside = ((absolute & ~inside) | climbs).to_numpy()
    return path, outside


def read(input_path: Path, options: ReadOptions) -> SourceResult:
    """Read a generic image-list CSV.

    Args:
        input_path: the CSV (``.csv`` / ``.csv.gz``), or a folder holding exactly one.
        options: reader options (``images``, ``uncertain``, ``verify_files``, ``salt`` ...).

    Raises:
        SourceError: the CSV is missing, unreadable or lacks a required column.
    """
    table = find_table(input_path, ["*.csv"], "image-list CSV")
    df = read_table(
        table,
        REQUIRED,
        [*FINDINGS, LABELS, SEX, AGE],
        what="image-list CSV",
        max_line_bytes=options.max_csv_line_bytes,
    )
    root = Path(options.images) if options.images else table.parent
    rows = Rows(len(df), SOURCE, table)
    rows.reject_blank(df, ["path", "patient", "study"])
    path, outside = normalise_paths(df["path"], root)
    rows.reject(outside, "path_outside_root", "path is outside the image root")

    findings = pd.DataFrame(np.nan, index=df.index, columns=list(FINDINGS), dtype=np.float32)
    if LABELS in df:
        joined = df[LABELS].str.replace(r"\s*\|\s*", "|", regex=True)
        terms = _norm_name(joined).str.split("|")
        lookup = {f.lower(): (f,) for f in FINDINGS}
        findings = term_labels(terms, lookup, none_terms=_NONE_TERMS, rows=rows)
    present = {f: f for f in FINDINGS if f in df}
    if present:
        coded = coded_labels(df, present, rows, blank_value=np.nan, policy=options.uncertain)
        for f in present:
            given = ~blank(df[f])
            findings.loc[given, f] = coded.loc[given, f]
    rows.reject_duplicates(path)

    keep = rows.keep
    sub = df.loc[keep].reset_index(drop=True)
    path = path[keep].reset_index(drop=True)
    frame = pd.DataFrame(
        {
            **make_source_keys(
                SOURCE, sub["patient"].str.strip(), sub["study"].str.strip(), path, options.salt
            ),
            "source": SOURCE,
            "path": path,
            **view_columns(sub["view"]),
            "width": 0,
            "height": 0,
            "bits": 0,
            "photometric": "",
            "sex": sexes(sub[SEX]) if SEX in sub else "",
            "age_band": age_bands(sub[AGE]) if AGE in sub else "",
        }
    )
    frame = pd.concat([frame, findings.loc[keep].reset_index(drop=True)], axis=1)
    return finish(frame, rows, root, options, len(df))
