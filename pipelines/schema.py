"""Column contracts between stages.

Manifest (ingest out, ``manifest.parquet``): one row per image. Studies (pair out,
``studies.parquet``): one row per study. Keys are salted hashes (:mod:`pipelines.keys`). Views are
those of :data:`pipelines.dicom.view.VIEWS`.

Both tables carry, in ``df.attrs``, what the rows' ``source`` names mean (:data:`SOURCES_ATTR`:
per source, the reader and whether it is the embedded synthetic dataset) and where each source's
images are (:data:`ROOTS_ATTR`: per source, the folder its ``path`` values are relative to);
:class:`ImageRoots` resolves a row's image path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.labels import FINDINGS

SPLITS: tuple[str, ...] = ("train", "val", "test")

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",  # salted hash of the source's image identifier
    "patient_key",  # salted hash of the patient id
    "study_key",  # salted hash of the study id
    "source",  # the input's name (ingest.inputs[].name; by default its reader: dicom, nih ...)
    "path",  # relative to the source's image root (ImageRoots)
    "view",  # canonical: PA, AP, LATERAL, OTHER
    "view_raw",  # what the source said (header value / CSV cell), for audits
    "width",  # columns (0 when unknown: metadata-only runs)
    "height",  # rows
    "bits",  # BitsStored (8 for 8-bit PNG/JPEG, 0 when unknown)
    "photometric",  # MONOCHROME1, MONOCHROME2, RGB, ... ('' when unknown)
    "official_split",  # train / val / test when the input is an official split, else ''
    "sex",  # F, M, O or '' (unknown): pipelines.demographics
    "age_band",  # 0-9, 10-19, ..., 80-89, 90+ or '' (unknown): pipelines.demographics
    *FINDINGS,  # float32: 1 / 0 / NaN
)
#: Coarse subgroup attributes (pipelines.demographics); '' when the source does not say.
DEMOGRAPHIC_COLUMNS: tuple[str, ...] = ("sex", "age_band")

STUDY_COLUMNS: tuple[str, ...] = (
    "study_key",
    "patient_key",
    "source",
    "frontal_id",
    "frontal_path",
    "frontal_view",  # PA or AP
    "frontal_bits",  # stored bits from the source metadata (0: unknown, detected when decoded)
    "lateral_id",  # '' when the study has no lateral view
    "lateral_path",  # '' when the study has no lateral view
    "lateral_bits",  # 0 when unknown or no lateral view
    "has_lateral",
    "sex",  # of the frontal image's row (the study's patient)
    "age_band",  # at the study
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
    for name in ("official_split", *DEMOGRAPHIC_COLUMNS):
        if name not in df.columns:
            df[name] = ""
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise KeyError(f"manifest frame lacks columns: {missing}")
    out = df.loc[:, list(MANIFEST_COLUMNS)]
    str_cols = ["image_id", "patient_key", "study_key", "source", "path", "view", "view_raw"]
    str_cols += ["official_split", *DEMOGRAPHIC_COLUMNS]
    out = out.astype({c: "string" for c in str_cols} | {"photometric": "string"})
    out[list(DEMOGRAPHIC_COLUMNS)] = out[list(DEMOGRAPHIC_COLUMNS)].fillna("")
    out = out.astype({c: "int64" for c in ("width", "height", "bits")})
    out = out.astype({f: "float32" for f in FINDINGS})
    out.attrs = dict(df.attrs)
    return out.reset_index(drop=True)


#: ``attrs`` key: per source name, ``{"reader": ..., "synthetic": bool}``.
SOURCES_ATTR = "sources"
#: ``attrs`` key: per source name, the folder its image paths are relative to.
ROOTS_ATTR = "data_roots"


@dataclass(frozen=True)
class ImageRoots:
    """Where each source's images are: ``path`` values are relative to their source's root.

    Attributes:
        default: the root of a source not listed (and of tables from before sources had roots).
        by_source: per source name, its root.
    """

    default: Path = Path(".")
    by_source: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], override: str | Path | None = None) -> ImageRoots:
        """The roots a table records (``override``: one root for every source instead)."""
        if override is not None:
            return cls(Path(override))
        roots = {str(k): Path(v) for k, v in (attrs.get(ROOTS_ATTR) or {}).items()}
        return cls(Path(attrs.get("data_root", ".")), roots)

    def of(self, source: str) -> Path:
        """The root of ``source``."""
        return self.by_source.get(source, self.default)

    def resolve(self, source: str, path: str) -> str:
        """The image file of a row ('' stays '': no image)."""
        return str(self.of(source) / path) if path else ""
