"""Benchmark the DICOM folder reader: one process vs all cores, measured in the same run.

Writes N small DICOM files (default 2,000 of 256x256, 16-bit, explicit VR little endian, PA and
lateral views) to a temporary folder, then times :func:`pipelines.sources.dicom.read` with
``workers=1`` and ``workers=0`` (all cores), alternating, and prints files/s for each and the
ratio of the medians, plus the CPU time per file summed over all processes (a speed-up well
under the core count with flat CPU/file means other load, not pool overhead). The files sit in
the page cache after writing, so this measures header parsing and checks, not the disk.

Usage:
    python benchmarks/bench_ingest_dicom.py [--n 2000] [--size 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipelines.sources import ReadOptions
from pipelines.sources.dicom import read

DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


def write_files(root: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` single-frame chest DX files, two views per study, in per-patient folders."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
    for i in range(n):
        study = i // 2
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = DX_CLASS
        ds.SOPClassUID = DX_CLASS
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality, ds.BodyPartExamined = "DX", "CHEST"
        ds.PatientID = f"BENCH{study // 2:05d}"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{study + 1}"
        ds.SeriesInstanceUID = generate_uid()
        ds.ViewPosition = "PA" if i % 2 == 0 else "LL"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        path = root / f"p{study // 2:05d}" / f"s{study:05d}" / f"{i:06d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def time_read(root: Path, workers: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds over all processes, rows) of one ``read``."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    result = read(root, ReadOptions(workers=workers, salt=b"bench"))
    elapsed = time.perf_counter() - start
    assert not result.rejected, result.rejected[:3]
    return elapsed, _cpu_seconds() - cpu, len(result.manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="files to write")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per setting")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="bench_dicom_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_files(root, args.n, args.size)
        print(
            f"wrote {args.n} files of {args.size}x{args.size} 16-bit in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        time_read(root, 1)  # warm-up: imports, page cache
        wall: dict[int, list[float]] = {1: [], 0: []}
        cpu: dict[int, list[float]] = {1: [], 0: []}
        for _ in range(args.repeat):
            for workers in (1, 0):
                elapsed, cpu_s, n = time_read(root, workers)
                assert n == args.n
                wall[workers].append(elapsed)
                cpu[workers].append(cpu_s)
    one, allc = statistics.median(wall[1]), statistics.median(wall[0])
    for label, w, t in (("workers=1", 1, one), (f"workers=0 ({cores} cores)", 0, allc)):
        print(
            f"{label:<20}: {args.n / t:8.0f} files/s (median of {args.repeat}: {t:.2f} s; "
            f"CPU {1000 * statistics.median(cpu[w]) / args.n:.2f} ms/file)"
        )
    print(f"speed-up all cores / one process: {one / allc:.2f}x")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} (on {cores} cores)")


if __name__ == "__main__":
    main()
