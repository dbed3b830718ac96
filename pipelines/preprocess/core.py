"""Decode every study of the studies table once into uint8 shards per split.

Every study's frontal and lateral image is decoded once (:mod:`pipelines.imaging`: modality and
VOI LUT, MONOCHROME1 inverted, aspect kept by black padding, antialiased resize to
``preprocess.image_size``) and stored with its labels in shards (:mod:`pipelines.shards` layout), so
training never decodes an image and every run that changes only training params reuses them.

- Parallel: a process pool (``workers``, 0 = every core; forked on Linux) decodes ``chunk``
  studies per task; results come back in order and at most ``2 * workers + 2`` tasks are in
  flight, so memory holds one shard per split being filled plus a few chunks, whatever the
  number of studies.
- Order and content are deterministic: studies are sorted by ``study_key`` within each split and
  shards are filled in that order, so the same params give byte-identical shards (the index holds
  no timings), whatever the worker count.
- Failures are records, not crashes: a frontal that does not decode drops its study; a lateral
  that does not decode keeps the study frontal-only (``has_lateral`` False, no lateral stored).
  Both are written to ``rejected`` with the decode reason (:data:`pipelines.imaging.REASONS`).
"""

from __future__ import annotations

import multiprocessing
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from pipelines.config import StageParams
from pipelines.errors import DecodeError, UserError
from pipelines.imaging import cpu_count, prepare_many
from pipelines.io import REJECTED_COLUMNS
from pipelines.labels import FINDINGS
from pipelines.limits import MAX_IMAGE_PIXELS
from pipelines.preprocess.grid import grid_item
from pipelines.schema import SOURCES_ATTR, SPLITS, ImageRoots
from pipelines.shards import INDEX_FILE, shard_name, write_index, write_views

REQUIRED_COLUMNS: tuple[str, ...] = (
    "study_key",
    "patient_key",
    "source",
    "frontal_path",
    "lateral_path",
    *FINDINGS,
    "split",
)
REJECTED_EXTRA = ("study_key", "view", "action")
EXTRA_META = ("source", "frontal_view", "sex", "age_band")  # subgroups of the evaluation
PARTS_DIR = "parts"  # a sharded run's part folders inside the prepared folder (parts.py)

Decoded = tuple[np.ndarray | None, DecodeError | None]


class PreprocessParams(StageParams):
    """The ``preprocess`` section of params.yaml."""

    studies: str = "data/studies/studies.parquet"
    data_root: str | None = None  # one image root for every source; None: the table's roots
    size: int = Field(128, ge=8, le=2048, alias="image_size")
    shard_size: int = Field(512, ge=1)  # studies per shard (buffers: 2 * shard_size * size**2 B)
    workers: int = Field(0, ge=0)  # 0 = all cores
    chunk: int = Field(8, ge=1)  # studies per worker task
    no_window: Literal["bits", "minmax"] = "bits"
    # rows x columns over which an image is not decoded (too_large; pipelines.limits)
    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, ge=1)
    grid: int = Field(8, ge=0, le=64)  # studies shown in the grid PNG
    out: str = "data/prepared"
    rejected: str = "data/prepared_rejected.csv"


@dataclass
class PreprocessResult:
    """What :func:`preprocess_studies` produced besides the shards."""

    summary: dict[str, Any]
    rejected: pd.DataFrame
    grid: list[dict[str, Any]] = field(default_factory=list)


def check_table(studies: pd.DataFrame) -> None:
    """Raise :class:`UserError` when the studies table lacks columns or has an unknown split."""
    missing = [c for c in REQUIRED_COLUMNS if c not in studies.columns]
    if missing:
        raise UserError(f"studies table lacks columns {missing}")
    unknown = sorted(set(studies["split"].astype(str)) - set(SPLITS))
    if unknown:
        raise UserError(f"studies table has unknown splits {unknown}; expected {list(SPLITS)}")


