"""Column contracts between stages.

Manifest (ingest out, ``manifest.parquet``): one row per image. Studies (pair out,
``studies.parquet``): one row per study. Keys are salted hashes (:mod:`pipelines.keys`); paths are
relative to the data root recorded in ``df.attrs["data_root"]``. Views are those of
:data:`pipelines.dicom.view.VIEWS`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.labels import FINDINGS

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
