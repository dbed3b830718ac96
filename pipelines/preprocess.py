"""preprocess stage: the studies table -> uint8 shards of (frontal, lateral) pairs per split.

Every study's frontal and lateral image is decoded once (:mod:`pipelines.imaging`: modality and
VOI LUT, MONOCHROME1 inverted, aspect kept by black padding, antialiased resize to
``preprocess.image_size``) and stored with its labels in shards (:mod:`pipelines.data` layout), so
training never decodes an image and every run that changes only training params reuses them.

- Parallel: a process pool (``workers``, 0 = every core; forked on Linux) decodes ``chunk``
  studies per task; results come back in order and at most ``2 * workers + 2`` tasks are in
  flight, so memory holds one shard per split being filled plus a few chunks, whatever the
  number of studies.
- Order and content are deterministic: studies are sorted by ``study_key`` within each split and
  shards are filled in that order, so the same params give byte-identical shards (the index holds
  no timings), whatever the worker count.
- Failures are records, not crashes: a frontal that does not decode drops its study; a lateral
  that does not decode keeps the study frontal-only (``has_lateral`` False, zeros in view 1).
  Both are written to ``rejected`` with the decode reason (:data:`pipelines.imaging.REASONS`).
- Outputs: the shard folder ``out`` (index written last), ``rejected`` (CSV, outside ``out``),
  ``metrics/preprocess.json`` (counts, seconds, images/s) and ``plots/preprocess/grid.png``
  (a few prepared studies, frontal beside lateral, labelled with their findings only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import textwrap
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from pipelines.config import StageParams, load_section
from pipelines.data import INDEX_FILE, read_index, shard_name, write_index, write_shard
from pipelines.errors import DecodeError, UserError
from pipelines.imaging import cpu_count, prepare_many
from pipelines.io import REJECTED_COLUMNS, write_json, write_rejected
from pipelines.labels import FINDINGS
from pipelines.schema import SPLITS
from pipelines.stage import run_stage

log = logging.getLogger(__name__)

METRICS_PATH = Path("metrics/preprocess.json")
GRID_PATH = Path("plots/preprocess/grid.png")
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
EXTRA_META = ("source", "frontal_view")


class PreprocessParams(StageParams):
    """The ``preprocess`` section of params.yaml."""

    studies: str = "data/studies/studies.parquet"
    data_root: str | None = None  # None: the table's attrs["data_root"]
    size: int = Field(128, ge=8, le=2048, alias="image_size")
    shard_size: int = Field(512, ge=1)  # studies per shard (buffer: shard_size * 2 * size**2 B)
    workers: int = Field(0, ge=0)  # 0 = all cores
    chunk: int = Field(8, ge=1)  # studies per worker task
    no_window: Literal["bits", "minmax"] = "bits"
    grid: int = Field(8, ge=0, le=64)  # studies shown in the grid PNG
    out: str = "data/prepared"
    rejected: str = "data/prepared_rejected.csv"


@dataclass
class PreprocessResult:
    """What :func:`preprocess_studies` produced besides the shards."""

    summary: dict[str, Any]
    rejected: pd.DataFrame
    grid: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Core


def preprocess_studies(
    studies: pd.DataFrame, data_root: str | Path, out: str | Path, params: PreprocessParams
) -> PreprocessResult:
    """Decode every study's views and write shards per split into ``out``.

    Args:
        studies: the pair stage's table (``pipelines.schema.STUDY_COLUMNS``).
        data_root: the folder the image paths are relative to.
        out: the prepared folder; old shards and index in it are removed first.
        params: size, shard size, workers, chunk, ``no_window``, grid.

    Returns:
        The summary, the rejected records (standard columns plus ``study_key``, ``view``,
        ``action``) and up to ``params.grid`` prepared studies for the preview.

    Raises:
        UserError: the table lacks columns or has an unknown split.
    """
    start = time.perf_counter()
    missing = [c for c in REQUIRED_COLUMNS if c not in studies.columns]
    if missing:
        raise UserError(f"studies table lacks columns {missing}")
    unknown = sorted(set(studies["split"].astype(str)) - set(SPLITS))
    if unknown:
        raise UserError(f"studies table has unknown splits {unknown}; expected {list(SPLITS)}")
    root, out = Path(data_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)

    table = _ordered(studies)
    workers = params.workers or cpu_count()
    size = params.size
    rejected: list[dict[str, Any]] = []
    grid: list[dict[str, Any]] = []
    spare: list[dict[str, Any]] = []
    index: dict[str, list[dict]] = {s: [] for s in SPLITS}
    counts = {"decoded": 0, "laterals_dropped": 0, "studies_dropped": 0}
    writers = {s: _ShardWriter(out, s, size, params.shard_size, index[s]) for s in SPLITS}

    def jobs() -> Iterator[list[str]]:
        for lo in range(0, len(table), params.chunk):
            part = table.iloc[lo : lo + params.chunk]
            paths: list[str] = []
            for fp, lp in zip(part["frontal_path"], part["lateral_path"], strict=True):
                paths += [str(root / fp), str(root / lp) if lp else ""]
            yield paths

    current = ""
    with _executor(workers) as pool:
        results = _ordered_map(pool, jobs(), size, params.no_window, max_pending=2 * workers + 2)
        rows = table.itertuples(index=False)
        for chunk in results:
            for (front, ferr), (lat, lerr) in zip(chunk[0::2], chunk[1::2], strict=True):
                row = next(rows)._asdict()
                if ferr is not None:
                    counts["studies_dropped"] += 1
                    rejected.append(_record(row, "frontal", ferr, "study_dropped"))
                    if row["lateral_path"]:  # its lateral goes too: listed, never lost silently
                        why = lerr or DecodeError(
                            row["lateral_path"], "frontal_rejected", "the study's frontal failed"
                        )
                        rejected.append(_record(row, "lateral", why, "study_dropped"))
                    continue
                counts["decoded"] += 1 + (lat is not None)
                if lerr is not None:
                    counts["laterals_dropped"] += 1
                    rejected.append(_record(row, "lateral", lerr, "lateral_dropped"))
                if row["split"] != current:  # splits come one after the other
                    if current:
                        writers[current].flush(release=True)
                    current = row["split"]
                writers[current].add(front, lat, row)
                # the preview prefers dual-view studies; frontal-only ones fill the gaps
                pick = grid if lat is not None else spare
                if len(pick) < params.grid:
                    pick.append(_grid_item(row, front, lat))
    for w in writers.values():
        w.flush()
    write_index(out, size, index, stage="preprocess")

    seconds = time.perf_counter() - start
    rej = pd.DataFrame(rejected, columns=[*REJECTED_COLUMNS, *REJECTED_EXTRA])
    studies_in = table["split"].value_counts()
    summary = {
        "size": size,
        "workers": workers,
        "studies_in": {s: int(studies_in.get(s, 0)) for s in SPLITS},
        "studies_out": {s: writers[s].total for s in SPLITS},
        "dual_view_out": {s: writers[s].dual for s in SPLITS},
        "studies_dropped": counts["studies_dropped"],
        "laterals_dropped": counts["laterals_dropped"],
        "images_in": int((table["frontal_path"] != "").sum() + (table["lateral_path"] != "").sum()),
        "images_decoded": counts["decoded"],
        "images_rejected": len(rej),
        "rejected_by_reason": {str(k): int(v) for k, v in rej["reason"].value_counts().items()},
        "shards": sum(len(v) for v in index.values()),
        "seconds": round(seconds, 3),
        "images_per_s": round((counts["decoded"] + len(rej)) / seconds, 2) if seconds else 0.0,
    }
    grid = (grid + spare)[: params.grid]
    return PreprocessResult(summary=summary, rejected=rej, grid=grid)


def _ordered(studies: pd.DataFrame) -> pd.DataFrame:
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


class _ShardWriter:
    """Fills one preallocated shard buffer of a split and writes it when full."""

    def __init__(self, out: Path, split: str, size: int, shard_size: int, entries: list[dict]):
        self.out, self.split, self.size, self.shard_size = out, split, size, shard_size
        self.entries = entries
        self.buf: np.ndarray | None = None
        self.meta: list[dict[str, Any]] = []
        self.total = 0
        self.dual = 0

    def add(self, frontal: np.ndarray, lateral: np.ndarray | None, row: dict[str, Any]) -> None:
        if self.buf is None:
            self.buf = np.empty((self.shard_size, 2, self.size, self.size), dtype=np.uint8)
        n = len(self.meta)
        self.buf[n, 0] = frontal
        self.buf[n, 1] = lateral if lateral is not None else 0
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
        """Write the filled part of the buffer as a shard; ``release`` frees the buffer."""
        if release:
            self.flush()
            self.buf = None
            return
        if not self.meta:
            return
        assert self.buf is not None
        name = shard_name(self.split, len(self.entries))
        meta = pd.DataFrame(self.meta)
        self.entries.append(write_shard(self.out, name, self.buf[: len(self.meta)], meta))
        self.meta = []  # the buffer is reused: every row is fully overwritten before a write


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


def _grid_item(row: dict[str, Any], front: np.ndarray, lat: np.ndarray | None) -> dict[str, Any]:
    values = {f: row[f] for f in FINDINGS}
    return {
        "frontal": front,
        "lateral": lat,
        "split": row["split"],
        "view": row.get("frontal_view", ""),
        "positive": [f for f, v in values.items() if v == 1],
        "labelled": any(v == v for v in values.values()),  # any non-NaN
    }


def _clear(out: Path) -> None:
    """Remove a previous run's shards and index (only those files) from ``out``.

    The index goes first, so a folder left half-cleared has no index and is never read. Temporary
    files (``.<name>.*.tmp``) that a killed run left behind go too: ``out`` is a DVC output.
    """
    for pattern in (INDEX_FILE, "*.images.npy", "*.meta.parquet", ".*.tmp"):
        for old in out.glob(pattern):
            if not old.is_dir():
                old.unlink()
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)  # a sharded run's parts (see below)


# ----------------------------------------------------------------------------------------------
# Parallel decoding


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
    pipelines.imaging (numpy, Pillow, pydicom): they never touch torch or pyarrow, whose threads
    a fork does not copy. ``forkserver`` / ``spawn`` were measured to cost seconds per worker
    here, because each worker re-imports the main module (``pipelines.preprocess`` ->
    ``pipelines.data`` -> torch). Elsewhere: ``spawn`` (macOS, Windows).
    """
    if workers <= 1:
        return _InlineExecutor()
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def _ordered_map(
    pool: Executor, jobs: Iterable[list[str]], size: int, no_window: str, max_pending: int
) -> Iterator[list[tuple[np.ndarray | None, DecodeError | None]]]:
    """Decode jobs in the pool, yielding results in submission order, bounded in flight."""
    pending: deque[Future] = deque()
    for paths in jobs:
        pending.append(pool.submit(prepare_many, paths, size, no_window))
        if len(pending) >= max_pending:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ----------------------------------------------------------------------------------------------