def preprocess_studies(
    studies: pd.DataFrame,
    data_root: str | Path | ImageRoots,
    out: str | Path,
    params: PreprocessParams,
) -> PreprocessResult:
    """Decode every study's views and write shards per split into ``out``.

    Args:
        studies: the pair stage's table (``pipelines.schema.STUDY_COLUMNS``).
        data_root: where each source's image paths are relative to (one folder for all).
        out: the prepared folder; old shards and index in it are removed first.
        params: size, shard size, workers, chunk, ``no_window``, grid.

    Returns:
        The summary, the rejected records (standard columns plus ``study_key``, ``view``,
        ``action``) and up to ``params.grid`` prepared studies for the preview.

    Raises:
        UserError: the table lacks columns or has an unknown split.
    """
    start = time.perf_counter()
    check_table(studies)
    roots = data_root if isinstance(data_root, ImageRoots) else ImageRoots(Path(data_root))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clear(out)
    table = ordered(studies)
    workers = params.workers or cpu_count()
    sink = _Sink(out, params)
    with _executor(workers) as pool:
        jobs = _jobs(table, roots, params.chunk)
        results = _ordered_map(pool, jobs, params, 2 * workers + 2)
        rows = table.itertuples(index=False)
        for chunk in results:
            for frontal, lateral in zip(chunk[0::2], chunk[1::2], strict=True):
                sink.add(next(rows)._asdict(), frontal, lateral)
    sink.close()
    write_index(out, params.size, sink.index, stage="preprocess", sources=source_summary(studies))
    rejected = pd.DataFrame(sink.rejected, columns=[*REJECTED_COLUMNS, *REJECTED_EXTRA])
    summary = _summary(table, sink, rejected, workers, time.perf_counter() - start)
    return PreprocessResult(summary=summary, rejected=rejected, grid=sink.preview())


def ordered(studies: pd.DataFrame) -> pd.DataFrame:
    """Studies in a row-order-independent order: by split (train, val, test), then study key."""
    table = studies.copy()
    table["lateral_path"] = table["lateral_path"].fillna("").astype(str)
    table["frontal_path"] = table["frontal_path"].astype(str)
    table["split"] = table["split"].astype(str)
    if "frontal_view" not in table.columns:
        table["frontal_view"] = ""
    table["_split_rank"] = table["split"].map({s: i for i, s in enumerate(SPLITS)})
    table = table.sort_values(["_split_rank", "study_key"], kind="mergesort")
    return table.drop(columns="_split_rank").reset_index(drop=True)


Job = tuple[list[str], list[int | None]]


def _bits(table: pd.DataFrame, view: str) -> list[int | None]:
    """Per study, the stored bits of a view from the source metadata (None: detect)."""
    column = f"{view}_bits"
    if column not in table:
        return [None] * len(table)
    values = pd.to_numeric(table[column], errors="coerce").fillna(0).astype(int)
    return [int(b) or None for b in values]


def _jobs(table: pd.DataFrame, roots: ImageRoots, chunk: int) -> Iterator[Job]:
    """Per ``chunk`` studies: image paths (frontal, lateral or '', ...) and their stored bits."""
    frontal_bits, lateral_bits = _bits(table, "frontal"), _bits(table, "lateral")
    sources = table["source"].astype(str).tolist()
    frontal, lateral = table["frontal_path"].tolist(), table["lateral_path"].tolist()
    for lo in range(0, len(table), chunk):
        paths: list[str] = []
        bits: list[int | None] = []
        for i in range(lo, min(lo + chunk, len(table))):  # columns as lists: no row objects
            paths += [roots.resolve(sources[i], frontal[i]), roots.resolve(sources[i], lateral[i])]
            bits += [frontal_bits[i], lateral_bits[i]]
        yield paths, bits


def source_summary(studies: pd.DataFrame) -> dict[str, Any]:
    """Per source: what it is (reader, synthetic; from the table's attrs) and studies per split.

    The model card's training-data section and ``cxr predict``'s data notice read it.
    """
    about = dict(studies.attrs.get(SOURCES_ATTR) or {})
    counts = studies.groupby([studies["source"].astype(str), studies["split"].astype(str)]).size()
    out: dict[str, Any] = {}
    for name in sorted(set(studies["source"].astype(str))):
        info = dict(about.get(name) or {"reader": name, "synthetic": None})
        info["studies"] = {s: int(counts.get((name, s), 0)) for s in SPLITS}
        out[name] = info
    return out


