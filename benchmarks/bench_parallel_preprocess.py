"""Benchmark sharded preprocessing: one process vs parts run as concurrent processes, same run.

Makes ``--studies`` synthetic studies (``--src`` px, :mod:`pipelines.synthetic`), ingests and
pairs them (:mod:`pipelines.ingest`, :mod:`pipelines.pair`), then times, alternating,
``--repeat`` times, the preprocess stage at ``--size`` px on the same studies table:

- **one process**: :func:`pipelines.preprocess.preprocess_studies` with ``workers=1``, in this
  process (decoding and shard writing only: no interpreter start-up);
- **sharded**: ``--parts`` processes, each ``pipelines.preprocess.main(["--part", I, "--parts",
  N, "--workers", "1"])`` (what ``python -m pipelines.preprocess --part I ...`` runs), started at
  once; each imports everything (decoders too) and waits, then all are released together; then
  the merge (:func:`pipelines.preprocess.merge_parts`, in this process). Reported twice:
  decoding (release to the last part's ``part.json``, written when its shards are done) and end
  to end (from starting the processes to the merged index: adds each interpreter's start-up and
  imports, ~3-5 s here, its exit, ~1.5 s with torch loaded, and the merge).

It prints images/s of each, the ratios sharded / one process, images/s per core (busy cores:
1, and ``--parts``), CPU ms per image, the load average before and after, and checks that the
merged output serves the same studies and pixels as the one-process output. The machine may be
shared: a low ratio with flat CPU per image means other load, not a slower method.

Usage:
    python benchmarks/bench_parallel_preprocess.py [--studies 400] [--src 256] [--size 224]
                                                   [--parts 2] [--repeat 2]
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

import pandas as pd
import yaml

from pipelines.data import ShardDataset
from pipelines.imaging import cpu_count
from pipelines.ingest import IngestParams, run_ingest
from pipelines.pair import PairParams, run_pair
from pipelines.preprocess import (
    PART_FILE,
    PARTS_DIR,
    PreprocessParams,
    merge_parts,
    part_name,
    preprocess_studies,
)
from pipelines.schema import SPLITS
from pipelines.synthetic import SynthesizeParams, synthesize

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def make_studies(tmp: Path, studies: int, src: int) -> Path:
    """Synthesize, ingest and pair; return the studies table's path."""
    t0 = time.perf_counter()
    synthesize(SynthesizeParams(out=tmp / "raw", studies=studies, size=src, workers=0))
    run_ingest(
        IngestParams(
            input=str(tmp / "raw"), labels=str(tmp / "raw" / "labels.csv"), out=str(tmp / "man")
        )
    )
    run_pair(PairParams(manifest=str(tmp / "man" / "manifest.parquet"), out=str(tmp / "st")), 7)
    print(f"data: {studies} studies at {src} px made in {time.perf_counter() - t0:.1f} s")
    return tmp / "st" / "studies.parquet"


def one_process(studies: pd.DataFrame, out: Path, size: int) -> tuple[float, float, int]:
    """(wall s, CPU s, images) of the stage in this process with one worker."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    s = preprocess_studies(
        studies, studies.attrs["data_root"], out, PreprocessParams(size=size, workers=1)
    ).summary
    return time.perf_counter() - t0, cpu_seconds() - c0, s["images_decoded"] + s["images_rejected"]


# a part that imports everything (the decoders too), says so and waits for "go" on stdin: the
# parts then decode at the same moment, and start-up is timed apart from decoding
PART = """
import sys
from pipelines.preprocess import main
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder  # decode imports these
from pydicom.pixels.processing import apply_windowing
print("ready", flush=True)
sys.stdin.readline()
main(sys.argv[1:])
"""


def sharded(work: Path, studies: pd.DataFrame, size: int, parts: int) -> dict[str, float]:
    """Start every part as its own process, release them together, wait, merge; seconds."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    c0, t0 = cpu_seconds(), time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PART, "--part", str(i), "--parts", str(parts), "--workers", "1"],
            cwd=work,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i in range(parts)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    t_go, go_clock = time.perf_counter(), time.time()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.close()
    if any(p.wait() for p in procs):
        raise SystemExit("a part failed: rerun with its stderr shown")
    t_parts = time.perf_counter()
    merged = merge_parts(studies, work / "prepared", PreprocessParams(size=size), parts).summary
    t1 = time.perf_counter()
    finished = [
        json.loads((work / "prepared" / PARTS_DIR / part_name(i, parts) / PART_FILE).read_text())[
            "finished"
        ]
        for i in range(parts)
    ]
    return {
        "wall": t1 - t0,
        "startup": t_go - t0,
        "decode": max(finished) - go_clock,
        "exit": t_parts - t_go - (max(finished) - go_clock),
        "merge": t1 - t_parts,
        "cpu": cpu_seconds() - c0,
        "images": merged["images_decoded"] + merged["images_rejected"],
    }


