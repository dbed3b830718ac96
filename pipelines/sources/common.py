"""What every table reader does last: salted keys, view columns, sizes, and the packaged result.

The table readers (nih, chexpert, mimic, padchest, openi, csv) are built from
:mod:`~pipelines.sources.tables` (reading the CSV), :mod:`~pipelines.sources.rows` (row
rejections), :mod:`~pipelines.sources.label_parsing` (labels), :mod:`~pipelines.sources.files`
(the image files) and this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.dicom.view import canonical_views
from pipelines.keys import get_salt, make_keys
from pipelines.schema import conform_manifest
from pipelines.sources import ReadOptions, SourceResult
from pipelines.sources.files import verify_files
from pipelines.sources.rows import Rows


def make_source_keys(
    source: str,
    patient: pd.Series,
    study: pd.Series,
    image: pd.Series,
    salt: bytes,
) -> dict[str, np.ndarray]:
    """Salted keys of ``source:<value>`` for the three id kinds (an empty salt -> the project's).

    Returns:
        ``{"patient_key": ..., "study_key": ..., "image_id": ...}``, arrays of key strings.
    """
    salt = salt or get_salt()
    prefix = f"{source}:"
    return {
        "patient_key": make_keys("patient", prefix + patient.astype(str), salt),
        "study_key": make_keys("study", prefix + study.astype(str), salt),
        "image_id": make_keys("image", prefix + image.astype(str), salt),
    }


def extract(values: pd.Series, pattern: str) -> pd.DataFrame:
    """``values.str.extract(pattern)`` (named groups) via pyarrow's RE2, several times faster.

    Non-matching rows are NaN in every column. Falls back to pandas when pyarrow cannot run the
    pattern.

    Args:
        values: text cells.
        pattern: a regular expression with named groups (RE2 syntax).
    """
    try:
        found = pc.extract_regex(pa.array(values.astype(str).array), pattern)
    except (pa.ArrowException, TypeError):
        return values.astype(str).str.extract(pattern)
    names = [found.type.field(i).name for i in range(found.type.num_fields)]
    return pd.DataFrame(
        {n: pd.Series(pc.struct_field(found, n).to_pandas(), dtype=str) for n in names},
        index=values.index,
    )


def view_columns(raw: pd.Series) -> dict[str, pd.Series]:
    """``view`` (canonical; unknown -> OTHER) and ``view_raw`` (stripped text) from raw cells."""
    text = raw.astype(str).str.strip()
    return {"view": canonical_views(text), "view_raw": text}


def to_int(values: pd.Series) -> np.ndarray:
    """Text numbers (``2592``, ``2592.0``, blank) as int64; blank or invalid -> 0."""
    num = pd.to_numeric(values.astype(str).str.strip(), errors="coerce").to_numpy(
        np.float64, copy=True
    )
    num[~np.isfinite(num) | (num < 0)] = 0
    return num.astype(np.int64)


def finish(
    frame: pd.DataFrame | dict,
    rows: Rows,
    root: Path,
    options: ReadOptions,
    n_inputs: int,
) -> SourceResult:
    """Conform the accepted rows, verify files if asked, and package the result.

    Args:
        frame: manifest columns for the accepted rows (findings missing -> NaN).
        rows: the row tracker holding the row-level rejections.
        root: image root (``path`` is relative to it); recorded as ``data_root`` as given.
        options: reader options (``verify_files``, ``workers``, ``max_image_pixels``).
        n_inputs: rows read from the table.
    """
    manifest = conform_manifest(pd.DataFrame(frame))
    rejected = rows.rejections()
    if options.verify_files:
        manifest, missing = verify_files(manifest, root, options.workers, options.max_image_pixels)
        rejected += missing
    manifest.attrs["data_root"] = str(root)
    return SourceResult(
        manifest=manifest, rejected=rejected, n_inputs=n_inputs, data_root=str(root)
    )
