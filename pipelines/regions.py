"""Where each synthetic finding was drawn: the ``regions.csv`` file of the synthesize stage.

The synthesize stage records, for every image and every finding shown on it, the pixels the
finding changed (:func:`pipelines.synthetic.render.render_with_regions` says how), in the
image's own (source) pixel coordinates. The file is for analyses only (the evaluate stage's
saliency localisation); no stage trains on it. One row per (image, finding):

- ``file``: the image's path under the dataset's ``dicom/`` folder (random hex: no PHI);
- ``view``: ``PA`` or ``LATERAL``; ``finding``: a name of :data:`pipelines.labels.FINDINGS`;
- ``rows``, ``cols``: the image's size; ``x0``, ``y0``, ``x1``, ``y1``: the region's bounding
  box (columns ``x0 <= x < x1``, rows ``y0 <= y < y1``; all 0 for an empty region);
- ``area``: pixels in the region; ``rle``: the mask as run lengths over the row-major pixels,
  alternating outside / inside and starting outside (space-separated; ``""`` when empty).

Rows come in the plan's order (study, then PA before lateral, then label order), so the same
params and seed give a byte-identical file.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.io import atomic_path

REGIONS_FILE = "regions.csv"
REGION_COLUMNS: tuple[str, ...] = (
    "file",
    "view",
    "finding",
    "rows",
    "cols",
    "x0",
    "y0",
    "x1",
    "y1",
    "area",
    "rle",
)


def encode_mask(mask: np.ndarray) -> str:
    """Run lengths of a boolean (H, W) mask: row-major, outside first, space-separated."""
    flat = np.asarray(mask, dtype=bool).ravel()
    if not flat.any():
        return ""
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    if flat[0]:
        runs = np.concatenate([[0], runs])
    return " ".join(str(int(r)) for r in runs)


def decode_mask(rle: str, rows: int, cols: int) -> np.ndarray:
    """The boolean (rows, cols) mask of :func:`encode_mask`'s run lengths.

    Raises:
        ValueError: the runs do not cover ``rows * cols`` pixels.
    """
    if not isinstance(rle, str) or not rle.strip():
        return np.zeros((rows, cols), dtype=bool)
    runs = np.array(rle.split(), dtype=np.int64)
    if runs.sum() != rows * cols:
        raise ValueError(f"run lengths cover {runs.sum()} pixels, expected {rows} x {cols}")
    return np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(rows, cols)


def region_row(file: str, view: str, finding: str, mask: np.ndarray) -> dict[str, object]:
    """One row of ``regions.csv`` for a finding's mask on one image."""
    ys, xs = np.nonzero(mask)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else (0, 0, 0, 0)
    return {
        "file": file,
        "view": view,
        "finding": finding,
        "rows": int(mask.shape[0]),
        "cols": int(mask.shape[1]),
        **{k: int(v) for k, v in zip(("x0", "y0", "x1", "y1"), box, strict=True)},
        "area": len(xs),
        "rle": encode_mask(mask),
    }


def write_regions(path: str | Path, rows: Iterable[dict[str, object]]) -> None:
    """Write ``regions.csv`` atomically (rows in the order given)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(REGION_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_regions(path: str | Path) -> pd.DataFrame:
    """The rows of a ``regions.csv`` (``rle`` as text, ``""`` for an empty region).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a column is missing.
    """
    df = pd.read_csv(path, dtype={"rle": str, "file": str}, keep_default_na=False)
    missing = [c for c in REGION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a regions file (missing columns {missing})")
    return df