class _Sink:
    """Where decoded studies go: the shard writers of every split, rejections, preview picks."""

    def __init__(self, out: Path, params: PreprocessParams):
        self.index: dict[str, list[dict]] = {s: [] for s in SPLITS}
        self.writers = {
            s: _ShardWriter(out, s, params.size, params.shard_size, self.index[s]) for s in SPLITS
        }
        self.rejected: list[dict[str, Any]] = []
        self.counts = {"decoded": 0, "laterals_dropped": 0, "studies_dropped": 0}
        self.n_grid = params.grid
        self.grid: list[dict[str, Any]] = []
        self.spare: list[dict[str, Any]] = []
        self.current = ""

    def add(self, row: dict[str, Any], frontal: Decoded, lateral: Decoded) -> None:
        """File one study: drop it (frontal failed), keep it frontal-only, or keep both views."""
        (front, ferr), (lat, lerr) = frontal, lateral
        if ferr is not None:
            self._drop(row, ferr, lerr)
            return
        self.counts["decoded"] += 1 + (lat is not None)
        if lerr is not None:
            self.counts["laterals_dropped"] += 1
            self.rejected.append(_record(row, "lateral", lerr, "lateral_dropped"))
        if row["split"] != self.current:  # splits come one after the other
            if self.current:
                self.writers[self.current].flush(release=True)
            self.current = row["split"]
        self.writers[self.current].add(front, lat, row)
        # the preview prefers dual-view studies; frontal-only ones fill the gaps
        pick = self.grid if lat is not None else self.spare
        if len(pick) < self.n_grid:
            pick.append(grid_item(row, front, lat))

    def _drop(self, row: dict[str, Any], ferr: DecodeError, lerr: DecodeError | None) -> None:
        self.counts["studies_dropped"] += 1
        self.rejected.append(_record(row, "frontal", ferr, "study_dropped"))
        if row["lateral_path"]:  # its lateral goes too: listed, never lost silently
            why = lerr or DecodeError(
                row["lateral_path"], "frontal_rejected", "the study's frontal failed"
            )
            self.rejected.append(_record(row, "lateral", why, "study_dropped"))

    def close(self) -> None:
        """Write every split's last, partial shard."""
        for w in self.writers.values():
            w.flush()

    def preview(self) -> list[dict[str, Any]]:
        """The studies for the grid PNG: dual-view first, frontal-only ones after."""
        return (self.grid + self.spare)[: self.n_grid]


def _summary(
    table: pd.DataFrame, sink: _Sink, rej: pd.DataFrame, workers: int, seconds: float
) -> dict[str, Any]:
    studies_in = table["split"].value_counts()
    counts, writers = sink.counts, sink.writers
    images_in = (table["frontal_path"] != "").sum() + (table["lateral_path"] != "").sum()
    return {
        "size": writers["train"].size,
        "workers": workers,
        "studies_in": {s: int(studies_in.get(s, 0)) for s in SPLITS},
        "studies_out": {s: writers[s].total for s in SPLITS},
        "dual_view_out": {s: writers[s].dual for s in SPLITS},
        "studies_dropped": counts["studies_dropped"],
        "laterals_dropped": counts["laterals_dropped"],
        "images_in": int(images_in),
        "images_decoded": counts["decoded"],
        "images_rejected": len(rej),
        "rejected_by_reason": {str(k): int(v) for k, v in rej["reason"].value_counts().items()},
        "shards": sum(len(v) for v in sink.index.values()),
        "seconds": round(seconds, 3),
        "images_per_s": round((counts["decoded"] + len(rej)) / seconds, 2) if seconds else 0.0,
    }


