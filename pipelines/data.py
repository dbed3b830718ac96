"""Prepared-array shards and the PyTorch Dataset that reads them.

Layout of a prepared folder (written by ``preprocess``; ``augment`` writes the same layout)::

    index.json                       {"format": 1, "size": S, "findings": [...],
                                      "splits": {"train": [{"name": "train-00000", "n": N}, ...]}}
    train-00000.images.npy           uint8 (N, 2, S, S): view 0 = frontal, view 1 = lateral
                                     (all zeros where the study has no lateral view)
    train-00000.meta.parquet         study_key, patient_key, has_lateral, <findings> (1 / 0 / NaN)

A shard ``name`` is a path relative to the folder: a sharded preprocess run's merge writes an
index whose entries name shards inside its part folders (``parts/0-of-2/train-00000``), read
in index order like any other (names may not leave the folder: absolute or ``..`` is refused).

Images stay uint8 on disk and in batches; :func:`pipelines.model.normalize` turns them into
floats on the training device, which is cheaper than converting on the loader side.

Reading: :class:`ShardDataset` memory-maps the shards (each process opens its own maps, so the
dataset pickles cheaply into DataLoader workers under any start method) and serves single
samples (``ds[i]``, for any sampler) or whole batches (``ds.get_batch(indices)``: one sorted
fancy-index read per shard, no per-sample tensors, no collate). :func:`make_loader` wraps the
batched path in a :class:`~torch.utils.data.DataLoader` with a seeded shuffle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from pipelines.errors import MissingInputError
from pipelines.io import atomic_path, write_json
from pipelines.labels import FINDINGS

INDEX_FILE = "index.json"
FORMAT_VERSION = 1
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
        MissingInputError: no index (the folder was never completed).
        ValueError: another format version or label space, or a shard name outside ``root``.
    """
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise MissingInputError(f"{path}: no shard index; run the preprocess stage first")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: shard format {index.get('format')}, expected {FORMAT_VERSION}")
    if tuple(index.get("findings", ())) != FINDINGS:
        raise ValueError(f"{path}: label space differs from pipelines.labels.FINDINGS")
    for entries in index.get("splits", {}).values():
        for entry in entries:
            name = Path(entry["name"])
            if name.is_absolute() or ".." in name.parts:
                raise ValueError(f"{path}: shard name {entry['name']!r} leaves the folder")
    return index


