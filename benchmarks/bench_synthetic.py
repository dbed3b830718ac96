"""Benchmark the synthesize stage: studies/s and seconds for 1,000 studies.

Runs :func:`pipelines.synthetic.synthesize` twice in the same process, into a temporary folder:
a baseline with one worker on a few studies, then the full run with the chosen workers, and
prints both rates and their ratio (the parallel speed-up). Timings depend on the machine's load:
rerun on a quiet machine before quoting them.

Usage:
    python benchmarks/bench_synthetic.py [--studies 1000] [--size 256] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pipelines.synthetic import SynthesizeParams, synthesize


def run(studies: int, size: int, workers: int, out: Path) -> tuple[float, dict]:
    """Synthesize ``studies`` into ``out``; return (seconds, summary)."""
    params = SynthesizeParams(out=out, studies=studies, size=size, workers=workers, seed=7)
    start = time.perf_counter()
    summary = synthesize(params)
    return time.perf_counter() - start, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="0 = all cores")
    parser.add_argument("--baseline-studies", type=int, default=100)
    args = parser.parse_args()
    workers = args.workers or os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="bench_synthetic_") as tmp:
        base_s, _ = run(args.baseline_studies, args.size, 1, Path(tmp) / "baseline")
        full_s, summary = run(args.studies, args.size, workers, Path(tmp) / "full")
        size_mb = sum(p.stat().st_size for p in (Path(tmp) / "full").rglob("*")) / 2**20

    base_rate = args.baseline_studies / base_s
    rate = args.studies / full_s
    print(f"size {args.size} px, {summary['images']} images, {size_mb:.0f} MiB on disk")
    print(f"baseline  1 worker : {base_rate:7.1f} studies/s ({args.baseline_studies} studies)")
    print(f"full     {workers:2d} workers: {rate:7.1f} studies/s ({args.studies} studies)")
    print(f"speed-up vs baseline: {rate / base_rate:.2f}x")
    print(f"seconds for 1,000 studies: {1000 / rate:.1f}")


if __name__ == "__main__":
    main()
