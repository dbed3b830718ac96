"""Sharded preprocess runs: ``--part I --parts N`` in any processes or machines, then ``--merge N``.

The studies table, in the stage's own order (:func:`~pipelines.preprocess.core.ordered`: split,
then study key), is cut into N contiguous row ranges (:func:`part_bounds`). Part I decodes its
range with
:func:`preprocess_studies` into a hidden temporary folder under ``<out>/parts/`` and renames it
to ``<out>/parts/I-of-N`` only when complete: a part folder is a prepared folder of its own
(shards + ``index.json``) plus ``part.json`` (its range, a fingerprint of the table and params,
its summary and rejected records). The merge checks every part is there, complete, made from the
same table and params and agrees with its shards, then writes ``<out>/index.json`` whose entries
name the parts' shards (``parts/0-of-2/train-00000``). Since the parts are contiguous ranges of
the single-process order, the merged folder serves the same studies, pixels and labels in the
same order as ``python -m pipelines.preprocess``; only shard boundaries differ (each part ends
its splits with a partial shard). The merge also writes the stage's rejected CSV (same rows,
same order), metrics (same counts) and grid (same studies).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import UserError
from pipelines.io import write_json
from pipelines.preprocess.core import (
    PARTS_DIR,
    REQUIRED_COLUMNS,
    PreprocessParams,
    PreprocessResult,
    ordered,
    preprocess_studies,
    source_summary,
)
from pipelines.preprocess.grid import grid_from
from pipelines.schema import SPLITS, ImageRoots
from pipelines.shards import FORMAT_VERSION, INDEX_FILE, open_shard, read_index, write_index

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
    table = ordered(studies.assign(_input_row=np.arange(len(studies))))
    rows = table.pop("_input_row").to_numpy()
    digest = hashlib.sha256(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    output_params = params.model_dump(mode="json", exclude=_RUN_ONLY_PARAMS)
    digest.update(json.dumps(output_params, sort_keys=True).encode())
    return digest.hexdigest(), part_bounds(table, parts), rows


def preprocess_part(
    studies: pd.DataFrame,
    data_root: str | Path | ImageRoots,
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
            e | {"name": f"{PARTS_DIR}/{name}/{e['name']}"}
            for name, index in zip(names, indexes, strict=True)
            for e in index["splits"].get(s, [])
        ]
        for s in SPLITS
    }
    sources = source_summary(studies)
    write_index(out, params.size, splits, stage="preprocess", parts=parts, sources=sources)

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
    return PreprocessResult(summary=summary, rejected=rej, grid=grid_from(out, params.grid))


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
    if index["format"] != FORMAT_VERSION:  # the merged index names one format for every shard
        raise UserError(f"part {name}: shard format {index['format']} is an older one; rerun it")
    for entries in index["splits"].values():
        for e in entries:
            base = folder / e["name"]
            try:
                has = pd.read_parquet(f"{base}.meta.parquet", columns=["has_lateral"])
                open_shard(f"{base}.images.npy", has["has_lateral"], params.size)
            except (OSError, ValueError) as exc:
                raise UserError(
                    f"part {name}: shard {e['name']} is unreadable or disagrees with its meta "
                    f"({exc}); rerun the part"
                ) from exc
            if len(has) != e["n"] or int(has["has_lateral"].sum()) != e["laterals"]:
                raise UserError(
                    f"part {name}: shard {e['name']} holds {len(has)} studies, its index says "
                    f"{e['n']}; rerun the part"
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
