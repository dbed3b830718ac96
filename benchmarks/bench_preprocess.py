"""Benchmark preprocess decoding: the stage on all cores vs a naive one-process loop, same run.

Writes ``--n`` synthetic DICOM files (``--src`` px square, 12 bits stored in 16, a window, fake
PHI, half MONOCHROME1) to a temporary folder, then times, alternating, ``--repeat`` times:

- **naive**: one process, per image ``pydicom.dcmread`` -> ``pixel_array`` ->
  ``apply_modality_lut`` -> ``apply_voi_lut`` -> min/max to uint8 -> PIL resize to ``--size``
  (decode only: nothing is written, no padding, no inversion);
- **stage, 1 worker**: :func:`pipelines.preprocess.preprocess_studies` in-process (decode +
  to_square + shard writing), to show the per-image cost of the real path;
- **stage, all cores**: the same with ``workers=0`` (a forked pool; start-up included).

It prints images/s of each and the ratio all-cores / naive (target >= 1.8 on 2 cores), with the
CPU seconds per image summed over processes (flat CPU/image with a low ratio means other load).

Memory (``--rss-studies``, default 10,000; 0 skips): runs the stage in a fresh process on that
many small studies (frontal + lateral, ``--rss-src`` px) and on a tenth of them, and prints each
run's peak RSS (the stage process, and the largest worker). Bounded memory shows as a peak that
does not grow with the number of studies: the stage holds one shard buffer per split plus at most
``2 * workers + 2`` chunks in flight, never the whole dataset.

Usage:
    python benchmarks/bench_preprocess.py [--n 1200] [--src 512] [--size 128] [--repeat 3]
                                          [--rss-studies 10000] [--rss-src 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.imaging import cpu_count
from pipelines.labels import FINDINGS
from pipelines.preprocess import PreprocessParams, preprocess_studies

CR = "1.2.840.10008.5.1.4.1.1.1"


def chest(size: int, seed: int) -> np.ndarray:
    """A smooth chest-like 12-bit image (content does not matter for speed, size does)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.6 - 0.3 * (((x - 0.3) / 0.12) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1)
    img = img - 0.3 * (((x - 0.7) / 0.12) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1) + 0.2 * y
    img = img + 0.02 * rng.standard_normal((size, size))
    return np.clip(img * 4095, 0, 4095).astype(np.uint16)


def write_dicom(path: Path, pixels: np.ndarray, monochrome1: bool) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR
    ds.SOPClassUID, ds.Modality = CR, "CR"
    ds.PatientName, ds.PatientID = "Bench^Patient", "BENCH-1"
    ds.set_pixel_data(4095 - pixels if monochrome1 else pixels,
                      "MONOCHROME1" if monochrome1 else "MONOCHROME2", 12)  # fmt: skip
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.WindowCenter, ds.WindowWidth = 2048, 3500
    ds.save_as(path, enforce_file_format=True)


def studies_table(files: list[str], n_studies: int, root: Path) -> pd.DataFrame:
    rows = []
    for i in range(n_studies):
        rows.append(
            {
                "study_key": f"{i:08d}",
                "patient_key": f"p{i:08d}",
                "source": "dicom",
                "frontal_path": files[(2 * i) % len(files)],
                "frontal_view": "PA",
                "lateral_path": files[(2 * i + 1) % len(files)],
                "split": ("train", "train", "train", "val", "test")[i % 5],
            }
            | {f: float(i % 2) for f in FINDINGS}
        )
    df = pd.DataFrame(rows)
    df.attrs["data_root"] = str(root)
    return df


def naive(paths: list[Path], size: int) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-6)
        Image.fromarray((arr * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)


def cpu_seconds() -> float:
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float]:
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu_seconds() - c0


RSS_CHILD = """
import json, sys, threading, time
import pandas as pd, psutil
from pipelines.preprocess import PreprocessParams, preprocess_studies

me, done = psutil.Process(), threading.Event()
peak = {"self": 0, "workers_rss": 0, "workers_uss": 0, "total": 0}

def sample():  # every 50 ms: RSS of this process, RSS and USS (unique pages) of its workers
    while not done.is_set():
        try:
            kids = [k.memory_full_info() for k in me.children(recursive=True)]
            own = me.memory_full_info()
        except psutil.Error:
            continue
        peak["self"] = max(peak["self"], own.rss)
        peak["workers_rss"] = max(peak["workers_rss"], max((k.rss for k in kids), default=0))
        peak["workers_uss"] = max(peak["workers_uss"], max((k.uss for k in kids), default=0))
        peak["total"] = max(peak["total"], own.uss + sum(k.uss for k in kids))
        time.sleep(0.05)

threading.Thread(target=sample, daemon=True).start()
base = me.memory_info().rss
studies = pd.read_parquet(sys.argv[1])
p = PreprocessParams(size=int(sys.argv[3]), workers=0, shard_size=512)
s = preprocess_studies(studies, sys.argv[4], sys.argv[2], p).summary
done.set()
print(json.dumps({k + "_mb": v / 2**20 for k, v in peak.items()} | {"base_mb": base / 2**20,
      "studies": sum(s["studies_out"].values()), "seconds": s["seconds"]}))
"""