# Preview grid


def save_grid(items: list[dict[str, Any]], path: str | Path) -> None:
    """A PNG of prepared studies: frontal beside lateral, titled with split and findings.

    No keys, paths or header values: nothing that could identify a patient.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.io import atomic_path

    n = max(1, len(items))
    per_row = min(4, n)
    rows = -(-n // per_row)
    height = 2.4 * rows + 0.8
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(3.8 * per_row, height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.8 / height,
                        wspace=0.04, hspace=0.45)  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for k, item in enumerate(items):
        r, c = divmod(k, per_row)
        a_f, a_l = axes[r, 2 * c], axes[r, 2 * c + 1]
        a_f.imshow(item["frontal"], cmap="gray", vmin=0, vmax=255)
        label = ", ".join(item["positive"]) or ("no finding" if item["labelled"] else "unlabelled")
        wrapped = textwrap.fill(label, 26, max_lines=2, placeholder=" ...")
        a_f.set_title(f"{item['split']} {item['view'] or 'frontal'}\n{wrapped}", fontsize=7,
                      loc="left")  # fmt: skip
        if item["lateral"] is not None:
            a_l.imshow(item["lateral"], cmap="gray", vmin=0, vmax=255)
            a_l.set_title("lateral", fontsize=7)
        else:
            a_l.text(0.5, 0.5, "no lateral", ha="center", va="center", fontsize=8)
    if not items:
        axes[0, 0].text(0.5, 0.5, "no studies", ha="center", va="center")
    fig.suptitle("preprocess: prepared studies (frontal | lateral), positive findings", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Stage entry


def run_preprocess(
    params: PreprocessParams, metrics: str | Path = METRICS_PATH, grid: str | Path = GRID_PATH
) -> dict[str, Any]:
    """Read the studies table, write shards, rejected records, summary and grid.

    Raises:
        UserError: the studies table is missing or malformed.
    """
    path = Path(params.studies)
    if not path.is_file():
        raise UserError(f"{path}: studies table not found; run the pair stage first")
    studies = pd.read_parquet(path)
    data_root = params.data_root or studies.attrs.get("data_root", ".")
    result = preprocess_studies(studies, data_root, params.out, params)
    write_rejected(result.rejected, params.rejected)
    write_json(metrics, result.summary)
    save_grid(result.grid, grid)
    s = result.summary
    log.info(
        "preprocess: %s studies in, %s out, %d images decoded, %d rejected (%s), %.1f images/s",
        sum(s["studies_in"].values()),
        sum(s["studies_out"].values()),
        s["images_decoded"],
        s["images_rejected"],
        ", ".join(f"{k}={v}" for k, v in s["rejected_by_reason"].items()) or "none",
        s["images_per_s"],
    )
    return s


# ----------------------------------------------------------------------------------------------
# Sharded runs: `--part I --parts N` on any number of processes or machines, then `--merge N`
#
# The studies table, in the stage's own order (:func:`_ordered`: split, then study key), is cut
# into N contiguous row ranges (:func:`part_bounds`). Part I decodes its range with
# :func:`preprocess_studies` into a hidden temporary folder under ``<out>/parts/`` and renames it
# to ``<out>/parts/I-of-N`` only when complete: a part folder is a prepared folder of its own
# (shards + ``index.json``) plus ``part.json`` (its range, a fingerprint of the table and params,
# its summary and rejected records). The merge checks every part is there, complete, made from
# the same table and params and agrees with its shards, then writes ``<out>/index.json`` whose
# entries name the parts' shards (``parts/0-of-2/train-00000``). Since the parts are contiguous
# ranges of the single-process order, the merged folder serves the same studies, pixels and
# labels in the same order as ``python -m pipelines.preprocess``; only shard boundaries differ
# (each part ends its splits with a partial shard). The merge also writes the stage's rejected
# CSV (same rows, same order), metrics (same counts) and grid (same studies).

PARTS_DIR = "parts"
PART_FILE = "part.json"
# params that change how a run goes, not what it writes: a part may use its own
_RUN_ONLY_PARAMS = {"studies", "data_root", "workers", "chunk", "grid", "out", "rejected"}


def part_name(part: int, parts: int) -> str:
    """``0-of-4`` style part folder names."""
    return f"{part}-of-{parts}"


def part_bounds(table: pd.DataFrame, parts: int) -> list[tuple[int, int]]:
    """Row ranges ``[lo, hi)`` of the ordered table, one per part, as even as possible.

    A cut never falls between two rows of the same ``study_key``, so a check across a study's
    rows sees them all in one part.
    """
    n = len(table)
    keys = table["study_key"].astype(str).to_numpy()
    cuts = [0]
    for i in range(1, parts):
        cut = max(i * n // parts, cuts[-1])
        while 0 < cut < n and keys[cut] == keys[cut - 1]:
            cut += 1
        cuts.append(cut)
    cuts.append(n)
    return list(pairwise(cuts))


def _partition(
    studies: pd.DataFrame, params: PreprocessParams, parts: int
) -> tuple[str, list[tuple[int, int]], np.ndarray]:
    """(fingerprint, row ranges, input row of each ordered row) of a sharded run.

    Raises:
        UserError: the table lacks columns, or ``parts`` < 1.
    """
    if parts < 1:
        raise UserError(f"parts must be >= 1, got {parts}")
    missing = [c for c in REQUIRED_COLUMNS if c not in studies.columns]
    if missing:
        raise UserError(f"studies table lacks columns {missing}")
    table = _ordered(studies.assign(_input_row=np.arange(len(studies))))
    rows = table.pop("_input_row").to_numpy()
    digest = hashlib.sha256(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    output_params = params.model_dump(mode="json", exclude=_RUN_ONLY_PARAMS)
    digest.update(json.dumps(output_params, sort_keys=True).encode())
    return digest.hexdigest(), part_bounds(table, parts), rows


def preprocess_part(
    studies: pd.DataFrame,
    data_root: str | Path,
    out: str | Path,
    params: PreprocessParams,
    part: int,
    parts: int,
) -> dict[str, Any]:
    """Decode part ``part`` of ``parts`` into ``<out>/parts/<part>-of-<parts>``, atomically.

    Independent of every other part: parts may run at the same time in any processes or on
    any machines that see ``out`` and the images. A rerun replaces the part; a run killed
    midway leaves only a hidden temporary folder, which the merge never reads (and removes).

    Returns:
        The part's ``part.json`` record (range, fingerprint, summary, rejected records).

    Raises:
        UserError: ``part`` is not in ``0 .. parts - 1``, or the table is malformed.
    """
    if not 0 <= part < max(parts, 1):
        raise UserError(f"part must be in 0..{parts - 1}, got {part}")
    started = time.time()
    fingerprint, bounds, rows = _partition(studies, params, parts)
    lo, hi = bounds[part]
    parts_dir = Path(out) / PARTS_DIR
    parts_dir.mkdir(parents=True, exist_ok=True)
    name = part_name(part, parts)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parts_dir))
    try:
        result = preprocess_studies(studies.iloc[rows[lo:hi]], data_root, tmp, params)
        record = {
            "part": part,
            "parts": parts,
            "rows": [lo, hi],
            "rows_total": len(rows),
            "fingerprint": fingerprint,
            "started": started,
            "finished": time.time(),
            "summary": result.summary,
            "rejected_columns": list(result.rejected.columns),
            "rejected": result.rejected.to_dict(orient="records"),
        }
        write_json(tmp / PART_FILE, record)  # last: a part folder with part.json is complete
        _swap_in(tmp, parts_dir / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``, replacing an older ``final``."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def merge_parts(
    studies: pd.DataFrame, out: str | Path, params: PreprocessParams, parts: int
) -> PreprocessResult:
    """Check the ``parts`` part folders of ``out`` and write the merged ``out/index.json``.

    Previous top-level shards and index (a single-process run) and any other part folders
    (another ``parts``, killed runs) are removed; the index is written last.

    Returns:
        The merged summary (counts summed over parts, plus ``parts``, ``part_seconds``), the
        rejected records of every part in the single-process order, and the preview studies.

    Raises:
        UserError: a part is missing, incomplete, made from another table or other params, or
            disagrees with its shards; the message names the part(s).
    """
    merge_start = time.perf_counter()
    out = Path(out)
    parts_dir = out / PARTS_DIR
    fingerprint, bounds, rows = _partition(studies, params, parts)
    names = [part_name(i, parts) for i in range(parts)]
    missing = [n for n in names if not (parts_dir / n).is_dir()]
    if missing:
        raise UserError(
            f"{parts_dir}: part(s) {', '.join(missing)} missing; run "
            f"`python -m pipelines.preprocess --part I --parts {parts}` for each, then merge"
        )
    records, indexes = [], []
    for i, name in enumerate(names):
        folder = parts_dir / name
        record, index = _check_part(folder, i, parts, bounds[i], len(rows), fingerprint, params)
        records.append(record)
        indexes.append(index)

    (out / INDEX_FILE).unlink(missing_ok=True)  # from here on the folder reads as incomplete
    for pattern in ("*.images.npy", "*.meta.parquet"):  # a single-process run's shards
        for old in out.glob(pattern):
            old.unlink()
    for stale in parts_dir.iterdir():
        if stale.name not in names:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    splits = {
        s: [
            {"name": f"{PARTS_DIR}/{name}/{e['name']}", "n": e["n"]}
            for name, index in zip(names, indexes, strict=True)
            for e in index["splits"].get(s, [])
        ]
        for s in SPLITS
    }
    write_index(out, params.size, splits, stage="preprocess", parts=parts)

    columns = records[0]["rejected_columns"]
    rej = pd.DataFrame([r for rec in records for r in rec["rejected"]], columns=columns)
    summary = _sum_counts([rec["summary"] for rec in records])
    wall = max(r["finished"] for r in records) - min(r["started"] for r in records)
    seconds = wall + time.perf_counter() - merge_start
    images = summary["images_decoded"] + summary["images_rejected"]
    summary |= {
        "size": params.size,
        "shards": sum(len(v) for v in splits.values()),
        "parts": parts,
        "part_seconds": [r["summary"]["seconds"] for r in records],
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 2) if seconds else 0.0,
    }
    return PreprocessResult(summary=summary, rejected=rej, grid=_grid_from(out, params.grid))


def _check_part(
    folder: Path,
    part: int,
    parts: int,
    bounds: tuple[int, int],
    rows_total: int,
    fingerprint: str,
    params: PreprocessParams,
) -> tuple[dict[str, Any], dict]:
    """A part's ``part.json`` and index, checked against this run and against its shards."""
    name = folder.name
    if not (folder / PART_FILE).is_file() or not (folder / INDEX_FILE).is_file():
        raise UserError(f"{folder}: part {name} is incomplete (no {PART_FILE}); rerun it")
    record = json.loads((folder / PART_FILE).read_text())
    made_for = (record.get("part"), record.get("parts"), record.get("rows_total"))
    if made_for != (part, parts, rows_total) or tuple(record.get("rows", ())) != bounds:
        raise UserError(f"{folder}: part {name} covers other rows of the table; rerun it")
    if record.get("fingerprint") != fingerprint:
        raise UserError(
            f"{folder}: part {name} was made from another studies table or other "
            "preprocess params; rerun it"
        )
    try:
        index = read_index(folder)
    except ValueError as exc:
        raise UserError(f"part {name}: {exc}") from exc
    import pyarrow.parquet as pq

    for entries in index["splits"].values():
        for e in entries:
            base = folder / e["name"]
            try:
                shape = np.load(f"{base}.images.npy", mmap_mode="r").shape
                n_meta = pq.read_metadata(f"{base}.meta.parquet").num_rows
            except (OSError, ValueError) as exc:
                raise UserError(f"part {name}: shard {e['name']} unreadable ({exc})") from exc
            if shape != (e["n"], 2, params.size, params.size) or n_meta != e["n"]:
                raise UserError(
                    f"part {name}: shard {e['name']} holds {shape} images and {n_meta} rows, "
                    f"its index says {e['n']} studies at {params.size} px; rerun the part"
                )
    return record, index


