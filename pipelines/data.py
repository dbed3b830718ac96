"""Prepared-array shards and the PyTorch Dataset that reads them.

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

Images stay uint8 on disk and in batches; :func:`pipelines.model.normalize` turns them into
floats on the training device, which is cheaper than converting on the loader side.

Reading: :class:`ShardDataset` memory-maps the shards (each process opens its own maps, so the
dataset pickles cheaply into DataLoader workers under any start method) and serves single
samples (``ds[i]``, for any sampler) or whole batches (``ds.get_batch(indices)``: one sorted
fancy-index read per shard and view, no per-sample tensors, no collate). :func:`make_loader`
wraps the batched path in a :class:`~torch.utils.data.DataLoader` with a seeded shuffle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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


def _read_rows(view: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``view[rows]`` for sorted rows: a plain slice when they are contiguous."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    return view[lo:hi] if hi - lo == len(rows) else view[rows]


class ShardDataset(Dataset):
    """Studies of one or more splits across one or more prepared folders, memory-mapped.

    Each sample is a dict: ``frontal`` and ``lateral`` uint8 tensors (1, S, S) (the lateral is
    zeros where the study has none), ``has_lateral`` (bool tensor), ``labels`` float32 (F,) with
    NaN kept, and ``index`` (int) into :attr:`meta`. :meth:`get_batch` returns the same keys
    with a leading batch dimension.

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
        self._formats: list[int] = []
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
                    laterals = int(meta["has_lateral"].sum())
                    if len(meta) != entry["n"] or entry.get("laterals", laterals) != laterals:
                        raise ValueError(
                            f"{root}/{entry['name']}: {len(meta)} rows with {laterals} laterals, "
                            f"index says {entry['n']} / {entry.get('laterals')}"
                        )
                    meta["_shard"] = len(self._paths)
                    meta["_row"] = np.arange(len(meta))
                    self._paths.append(root / f"{entry['name']}.images.npy")
                    self._formats.append(index["format"])
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
        self._maps: list[ShardViews] | None = None
        self._pid = -1
        _ = self._views  # open every shard once here: fail early on a bad one
        self._lateral_row = (
            np.concatenate([v.lateral_row for v in self._views])
            if self._paths
            else np.zeros(0, np.int64)
        )

    @property
    def _views(self) -> list[ShardViews]:
        """This process's memory maps (reopened after a fork or unpickling)."""
        if self._maps is None or self._pid != os.getpid():
            bounds = np.searchsorted(self._shard, np.arange(len(self._paths) + 1))
            self._maps = [
                open_shard(p, self.has_lateral[lo:hi], self.size or 0, fmt)
                for p, fmt, lo, hi in zip(
                    self._paths, self._formats, bounds[:-1], bounds[1:], strict=True
                )
            ]
            self._pid = os.getpid()
        return self._maps

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = None  # never pickle the mapped arrays themselves
        return state

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        views = self._views[self._shard[i]]
        frontal = np.array(views.frontal[self._row[i]])
        row = self._lateral_row[i]
        lateral = np.array(views.lateral[row]) if row >= 0 else np.zeros_like(frontal)
        return {
            "frontal": torch.from_numpy(frontal[None]),
            "lateral": torch.from_numpy(lateral[None]),
            "has_lateral": torch.tensor(self.has_lateral[i]),
            "labels": torch.from_numpy(self.labels[i]),
            "index": torch.tensor(i),
        }

    def get_batch(self, indices: Iterable[int]) -> dict[str, torch.Tensor]:
        """A whole batch in one go: ``frontal``/``lateral`` uint8 (B, 1, S, S), ``has_lateral``
        bool (B,), ``labels`` float32 (B, F) with NaN kept, ``index`` int64 (B,).

        Rows are read shard by shard in sorted order (mostly contiguous memmap reads), then
        scattered back to the requested order; a study without a lateral gets zeros.
        """
        idx = np.fromiter(indices, dtype=np.int64)
        n, s = len(idx), self.size or 0
        frontal = np.empty((n, 1, s, s), dtype=np.uint8)
        lateral = np.zeros((n, 1, s, s), dtype=np.uint8)
        shards, rows = self._shard[idx], self._row[idx]
        order = np.lexsort((rows, shards))
        maps = self._views
        bounds = np.flatnonzero(np.diff(shards[order])) + 1
        for group in np.split(order, bounds):
            if len(group) == 0:
                continue
            views = maps[int(shards[group[0]])]
            frontal[group, 0] = _read_rows(views.frontal, rows[group])
            lat_rows = self._lateral_row[idx[group]]
            has = lat_rows >= 0
            if has.any():
                lateral[group[has], 0] = _read_rows(views.lateral, lat_rows[has])
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
