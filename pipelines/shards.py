"""The prepared-shard format: writing shards and their index, reading them back as views.

Layout of a prepared folder (written by ``preprocess``; ``augment`` writes the same layout)::

    index.json                       {"format": 2, "size": S, "findings": [...], "splits":
                                      {"train": [{"name": "train-00000", "n": N, "laterals": L},
                                                 ...]}}
    train-00000.images.npy           uint8 (N + L, S, S): rows 0..N-1 the frontal view of each
                                     study, rows N..N+L-1 the lateral view of each study that has
                                     one (``has_lateral``), both in study order
    train-00000.meta.parquet         study_key, patient_key, has_lateral, <findings> (1 / 0 / NaN)

A study without a lateral view stores no lateral pixels (format 1 stored (N, 2, S, S) with zeros
there: 25-42 % of the disk on MIMIC-CXR and CheXpert); it still reads as a zero lateral with
``has_lateral`` False. Study i's lateral is row ``N + (studies before i that have one)``. Format 1
folders are still read (:data:`READ_FORMATS`), through the same per-shard views
(:func:`open_shard`); every writer writes :data:`FORMAT_VERSION`.

A shard ``name`` is a path relative to the folder: a sharded preprocess run's merge writes an
index whose entries name shards inside its part folders (``parts/0-of-2/train-00000``), read
in index order like any other (names may not leave the folder: absolute or ``..`` is refused).

Everything here is numpy, pandas and the standard library: the preprocess stage and its
workers write shards without importing torch. :mod:`pipelines.data` reads them into torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import MissingInputError
from pipelines.io import atomic_path, write_json
from pipelines.labels import FINDINGS

INDEX_FILE = "index.json"
FORMAT_VERSION = 2  # what every writer writes
READ_FORMATS = (1, 2)  # 1: (N, 2, S, S) with zeros for a missing lateral
META_COLUMNS: tuple[str, ...] = ("study_key", "patient_key", "has_lateral", *FINDINGS)


def shard_name(split: str, number: int) -> str:
    """``train-00003`` style shard names."""
    return f"{split}-{number:05d}"


def shard_meta(
    study_keys: Sequence[str],
    patient_keys: Sequence[str],
    has_lateral: np.ndarray | Sequence[bool] | bool,
    labels: np.ndarray,
) -> pd.DataFrame:
    """A shard's meta frame: :data:`META_COLUMNS` in order, one row per study.

    ``labels`` is (N, len(FINDINGS)) with NaN for "not annotated"; ``has_lateral`` may be one
    bool for every study.
    """
    meta = pd.DataFrame(np.asarray(labels, dtype=np.float32), columns=list(FINDINGS))
    meta.insert(0, "study_key", list(study_keys))
    meta.insert(1, "patient_key", list(patient_keys))
    meta.insert(2, "has_lateral", has_lateral)
    return meta


def write_shard(out_dir: str | Path, name: str, images: np.ndarray, meta: pd.DataFrame) -> dict:
    """Write one shard from (frontal, lateral) pairs; see :func:`write_views`.

    Args:
        out_dir: the prepared folder.
        name: shard name (see :func:`shard_name`).
        images: uint8 array (N, 2, S, S): view 0 frontal, view 1 lateral. View 1 of a study
            whose ``has_lateral`` is False is not stored (it reads back as zeros).
        meta: N rows with :data:`META_COLUMNS` (extra columns are kept).

    Raises:
        ValueError: shapes, dtypes or row counts disagree.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 2:
        raise ValueError(f"shard {name}: images must be uint8 (N, 2, S, S), got {images.shape}")
    if len(meta) != len(images):
        raise ValueError(f"shard {name}: {len(images)} images but {len(meta)} meta rows")
    has = _has_lateral(name, meta)
    return write_views(out_dir, name, images[:, 0], images[has, 1], meta)


