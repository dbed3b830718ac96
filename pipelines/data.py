"""The PyTorch Dataset of prepared shards, and its DataLoader.

The shard format (layout, writers, the per-shard views) lives in :mod:`pipelines.shards`; its
names are re-exported here for the readers and tests that import them from this module.

Images stay uint8 on disk and in batches; :func:`pipelines.model.normalize` turns them into
floats on the training device, which is cheaper than converting on the loader side.

Reading: :class:`ShardDataset` memory-maps the shards (each process opens its own maps, so the
dataset pickles cheaply into DataLoader workers under any start method) and serves single
samples (``ds[i]``, for any sampler) or whole batches (``ds.get_batch(indices)``: one sorted
fancy-index read per shard and view, no per-sample tensors, no collate). :func:`make_loader`
wraps the batched path in a :class:`~torch.utils.data.DataLoader` with a seeded shuffle.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

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

from pipelines.labels import FINDINGS
from pipelines.shards import (
    FORMAT_VERSION,
    INDEX_FILE,
    META_COLUMNS,
    READ_FORMATS,
    ShardViews,
    lateral_rows,
    open_shard,
    read_index,
    shard_meta,
    shard_name,
    write_index,
    write_shard,
    write_views,
)

__all__ = [
    "FORMAT_VERSION",
    "INDEX_FILE",
    "META_COLUMNS",
    "READ_FORMATS",
    "ShardDataset",
    "ShardViews",
    "lateral_rows",
    "make_loader",
    "open_shard",
    "read_index",
    "shard_meta",
    "shard_name",
    "write_index",
    "write_shard",
    "write_views",
]


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
