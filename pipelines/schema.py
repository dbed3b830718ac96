"""Column contracts between stages (DESIGN.md §3).

Manifest (ingest out, ``manifest.parquet``): one row per image. Studies (pair out,
``studies.parquet``): one row per study. Keys are salted hashes (:mod:`pipelines.keys`); paths are
relative to the data root recorded in ``df.attrs["data_root"]``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from pipelines.labels import FINDINGS

View = Literal["PA", "AP", "LATERAL", "OTHER"]
VIEWS: tuple[str, ...] = ("PA", "AP", "LATERAL", "OTHER")
FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP")
SPLITS: tuple[str, ...] = ("train", "val", "test")

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",  # salted hash of the source's image identifier
    "patient_key",  # salted hash of the patient id
    "study_key",  # salted hash of the study id
    "source",  # reader name: dicom, nih, chexpert, mimic, padchest, openi, csv
    "path",  # relative to the data root
    "view",  # canonical: PA, AP, LATERAL, OTHER
    "view_raw",  # what the source said (header value / CSV cell), for audits
    "width",  # columns (0 when unknown: metadata-only runs)
    "height",  # rows
    "bits",  # BitsStored (8 for 8-bit PNG/JPEG, 0 when unknown)
    "photometric",  # MONOCHROME1, MONOCHROME2, RGB, ... ('' when unknown)
    *FINDINGS,  # float32: 1 / 0 / NaN
)

STUDY_COLUMNS: tuple[str, ...] = (
    "study_key",
    "patient_key",
    "source",
    "frontal_id",
    "frontal_path",
    "frontal_view",  # PA or AP
    "lateral_id",  # '' when the study has no lateral view
    "lateral_path",  # '' when the study has no lateral view
    "has_lateral",
    *FINDINGS,
    "split",  # train, val, test
)


_VIEW_ALIASES: dict[str, str] = {
    "PA": "PA",
    "POSTERO_ANTERIOR": "PA",
    "POSTEROANTERIOR": "PA",
    "POSTERO-ANTERIOR": "PA",
    "AP": "AP",
    "ANTERO_POSTERIOR": "AP",
    "ANTEROPOSTERIOR": "AP",
    "ANTERO-POSTERIOR": "AP",
    "AP_HORIZONTAL": "AP",  # PadChest: supine AP
    "AP SUPINE": "AP",
    "APS": "AP",
    "LL": "LATERAL",
    "RL": "LATERAL",
    "L": "LATERAL",
    "LAT": "LATERAL",
    "LATERAL": "LATERAL",
    "LEFT LATERAL": "LATERAL",
    "RIGHT LATERAL": "LATERAL",
    "LATERAL-LEFT": "LATERAL",
    "LATERAL-RIGHT": "LATERAL",
}


def canonical_view(raw: object) -> str:
    """Map a source's view text to ``PA``, ``AP``, ``LATERAL`` or ``OTHER``.

    Case and surrounding blanks are ignored; anything unrecognised (oblique, ``UNK``, blank,
    ``COSTAL``) is ``OTHER``.
    """
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        return "OTHER"
    return _VIEW_ALIASES.get(str(raw).strip().upper().replace("  ", " "), "OTHER")


def canonical_views(raw: pd.Series) -> pd.Series:
    """Vectorised :func:`canonical_view` (each distinct value is mapped once)."""
    text = raw.astype("string").str.strip().str.upper().fillna("")
    return text.map(lambda v: _VIEW_ALIASES.get(v, "OTHER")).astype("string")


def empty_manifest() -> pd.DataFrame:
    """A typed, empty manifest frame."""
    return conform_manifest(pd.DataFrame(columns=list(MANIFEST_COLUMNS)))


def conform_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Order columns and set dtypes of a manifest frame; missing findings become NaN.

    Raises:
        KeyError: a non-finding manifest column is missing.
    """
    df = df.copy()
    for name in FINDINGS:
        if name not in df.columns:
            df[name] = np.nan
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise KeyError(f"manifest frame lacks columns: {missing}")
    out = df.loc[:, list(MANIFEST_COLUMNS)]
    str_cols = ["image_id", "patient_key", "study_key", "source", "path", "view", "view_raw"]
    out = out.astype({c: "string" for c in str_cols} | {"photometric": "string"})
    out = out.astype({c: "int64" for c in ("width", "height", "bits")})
    out = out.astype({f: "float32" for f in FINDINGS})
    out.attrs = dict(df.attrs)
    return out.reset_index(drop=True)