class ShardDataset(Dataset):
    """Studies of one or more splits across one or more prepared folders, memory-mapped.

    Each sample is a dict: ``frontal`` and ``lateral`` uint8 tensors (1, S, S), ``has_lateral``
    (bool tensor), ``labels`` float32 (F,) with NaN kept, and ``index`` (int) into :attr:`meta`.
    :meth:`get_batch` returns the same keys with a leading batch dimension.

    Args:
        roots: prepared folders (e.g. ``data/prepared`` and ``data/augmented``).
        splits: split names to include (``train``, ``val``, ``test``).
        findings: the label columns of ``labels``, in this order (default: all of
            :data:`~pipelines.labels.FINDINGS`): a model trained on a subset reads just those.

    Raises:
        FileNotFoundError: a folder has no index.
        ValueError: folders disagree on image size, a shard disagrees with its index, or a
            finding is not in the label space.
    """

    def __init__(
        self,
        roots: str | Path | Sequence[str | Path],
        splits: str | Sequence[str],
        findings: Sequence[str] = FINDINGS,
    ):
        unknown = [f for f in findings if f not in FINDINGS]
        if unknown:
            raise ValueError(f"findings {unknown} are not in the label space")
        self.findings = tuple(findings)
        roots = [roots] if isinstance(roots, str | Path) else list(roots)
        splits = [splits] if isinstance(splits, str) else list(splits)
        self._paths: list[Path] = []
        metas: list[pd.DataFrame] = []
        size = None
        for root in map(Path, roots):
            index = read_index(root)
            if size is not None and index["size"] != size:
                raise ValueError(f"{root}: image size {index['size']} differs from {size}")
            size = index["size"]
            for split in splits:
                for entry in index["splits"].get(split, []):
                    meta = pd.read_parquet(root / f"{entry['name']}.meta.parquet")
                    if len(meta) != entry["n"]:
                        raise ValueError(
                            f"{root}/{entry['name']}: {len(meta)} rows, index says {entry['n']}"
                        )
                    meta["_shard"] = len(self._paths)
                    meta["_row"] = np.arange(len(meta))
                    self._paths.append(root / f"{entry['name']}.images.npy")
                    metas.append(meta)
        self.size = size
        self.meta = (
            pd.concat(metas, ignore_index=True)
            if metas
            else pd.DataFrame(columns=[*META_COLUMNS, "_shard", "_row"])
        )
        self._shard = self.meta["_shard"].to_numpy(dtype=np.int64)
        self._row = self.meta["_row"].to_numpy(dtype=np.int64)
        # own, writable copies (pandas may hand out read-only views)
        self.labels = np.array(self.meta[list(self.findings)].to_numpy(dtype=np.float32))
        self.has_lateral = np.array(self.meta["has_lateral"].to_numpy(dtype=bool))
        self._maps: list[np.ndarray] | None = None
        self._pid = -1
        for k in range(len(self._paths)):  # open once here: fail early on a bad shard
            shape = self._images[k].shape
            if shape[1:] != (2, size, size) or shape[0] != int((self._shard == k).sum()):
                raise ValueError(f"{self._paths[k]}: shape {shape} disagrees with its index")

    @property
    def _images(self) -> list[np.ndarray]:
        """This process's memory maps (reopened after a fork or unpickling)."""
        if self._maps is None or self._pid != os.getpid():
            self._maps = [np.load(p, mmap_mode="r") for p in self._paths]
            self._pid = os.getpid()
        return self._maps

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = None  # never pickle the mapped arrays themselves
        return state

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

    def get_batch(self, indices: Iterable[int]) -> dict[str, torch.Tensor]:
        """A whole batch in one go: ``frontal``/``lateral`` uint8 (B, 1, S, S), ``has_lateral``
        bool (B,), ``labels`` float32 (B, F) with NaN kept, ``index`` int64 (B,).

        Rows are read shard by shard in sorted order (mostly contiguous memmap reads), then
        scattered back to the requested order.
        """
        idx = np.fromiter(indices, dtype=np.int64)
        n, s = len(idx), self.size or 0
        frontal = np.empty((n, 1, s, s), dtype=np.uint8)
        lateral = np.empty((n, 1, s, s), dtype=np.uint8)
        shards, rows = self._shard[idx], self._row[idx]
        order = np.lexsort((rows, shards))
        maps = self._images
        bounds = np.flatnonzero(np.diff(shards[order])) + 1
        for group in np.split(order, bounds):
            if len(group) == 0:
                continue
            r = rows[group]
            lo, hi = int(r[0]), int(r[-1]) + 1
            mm = maps[int(shards[group[0]])]
            block = mm[lo:hi] if hi - lo == len(r) else mm[r]  # contiguous: a plain slice
            frontal[group] = block[:, 0:1]
            lateral[group] = block[:, 1:2]
        return {
            "frontal": torch.from_numpy(frontal),
            "lateral": torch.from_numpy(lateral),
            "has_lateral": torch.from_numpy(self.has_lateral[idx]),
            "labels": torch.from_numpy(self.labels[idx]),
            "index": torch.from_numpy(idx),
        }


class _Batches(Dataset):
    """Map-style view whose items are whole batches (the keys of a :class:`BatchSampler`)."""

    def __init__(self, dataset: ShardDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.dataset.get_batch(indices)


def _identity(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


def make_loader(
    dataset: ShardDataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    sampler: Sampler[int] | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader that reads whole batches with :meth:`ShardDataset.get_batch`.

    Batches are dicts as :meth:`ShardDataset.get_batch` returns them. The shuffle is seeded
    (``seed``): the same seed gives the same sequence of epochs. With ``num_workers`` > 0 each
    worker reads whole batches from its own memory maps.

    Args:
        dataset: the shards.
        batch_size: studies per batch.
        shuffle: random order each epoch (ignored when ``sampler`` is given).
        seed: seeds the shuffle.
        num_workers: DataLoader worker processes (0 = read in the calling process).
        sampler: yields sample indices (e.g. ``DistributedSampler``, ``WeightedRandomSampler``);
            replaces the default sequential / random order.
        drop_last: drop a last, smaller batch.
        pin_memory: pin batches for faster host-to-GPU copies.

    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if sampler is None:
        if shuffle:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        else:
            sampler = SequentialSampler(dataset)
    return DataLoader(
        _Batches(dataset),
        batch_size=None,  # the sampler below already yields whole batches of indices
        sampler=BatchSampler(sampler, batch_size, drop_last),
        num_workers=num_workers,
        collate_fn=_identity,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