def _sum_counts(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts summed over part summaries: numbers add up, mappings add up key by key."""
    merged: dict[str, Any] = {}
    for summary in summaries:
        for key, value in summary.items():
            if isinstance(value, dict):
                into = merged.setdefault(key, {})
                for k, v in value.items():
                    into[k] = into.get(k, 0) + v
            elif isinstance(value, int | float) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
            else:
                merged.setdefault(key, value)
    return merged


def _grid_from(out: Path, n: int) -> list[dict[str, Any]]:
    """The preview studies of a prepared folder, chosen as :func:`preprocess_studies` does."""
    from pipelines.data import ShardDataset

    dual: list[dict[str, Any]] = []
    spare: list[dict[str, Any]] = []
    for split in SPLITS:
        if len(dual) >= n:
            break
        ds = ShardDataset(out, split)
        views = ds.meta["frontal_view"] if "frontal_view" in ds.meta else [""] * len(ds)
        for i, (lateral, view) in enumerate(zip(ds.has_lateral, views, strict=True)):
            pick = dual if lateral else spare
            if len(pick) >= n:
                if len(dual) >= n:
                    break
                continue
            pair = ds.get_batch([i])
            values = dict(zip(FINDINGS, ds.labels[i].tolist(), strict=True))
            pick.append(
                {
                    "frontal": pair["frontal"][0, 0].numpy(),
                    "lateral": pair["lateral"][0, 0].numpy() if lateral else None,
                    "split": split,
                    "view": str(view),
                    "positive": [f for f, v in values.items() if v == 1],
                    "labelled": any(v == v for v in values.values()),
                }
            )
    return (dual + spare)[:n]


def _read_studies(params: PreprocessParams) -> tuple[pd.DataFrame, str | Path]:
    path = Path(params.studies)
    if not path.is_file():
        raise UserError(f"{path}: studies table not found; run the pair stage first")
    studies = pd.read_parquet(path)
    return studies, params.data_root or studies.attrs.get("data_root", ".")


def run_part(params: PreprocessParams, part: int, parts: int) -> dict[str, Any]:
    """``--part I --parts N``: read the studies table and decode one part (no other output)."""
    studies, data_root = _read_studies(params)
    record = preprocess_part(studies, data_root, params.out, params, part, parts)
    s = record["summary"]
    log.info(
        "preprocess part %s: rows %d..%d of %d, %s studies out, %d images rejected, %.1f images/s",
        part_name(part, parts),
        *record["rows"],
        record["rows_total"],
        sum(s["studies_out"].values()),
        s["images_rejected"],
        s["images_per_s"],
    )
    return s


def run_merge(
    params: PreprocessParams,
    parts: int,
    metrics: str | Path = METRICS_PATH,
    grid: str | Path = GRID_PATH,
) -> dict[str, Any]:
    """``--merge N``: merge the parts and write the stage's other outputs, as the stage does."""
    studies, _ = _read_studies(params)
    result = merge_parts(studies, params.out, params, parts)
    write_rejected(result.rejected, params.rejected)
    write_json(metrics, result.summary)
    save_grid(result.grid, grid)
    s = result.summary
    log.info(
        "preprocess merge of %d parts: %s studies out, %d images decoded, %d rejected",
        parts,
        sum(s["studies_out"].values()),
        s["images_decoded"],
        s["images_rejected"],
    )
    return s


def _parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m pipelines.preprocess",
        description="The preprocess stage (no flags: the whole stage, as dvc.yaml runs it), or "
        "a sharded run: every --part I --parts N (in any processes or machines), then --merge N.",
    )
    ap.add_argument("--part", type=int, help="decode only part I (0-based) of --parts")
    ap.add_argument("--parts", type=int, help="number of parts of a sharded run")
    ap.add_argument("--merge", type=int, metavar="N", help="check the N parts, write the index")
    ap.add_argument("--workers", type=int, help="decode processes (overrides preprocess.workers)")
    args = ap.parse_args(argv)
    if (args.part is None) != (args.parts is None):
        ap.error("--part and --parts go together")
    if args.merge is not None and args.part is not None:
        ap.error("--merge runs on its own, after every --part")
    for flag in ("parts", "merge"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            ap.error(f"--{flag} must be >= 1")
    if args.workers is not None and args.workers < 0:
        ap.error("--workers must be >= 0")
    return args


def _run_sharded(args: argparse.Namespace) -> dict[str, Any]:
    params = load_section(PreprocessParams, "preprocess")
    if args.workers is not None:
        params = params.model_copy(update={"workers": args.workers})
    if args.merge is not None:
        return run_merge(params, args.merge)
    if args.part is not None:
        return run_part(params, args.part, args.parts)
    return run_preprocess(params)


def main(argv: list[str] | None = None) -> None:
    """DVC entry point: ``python -m pipelines.preprocess`` reads the ``preprocess`` section.

    ``--part I --parts N`` and ``--merge N`` run the stage sharded (see "Sharded runs" above);
    with no flags it is the whole stage, as ``dvc.yaml`` runs it.
    """
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.part is None and args.merge is None and args.workers is None:
        run_stage(lambda: run_preprocess(load_section(PreprocessParams, "preprocess")))
    else:
        run_stage(lambda: _run_sharded(args))


if __name__ == "__main__":
    main()
