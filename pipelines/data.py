"""Prepared-array shards and the PyTorch Dataset that reads them.

Layout of a prepared folder (written by ``preprocess``; ``augment`` writes the same layout)::

    index.json                       {"format": 1, "size": S, "findings": [...],
                                      "splits": {"train": [{"name": "train-00000", "n": N}, ...]}}
    train-00000.images.npy           uint8 (N, 2, S, S): view 0 = frontal, view 1 = lateral
                                     (all zeros where the study has no lateral view)
    train-00000.meta.parquet         study_key, patient_key, has_lateral, <findings> (1 / 0 / NaN)

Images stay uint8 on disk and in batches; :func:`pipelines.model.normalize` turns them into
floats on the training device, which is cheaper than converting on the loader side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from pipelines.io import atomic_path, write_json
from pipelines.labels import FINDINGS

INDEX_FILE = "index.json"
FORMAT_VERSION = 1
META_COLUMNS: tuple[str, ...] = ("study_key", "patient_key", "has_lateral", *FINDINGS)


def shard_name(split: str, number: int) -> str:
    """``train-00003`` style shard names."""
    return f"{split}-{number:05d}"


def write_shard(out_dir: str | Path, name: str, images: np.ndarray, meta: pd.DataFrame) -> dict:
    """Write one shard atomically (images first, meta last) and return its index entry.

    Args:
        out_dir: the prepared folder.
        name: shard name (see :func:`shard_name`).
        images: uint8 array (N, 2, S, S).
        meta: N rows with :data:`META_COLUMNS` (extra columns are kept).

    Raises:
        ValueError: shapes, dtypes or row counts disagree.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 2:
        raise ValueError(f"shard {name}: images must be uint8 (N, 2, S, S), got {images.shape}")
    if len(meta) != len(images):
        raise ValueError(f"shard {name}: {len(images)} images but {len(meta)} meta rows")
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise ValueError(f"shard {name}: meta lacks {missing}")
    out_dir = Path(out_dir)
    with atomic_path(out_dir / f"{name}.images.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(images))
    meta = meta.reset_index(drop=True).astype({f: "float32" for f in FINDINGS})
    meta = meta.astype({"has_lateral": bool})
    with atomic_path(out_dir / f"{name}.meta.parquet") as tmp:
        meta.to_parquet(tmp, index=False)
    return {"name": name, "n": len(images)}


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
        FileNotFoundError: no index (the folder was never completed).
        ValueError: another format version or label space.
    """
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shard index; run the preprocess stage first")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: shard format {index.get('format')}, expected {FORMAT_VERSION}")
    if tuple(index.get("findings", ())) != FINDINGS:
        raise ValueError(f"{path}: label space differs from pipelines.labels.FINDINGS")
    return index


class ShardDataset(Dataset):
    """Studies of one or more splits across one or more prepared folders, memory-mapped.

    Each sample is a dict: ``frontal`` and ``lateral`` uint8 tensors (1, S, S), ``has_lateral``
    (bool tensor), ``labels`` float32 (F,) with NaN kept, and ``index`` (int) into :attr:`meta`.

    Args:
        roots: prepared folders (e.g. ``data/prepared`` and ``data/augmented``).
        splits: split names to include (``train``, ``val``, ``test``).
    """

    def __init__(self, roots: str | Path | Sequence[str | Path], splits: str | Sequence[str]):
        roots = [roots] if isinstance(roots, str | Path) else list(roots)
        splits = [splits] if isinstance(splits, str) else list(splits)
        self._images: list[np.ndarray] = []
        metas: list[pd.DataFrame] = []
        size = None
        for root in map(Path, roots):
            index = read_index(root)
            if size is not None and index["size"] != size:
                raise ValueError(f"{root}: image size {index['size']} differs from {size}")
            size = index["size"]
            for split in splits:
                for entry in index["splits"].get(split, []):
                    images = np.load(root / f"{entry['name']}.images.npy", mmap_mode="r")
                    meta = pd.read_parquet(root / f"{entry['name']}.meta.parquet")
                    meta["_shard"] = len(self._images)
                    meta["_row"] = np.arange(len(meta))
                    self._images.append(images)
                    metas.append(meta)
        self.size = size
        self.meta = (
            pd.concat(metas, ignore_index=True)
            if metas
            else pd.DataFrame(columns=[*META_COLUMNS, "_shard", "_row"])
        )
        self._shard = self.meta["_shard"].to_numpy(dtype=np.int64)
        self._row = self.meta["_row"].to_numpy(dtype=np.int64)
        self.labels = self.meta[list(FINDINGS)].to_numpy(dtype=np.float32)
        self.has_lateral = self.meta["has_lateral"].to_numpy(dtype=bool)

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pair = torch.from_numpy(np.array(self._images[self._shard[i]][self._row[i]]))
        return {
            "frontal": pair[0:1],
            "lateral": pair[1:2],
            "has_lateral": torch.tensor(self.has_lateral[i]),
            "labels": torch.from_numpy(self.labels[i]),
            "index": torch.tensor(i),
        }
