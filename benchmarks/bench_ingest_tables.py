"""Time the table readers at full CheXpert scale (223,414 rows) with ``verify_files=False``.

Builds a CheXpert-shaped ``train.csv`` in a temporary folder by replicating the real sample rows
(``../shared/real-cxr/metadata_samples/chexpert_train_sample50.csv``, or a small built-in block
when it is absent) under new patient numbers, then times :func:`pipelines.sources.chexpert.read`
and, when the lead's :func:`pipelines.pair.pair_studies` exists, the pair step on the result.

    .venv/bin/python benchmarks/bench_ingest_tables.py [--rows 223414] [--repeats 3]

Prints rows/s (median wall time over repeats) and the CPU seconds of this process: on a shared
machine the wall time is inflated, the CPU time much less so.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.sources import ReadOptions
from pipelines.sources.chexpert import read

SAMPLE = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "real-cxr"
    / "metadata_samples"
    / "chexpert_train_sample50.csv"
)
CHEXPERT_ROWS = 223_414
_FALLBACK = """Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices
CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0
CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,-1.0,,,,,,1.0,
"""  # noqa: E501


def build_train_csv(folder: Path, n_rows: int = CHEXPERT_ROWS) -> Path:
    """Write ``folder/CheXpert-v1.0-small/train.csv`` with ``n_rows`` replicated sample rows.

    Block ``b`` of the replication renumbers patient ``N`` as ``b * span + N`` (``span`` = the
    largest sample patient number), so every block has new patients and studies.
    """
    if SAMPLE.is_file():
        sample = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    else:
        from io import StringIO

        sample = pd.read_csv(StringIO(_FALLBACK), dtype=str, keep_default_na=False)
    parts = sample["Path"].str.extract(r"^(.*?/)patient(\d+)(/.*)$")
    number = parts[1].astype(np.int64).to_numpy()
    span = int(number.max())
    reps = -(-n_rows // len(sample))
    block = np.repeat(np.arange(reps, dtype=np.int64), len(sample))[:n_rows]
    idx = np.tile(np.arange(len(sample)), reps)[:n_rows]
    big = sample.iloc[idx].reset_index(drop=True)
    new_number = pd.Series(block * span + number[idx]).astype(str).str.zfill(5)
    big["Path"] = parts[0].to_numpy()[idx] + "patient" + new_number + parts[2].to_numpy()[idx]
    out = folder / "CheXpert-v1.0-small" / "train.csv"
    out.parent.mkdir(parents=True)
    big.to_csv(out, index=False)
    return out


def _median_time(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall and CPU (this process) seconds of ``fn()`` over ``repeats``, last result."""
    wall, cpu, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), result


def main() -> None:
    """Build the table, time the reader (and pair if present), print rows/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=CHEXPERT_ROWS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    options = ReadOptions(verify_files=False, salt=b"benchmark-salt")
    with tempfile.TemporaryDirectory() as tmp:
        table = build_train_csv(Path(tmp), args.rows)
        size_mb = table.stat().st_size / 1e6
        seconds, cpu, result = _median_time(lambda: read(table, options), args.repeats)
        manifest = result.manifest
        print(
            f"chexpert read: {args.rows} rows ({size_mb:.1f} MB CSV), verify_files=False: "
            f"{seconds:.2f} s wall ({cpu:.2f} s CPU) median of {args.repeats} = "
            f"{args.rows / seconds:,.0f} rows/s; "
            f"{len(manifest)} accepted, {len(result.rejected)} rejected, "
            f"{manifest['patient_key'].nunique()} patients, "
            f"{manifest['study_key'].nunique()} studies"
        )
    _bench_pair(manifest, args.repeats)


def _bench_pair(manifest: pd.DataFrame, repeats: int) -> None:
    try:
        pair = importlib.import_module("pipelines.pair")
    except ImportError as exc:
        print(f"pair: skipped (pipelines.pair not importable: {exc})")
        return
    pair_studies = getattr(pair, "pair_studies", None)
    if pair_studies is None:
        print("pair: skipped (pipelines.pair has no pair_studies)")
        return
    try:
        params = pair.PairParams()
        seconds, cpu, out = _median_time(lambda: pair_studies(manifest, params, 0), repeats)
    except Exception as exc:  # the lead's module may still change shape
        print(f"pair: skipped ({type(exc).__name__}: {exc})")
        return
    studies = out[0] if isinstance(out, tuple) else out
    print(
        f"pair_studies: {len(manifest)} images -> {len(studies)} studies: {seconds:.2f} s wall "
        f"({cpu:.2f} s CPU) median of {repeats} = {len(manifest) / seconds:,.0f} images/s"
    )


if __name__ == "__main__":
    main()
