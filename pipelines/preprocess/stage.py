"""The preprocess stage's entry points: the whole stage, one part of a sharded run, the merge.

Outputs: the shard folder ``out`` (index written last), ``rejected`` (CSV, outside ``out``),
``metrics/preprocess.json`` (counts, seconds, images/s) and ``plots/preprocess/grid.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import load_section
from pipelines.errors import UserError
from pipelines.io import write_metrics, write_rejected
from pipelines.preprocess.core import PreprocessParams, preprocess_studies
from pipelines.preprocess.grid import save_grid
from pipelines.preprocess.parts import merge_parts, part_name, preprocess_part
from pipelines.schema import ImageRoots
from pipelines.stage import run_stage

log = logging.getLogger("pipelines.preprocess")

METRICS_PATH = Path("metrics/preprocess.json")
GRID_PATH = Path("plots/preprocess/grid.png")


def run_preprocess(
    params: PreprocessParams, metrics: str | Path = METRICS_PATH, grid: str | Path = GRID_PATH
) -> dict[str, Any]:
    """Read the studies table, write shards, rejected records, summary and grid.

    Raises:
        UserError: the studies table is missing or malformed.
    """
    studies, data_root = _read_studies(params)
    result = preprocess_studies(studies, data_root, params.out, params)
    write_rejected(result.rejected, params.rejected)
    write_metrics(metrics, result.summary)
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


def _read_studies(params: PreprocessParams) -> tuple[pd.DataFrame, ImageRoots]:
    """The studies table and where each source's image paths are relative to."""
    path = Path(params.studies)
    if not path.is_file():
        raise UserError(f"{path}: studies table not found; run the pair stage first")
    studies = pd.read_parquet(path)
    return studies, ImageRoots.from_attrs(studies.attrs, params.data_root)


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
    write_metrics(metrics, result.summary)
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