def write_views(
    out_dir: str | Path, name: str, frontal: np.ndarray, lateral: np.ndarray, meta: pd.DataFrame
) -> dict:
    """Write one shard atomically (images first, meta last) and return its index entry.

    The images file is the frontals followed by the laterals, written one after the other
    (no concatenated copy); the bytes equal ``np.save`` of their concatenation.

    Args:
        out_dir: the prepared folder.
        name: shard name (see :func:`shard_name`).
        frontal: uint8 (N, S, S), one per study.
        lateral: uint8 (L, S, S), one per study whose ``has_lateral`` is True, in study order.
        meta: N rows with :data:`META_COLUMNS` (extra columns are kept).

    Raises:
        ValueError: shapes, dtypes or row counts disagree.
    """
    for what, arr in (("frontal", frontal), ("lateral", lateral)):
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1:] != frontal.shape[1:]:
            raise ValueError(f"shard {name}: {what} must be uint8 (n, S, S), got {arr.shape}")
    if len(meta) != len(frontal):
        raise ValueError(f"shard {name}: {len(frontal)} images but {len(meta)} meta rows")
    has = _has_lateral(name, meta)
    if int(has.sum()) != len(lateral):
        raise ValueError(f"shard {name}: {len(lateral)} laterals for {int(has.sum())} studies")
    out_dir = Path(out_dir)
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": (len(frontal) + len(lateral), *frontal.shape[1:]),
    }
    with atomic_path(out_dir / f"{name}.images.npy") as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for block in (frontal, lateral):
            if block.size:
                fh.write(memoryview(np.ascontiguousarray(block)).cast("B"))
    meta = meta.reset_index(drop=True).astype({f: "float32" for f in FINDINGS})
    meta = meta.astype({"has_lateral": bool})
    with atomic_path(out_dir / f"{name}.meta.parquet") as tmp:
        meta.to_parquet(tmp, index=False)
    return {"name": name, "n": len(frontal), "laterals": len(lateral)}


def _has_lateral(name: str, meta: pd.DataFrame) -> np.ndarray:
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise ValueError(f"shard {name}: meta lacks {missing}")
    return meta["has_lateral"].to_numpy(dtype=bool)


def write_index(
    out_dir: str | Path, size: int, splits: dict[str, list[dict]], **extra: Any
) -> None:
    """Write ``index.json`` last, so a folder with an index is complete."""
    write_json(
        Path(out_dir) / INDEX_FILE,
        {"format": FORMAT_VERSION, "size": size, "findings": list(FINDINGS), "splits": splits}
        | extra,
    )


def read_index(root: str | Path) -> dict:
    """Read and check a prepared folder's index.

    Raises:
        MissingInputError: no index (the folder was never completed).
        ValueError: a format this code does not read, another label space, or a shard name
            outside ``root``.
    """
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise MissingInputError(f"{path}: no shard index; run the preprocess stage first")
    index = json.loads(path.read_text())
    if index.get("format") not in READ_FORMATS:
        raise ValueError(
            f"{path}: shard format {index.get('format')}, expected one of {list(READ_FORMATS)}; "
            "re-run the preprocess stage"
        )
    if tuple(index.get("findings", ())) != FINDINGS:
        raise ValueError(f"{path}: label space differs from pipelines.labels.FINDINGS")
    for entries in index.get("splits", {}).values():
        for entry in entries:
            name = Path(entry["name"])
            if name.is_absolute() or ".." in name.parts:
                raise ValueError(f"{path}: shard name {entry['name']!r} leaves the folder")
    return index


@dataclass(frozen=True)
class ShardViews:
    """One shard's pixels as views of its memory map (nothing is read until indexed).

    Attributes:
        frontal: uint8 (N, S, S), one per study.
        lateral: uint8 (L, S, S), the stored laterals.
        lateral_row: int64 (N,): each study's row of ``lateral``, -1 where it has none.
    """

    frontal: np.ndarray
    lateral: np.ndarray
    lateral_row: np.ndarray


def lateral_rows(has_lateral: np.ndarray) -> np.ndarray:
    """Each study's row among the stored laterals of its shard (format 2), -1 where none."""
    has = np.asarray(has_lateral, dtype=bool)
    return np.where(has, np.cumsum(has) - 1, -1).astype(np.int64)


def open_shard(
    images: str | Path, has_lateral: np.ndarray, size: int, fmt: int = FORMAT_VERSION
) -> ShardViews:
    """Memory-map a shard's images file as per-view arrays.

    Args:
        images: the ``<name>.images.npy`` file.
        has_lateral: the shard's ``has_lateral`` column (N,).
        size: the index's image size.
        fmt: the index's format (:data:`READ_FORMATS`).

    Raises:
        ValueError: the file's shape disagrees with the meta and the index.
    """
    has = np.asarray(has_lateral, dtype=bool)
    n, laterals = len(has), int(has.sum())
    mm = np.load(images, mmap_mode="r")
    if fmt == 1:
        if mm.shape != (n, 2, size, size):
            raise ValueError(f"{images}: shape {mm.shape}, its index and meta say {n} studies")
        return ShardViews(mm[:, 0], mm[:, 1], np.where(has, np.arange(n), -1))
    if mm.shape != (n + laterals, size, size):
        raise ValueError(
            f"{images}: shape {mm.shape}, its index and meta say {n} studies with "
            f"{laterals} laterals at {size} px"
        )
    return ShardViews(mm[:n], mm[n:], lateral_rows(has))