def rss_run(tmp: Path, files: list[str], n: int, size: int) -> dict:
    table = tmp / f"studies_{n}.parquet"
    studies_table(files, n, tmp / "rss").to_parquet(table)
    out = tmp / f"prep_{n}"
    proc = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(table), str(out), str(size), str(tmp / "rss")],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1200, help="DICOM files (amortises pool start-up)")
    ap.add_argument("--src", type=int, default=512, help="source image side (px)")
    ap.add_argument("--size", type=int, default=128, help="prepared side (px)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss-studies", type=int, default=10_000)
    ap.add_argument("--rss-src", type=int, default=64)
    args = ap.parse_args()
    cores = cpu_count()
    print(f"cores={cores} n={args.n} src={args.src}px -> {args.size}px")

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "raw").mkdir()
        names = []
        for i in range(args.n):
            write_dicom(tmp / "raw" / f"{i:05d}.dcm", chest(args.src, i), monochrome1=i % 2 == 1)
            names.append(f"{i:05d}.dcm")
        paths = [tmp / "raw" / n for n in names]
        studies = studies_table(names, args.n // 2, tmp / "raw")
        n_img = 2 * (args.n // 2)

        runs: dict[str, list[tuple[float, float]]] = {"naive": [], "stage_1": [], "stage_all": []}
        for _ in range(args.repeat):
            runs["naive"].append(timed(lambda: naive(paths[:n_img], args.size)))
            p1 = PreprocessParams(size=args.size, workers=1)
            runs["stage_1"].append(
                timed(lambda p=p1: preprocess_studies(studies, tmp / "raw", tmp / "o1", p))
            )
            pa = PreprocessParams(size=args.size, workers=0)
            runs["stage_all"].append(
                timed(lambda p=pa: preprocess_studies(studies, tmp / "raw", tmp / "oa", p))
            )
        med = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
        for k, v in runs.items():
            cpu = statistics.median(c for _, c in v) / n_img * 1000
            print(f"{k:10s} {n_img / med[k]:8.1f} images/s   ({cpu:.1f} ms CPU/image)")
        ratio = med["naive"] / med["stage_all"]
        print(f"ratio stage(all {cores} cores) / naive one-process: {ratio:.2f}x")
        cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
        print(
            f"CPU-bound bound on an idle machine: {cores} x naive CPU / stage CPU = "
            f"{cores * cpu['naive'] / cpu['stage_all']:.2f}x (load average now "
            f"{os.getloadavg()[0]:.1f} on {cores} cores)"
        )

        if args.rss_studies:
            (tmp / "rss").mkdir()
            files = []
            for i in range(64):
                write_dicom(tmp / "rss" / f"{i:03d}.dcm", chest(args.rss_src, i), i % 2 == 1)
                files.append(f"{i:03d}.dcm")
            for n in (max(1, args.rss_studies // 10), args.rss_studies):
                r = rss_run(tmp, files, n, args.size)
                print(
                    f"memory: {r['studies']:6d} studies ({2 * r['studies']} images, "
                    f"{args.rss_src}px -> {args.size}px) in {r['seconds']:.1f}s: peak RSS of the "
                    f"stage process {r['self_mb']:.0f} MB ({r['base_mb']:.0f} MB after imports); "
                    f"largest worker RSS {r['workers_rss_mb']:.0f} MB (forked: shares the "
                    f"parent's pages), unique {r['workers_uss_mb']:.0f} MB; unique memory of all "
                    f"processes {r['total_mb']:.0f} MB"
                )
            print(os.linesep.join(["(a stage that held every study would need at least "
                                   f"{args.rss_studies * 2 * args.size**2 / 2**20:.0f} MB of "
                                   "prepared pixels alone)"]))  # fmt: skip


if __name__ == "__main__":
    main()