def same(a: Path, b: Path) -> bool:
    for split in SPLITS:
        da, db = ShardDataset(a, split), ShardDataset(b, split)
        if list(da.meta["study_key"]) != list(db.meta["study_key"]):
            return False
        ba, bb = da.get_batch(range(len(da))), db.get_batch(range(len(db)))
        if any(not (ba[k] == bb[k]).all() for k in ("frontal", "lateral", "has_lateral")):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=400)
    ap.add_argument("--src", type=int, default=256, help="synthetic image side (px)")
    ap.add_argument("--size", type=int, default=224, help="prepared side (px)")
    ap.add_argument("--parts", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("CXR_SALT", "bench-salt-not-secret")  # keys only; nothing is kept
    load0 = os.getloadavg()
    print(f"cores={cpu_count()} load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")

    with tempfile.TemporaryDirectory(prefix="bench_parallel_") as d:
        tmp = Path(d)
        table = make_studies(tmp, args.studies, args.src)
        studies = pd.read_parquet(table)
        work = tmp / "work"
        work.mkdir()
        section = {"studies": str(table), "image_size": args.size, "out": "prepared"}
        (work / "params.yaml").write_text(yaml.safe_dump({"preprocess": section}))

        single: list[tuple[float, float, int]] = []
        shard: list[dict[str, float]] = []
        for _ in range(args.repeat):
            single.append(one_process(studies, tmp / "single", args.size))
            shard.append(sharded(work, studies, args.size, args.parts))
        images = single[0][2]
        assert all(s["images"] == images for s in shard)
        equal = same(tmp / "single", work / "prepared")

    t1 = statistics.median(w for w, _, _ in single)
    tw = statistics.median(s["wall"] for s in shard)
    td = statistics.median(s["decode"] for s in shard)
    merge = statistics.median(s["merge"] for s in shard)
    startup = statistics.median(s["startup"] for s in shard)
    exit_s = statistics.median(s["exit"] for s in shard)
    print(f"{images} images ({args.src} px -> {args.size} px), median of {args.repeat} runs")
    cpu1 = statistics.median(c for _, c, _ in single) / images * 1000
    cpus = statistics.median(s["cpu"] for s in shard) / images * 1000
    print(f"one process (workers=1)     {images / t1:7.1f} images/s   {cpu1:5.1f} ms CPU/image")
    print(
        f"{args.parts} parts, end to end       {images / tw:7.1f} images/s   {cpus:5.1f} ms "
        f"CPU/image (start-up + imports {startup:.1f} s, exit {exit_s:.1f} s, merge {merge:.2f} s)"
    )
    print(f"{args.parts} parts, decoding          {images / td:7.1f} images/s (released together)")
    ratio = f"{t1 / tw:.2f}x end to end, {t1 / td:.2f}x decoding"
    print(f"ratio {args.parts} parts / one process: {ratio}")
    print(
        f"images/s per core: {images / t1:.1f} (one process), "
        f"{images / td / args.parts:.1f} ({args.parts} parts, decoding)"
    )
    load1 = os.getloadavg()
    print(f"load average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(f"merged output == one-process output: {equal}")


if __name__ == "__main__":
    main()