class _ShardWriter:
    """Fills one split's preallocated shard buffers (frontals, laterals) and writes when full."""

    def __init__(self, out: Path, split: str, size: int, shard_size: int, entries: list[dict]):
        self.out, self.split, self.size, self.shard_size = out, split, size, shard_size
        self.entries = entries
        self.frontal: np.ndarray | None = None
        self.lateral: np.ndarray | None = None
        self.laterals = 0  # laterals in the shard being filled
        self.meta: list[dict[str, Any]] = []
        self.total = 0
        self.dual = 0

    def add(self, frontal: np.ndarray, lateral: np.ndarray | None, row: dict[str, Any]) -> None:
        if self.frontal is None or self.lateral is None:
            shape = (self.shard_size, self.size, self.size)
            self.frontal = np.empty(shape, dtype=np.uint8)
            self.lateral = np.empty(shape, dtype=np.uint8)
        self.frontal[len(self.meta)] = frontal
        if lateral is not None:
            self.lateral[self.laterals] = lateral
            self.laterals += 1
        self.meta.append(
            {"study_key": row["study_key"], "patient_key": row["patient_key"]}
            | {"has_lateral": lateral is not None}
            | {f: row[f] for f in FINDINGS}
            | {c: str(row.get(c, "")) for c in EXTRA_META}
        )
        self.total += 1
        self.dual += lateral is not None
        if len(self.meta) == self.shard_size:
            self.flush()

    def flush(self, release: bool = False) -> None:
        """Write the filled part of the buffers as a shard; ``release`` frees the buffers."""
        if release:
            self.flush()
            self.frontal = self.lateral = None
            return
        if not self.meta:
            return
        assert self.frontal is not None and self.lateral is not None
        name = shard_name(self.split, len(self.entries))
        n, meta = len(self.meta), pd.DataFrame(self.meta)
        entry = write_views(self.out, name, self.frontal[:n], self.lateral[: self.laterals], meta)
        self.entries.append(entry)
        self.meta, self.laterals = [], 0  # the buffers are reused: written rows are overwritten


def _record(row: dict[str, Any], view: str, err: DecodeError, action: str) -> dict[str, Any]:
    path = row["frontal_path"] if view == "frontal" else row["lateral_path"]
    return {
        "source": row["source"],
        "path": path,
        "reason": err.reason,
        "detail": f"{view}: {err.detail}",
        "study_key": row["study_key"],
        "view": view,
        "action": action,
    }


def clear(out: Path) -> None:
    """Remove a previous run's shards and index (only those files) from ``out``.

    The index goes first, so a folder left half-cleared has no index and is never read. Temporary
    files (``.<name>.*.tmp``) that a killed run left behind go too: ``out`` is a DVC output.
    """
    for pattern in (INDEX_FILE, "*.images.npy", "*.meta.parquet", ".*.tmp"):
        for old in out.glob(pattern):
            if not old.is_dir():
                old.unlink()
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)  # a sharded run's parts (see below)


class _InlineExecutor(Executor):
    """Runs tasks in the calling process (``workers == 1``): no pool start-up, easy debugging."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


def _executor(workers: int) -> Executor:
    """A pool of ``workers`` processes (in-process when ``workers`` is 1).

    Linux: ``fork``. Workers start at once with every module already imported, and they only run
    pipelines.imaging (numpy, Pillow, pydicom): they never touch pyarrow, whose threads a fork
    does not copy. The stage does not import torch (shards are written by
    :mod:`pipelines.shards`), which keeps the parent and every forked worker ~0.7 GB smaller.
    ``forkserver`` / ``spawn`` were measured to cost seconds per worker here, because each
    worker re-imports the main module. Elsewhere: ``spawn`` (macOS, Windows).
    """
    if workers <= 1:
        return _InlineExecutor()
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def _ordered_map(
    pool: Executor, jobs: Iterable[Job], params: PreprocessParams, max_pending: int
) -> Iterator[list[tuple[np.ndarray | None, DecodeError | None]]]:
    """Decode jobs in the pool, yielding results in submission order, bounded in flight."""
    pending: deque[Future] = deque()
    decode = (params.size, params.no_window)
    for paths, bits in jobs:
        pending.append(pool.submit(prepare_many, paths, *decode, bits, params.max_image_pixels))
        if len(pending) >= max_pending:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
