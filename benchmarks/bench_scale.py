"""Scale: ingest -> pair -> preprocess -> one training epoch -> evaluate at N studies.

For each N (default 20,000, 50,000 and 200,000 studies) this writes a generic image-list CSV
(the ``csv`` reader) of N studies of small PNGs, then runs each stage as the pipeline does
(``python -m pipelines.<stage>`` in its own process, reading a ``params.yaml`` in a work folder)
and records, per stage: wall seconds, the peak RSS of its largest process (``wait4``'s
``ru_maxrss``: the stage or, if larger, one of its workers) and the peak of the PSS summed over
its process tree (sampled every 0.2 s: the preprocess workers included, shared pages counted
once). At the end it prints each stage's growth between the sizes: the ratio of peak RSS and of
seconds per study against the smallest N of the same run.

The pixels are a pool of pre-encoded PNGs (``--pool`` of them per view, smooth noise), written
once per file: generating 200k studies takes seconds, not the hours the synthetic renderer would.
The labels are random (prevalence 0.2, 5 % blank), so the model learns nothing: the run measures
memory and time, not accuracy. A share of studies (``--lateral-missing``) has no lateral view,
as on MIMIC-CXR and CheXpert, which also gives the disk of the prepared shards with laterals
stored only where present against the former layout (N x 2 x S^2).

The model costs the same per study whatever N is (``bench_train.py``, ``bench_export.py``
measure it); on 2 CPU cores DenseNet-121 trains at ~40 pairs/s at 64 px, so one epoch over 140k
studies takes about an hour and scoring 60k val + test studies twice as long again. ``--model
tiny`` puts a small two-branch CNN in its place (the stages' own code, data and loaders
unchanged) so that a full epoch and the full evaluation run at 200k; ``--train-steps K`` caps the
epoch at K batches instead (the dataset, the sampler over every study and the validation pass
are still the stage's). Usage::

    nice -n 10 .venv/bin/python benchmarks/bench_scale.py --model tiny   # 20k, 50k, 200k
    .venv/bin/python benchmarks/bench_scale.py --studies 1000 2000 --train-steps 3  # DenseNet
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.labels import FINDINGS  # noqa: E402

STAGES = ("ingest", "pair", "preprocess", "train", "evaluate")

# runs `python -m pipelines.<argv[1]>` in this process, with the training epoch capped at argv[3]
# batches (0: the full epoch) and, with argv[2] == "tiny", a small two-branch CNN in place of
# DenseNet-121 (pipelines.model.build_model, which train builds and evaluate loads)
DRIVER = """
import itertools, runpy, sys
stage, model, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
if model == "tiny" and stage in ("train", "evaluate"):
    import torch
    from torch import nn
    import pipelines.model, pipelines.train.build

    class Tiny(nn.Module):
        def __init__(self, n):
            super().__init__()
            def trunk():
                return nn.Sequential(
                    nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                    nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
            self.frontal_encoder, self.lateral_encoder = trunk(), trunk()
            self.head = nn.Linear(65, n)

        def forward(self, frontal, lateral, has_lateral):
            m = has_lateral.to(torch.bool).to(frontal.dtype).unsqueeze(1)
            f, lat = self.frontal_encoder(frontal), self.lateral_encoder(lateral)
            return self.head(torch.cat([f, lat * m, m], dim=1))

    def build(params, num_findings=14):
        return Tiny(num_findings)

    pipelines.model.build_model = pipelines.train.build.build_model = build
if stage == "train" and steps > 0:
    from pipelines.train import trainer
    full = trainer.Trainer.train_epoch
    def capped(self, loader, desc="", progress=False):
        return full(self, itertools.islice(loader, steps), desc, progress)
    trainer.Trainer.train_epoch = capped
sys.argv = [stage]
runpy.run_module(f"pipelines.{stage}", run_name="__main__", alter_sys=True)
"""


def png_pool(n: int, size: int, seed: int) -> list[bytes]:
    """``n`` distinct 8-bit grey PNGs: smooth noise on a vertical gradient."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.normal(size=(size // 8, size // 8))
        smooth = np.kron(coarse, np.ones((8, 8)))
        ramp = np.linspace(-1, 1, size)[:, None]
        img = np.clip(128 + 40 * smooth + 30 * ramp + rng.normal(0, 6, (size, size)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def generate(raw: Path, n: int, size: int, missing: float, pool: int, seed: int = 0) -> dict:
    """Write ``raw/list.csv`` and its PNGs: N studies, ~2 per patient, a lateral for 1 - missing."""
    rng = np.random.default_rng(seed)
    frontals, laterals = png_pool(pool, size, seed), png_pool(pool, size, seed + 1)
    has_lateral = rng.random(n) >= missing
    patient = rng.integers(0, max(1, n // 2), n)
    labels = np.where(rng.random((n, len(FINDINGS))) < 0.2, "1", "0").astype(object)
    labels[rng.random(labels.shape) < 0.05] = ""
    rows: list[tuple] = []
    for i in range(n):
        folder = raw / "images" / f"{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        base = f"images/{i // 1000:04d}/s{i:07d}"
        (raw / f"{base}_f.png").write_bytes(frontals[i % pool])
        rows.append((f"{base}_f.png", f"p{patient[i]}", f"s{i}", "PA" if i % 2 else "AP", i))
        if has_lateral[i]:
            (raw / f"{base}_l.png").write_bytes(laterals[(i * 7) % pool])
            rows.append((f"{base}_l.png", f"p{patient[i]}", f"s{i}", "LATERAL", i))
    table = pd.DataFrame(rows, columns=["path", "patient", "study", "view", "_i"])
    table[list(FINDINGS)] = labels[table.pop("_i").to_numpy()]
    table.to_csv(raw / "list.csv", index=False)
    return {"images": len(table), "with_lateral": int(has_lateral.sum())}


def params_yaml(work: Path, args: argparse.Namespace) -> None:
    """The work folder's params.yaml: the pipeline's defaults with the scale run's choices."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"] |= {
        "inputs": [{"name": "scale", "source": "csv", "input": "raw/list.csv"}],
        "salt": "secret",
        "workers": 0,
    }
    params["preprocess"] |= {"image_size": args.prepared_px, "workers": args.workers}
    params["train"] |= {
        "augmented": None,
        "image_size": max(64, args.prepared_px),
        "epochs": 1,
        "batch_size": args.batch,
        "progress": False,
        "patience": 0,
        "threads": 1,
        "precision": "fp32" if args.model == "tiny" else "auto",
    }
    params["evaluate"] |= {"saliency": args.saliency, "batch_size": 4 * args.batch}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def anon_bytes(pid: int) -> int:
    """A process's anonymous resident memory (``RssAnon``): its heap, not mapped files."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class TreeSampler(threading.Thread):
    """Peaks of the PSS and of the anonymous RSS summed over a process and its descendants,
    sampled every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every, self.done = pid, every, threading.Event()
        self.peak = self.peak_anon = 0

    def run(self) -> None:
        while not self.done.is_set():
            try:
                top = psutil.Process(self.pid)
                procs = [top, *top.children(recursive=True)]
            except psutil.Error:
                return
            total = anon = 0
            for p in procs:
                try:
                    total += p.memory_full_info().pss
                    anon += anon_bytes(p.pid)
                except (psutil.Error, OSError):
                    continue
            self.peak, self.peak_anon = max(self.peak, total), max(self.peak_anon, anon)
            self.done.wait(self.every)


def run_stage(stage: str, work: Path, args: argparse.Namespace) -> dict:
    """Run one stage in its own process; seconds, peak RSS (largest process) and tree PSS."""
    cmd = [sys.executable, "-c", DRIVER, stage, args.model, str(args.train_steps)]
    # one torch thread: on 2 cores shared with other work, OpenMP's 2-thread barriers stalled
    # the tiny model's steps 20x (21.9 vs 437 pairs/s measured here)
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "CXR_SALT": "bench-scale salt",
        "OMP_NUM_THREADS": "1",
    }
    log = open(work / f"{stage}.log", "wb")  # noqa: SIM115
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    log.close()
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (work / f"{stage}.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"{stage} failed at {work}:\n{tail}")
    return {
        "seconds": seconds,
        "rss_mib": usage.ru_maxrss / 1024,
        "tree_pss_mib": sampler.peak / 2**20,
        "tree_anon_mib": sampler.peak_anon / 2**20,
    }


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern))


def disk(work: Path, size: int) -> dict:
    """Bytes of the prepared images, and what format 1 (N x 2 x S^2) would have taken."""
    index = json.loads((work / "data/prepared/index.json").read_text())
    entries = [e for v in index["splits"].values() for e in v]
    header = 128  # an .npy header
    old = sum(header + e["n"] * 2 * size * size for e in entries)
    new = folder_bytes(work / "data/prepared", "*.images.npy")
    studies = sum(e["n"] for e in entries)
    laterals = sum(e["laterals"] for e in entries)
    return {"studies": studies, "laterals": laterals, "bytes": new, "format1_bytes": old}


def train_rate(work: Path) -> float | None:
    """Training pairs per second of the (capped) epoch, from the train stage's metrics."""
    try:
        return json.loads((work / "metrics/train.json").read_text()).get("pairs_per_s")
    except (OSError, ValueError):
        return None


def one_size(n: int, args: argparse.Namespace) -> dict:
    work = Path(args.work) / f"n{n}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "raw").mkdir(parents=True)
    start = time.perf_counter()
    made = generate(work / "raw", n, args.source_px, args.lateral_missing, args.pool)
    print(
        f"N={n}: generated {made['images']} PNGs in {time.perf_counter() - start:.1f} s", flush=True
    )
    params_yaml(work, args)
    result: dict = {"n": n, "images": made["images"], "stages": {}}
    for stage in args.stages:
        r = run_stage(stage, work, args)
        result["stages"][stage] = r
        print(
            f"N={n} {stage:<10} {r['seconds']:8.1f} s  peak RSS {r['rss_mib']:6.0f} MiB  "
            f"tree PSS {r['tree_pss_mib']:6.0f} MiB  anon {r['tree_anon_mib']:6.0f} MiB",
            flush=True,
        )
    if "preprocess" in args.stages:
        result["disk"] = disk(work, args.prepared_px)
    if "train" in args.stages:
        result["pairs_per_s"] = train_rate(work)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def report(results: list[dict]) -> None:
    """The table and the growth ratios against the smallest N."""
    base = results[0]
    print("\nseconds, peak MiB: RSS of the largest process / tree PSS / tree anonymous RSS")
    print("stage       " + "".join(f"{'N=' + str(r['n']):>30}" for r in results))
    for stage in base["stages"]:
        cells = []
        for r in results:
            s = r["stages"][stage]
            mib = f"{s['rss_mib']:.0f}/{s['tree_pss_mib']:.0f}/{s['tree_anon_mib']:.0f}"
            cells.append(f"{s['seconds']:8.1f} s {mib:>15} MiB")
        print(f"{stage:<12}" + "".join(f"{c:>30}" for c in cells))
    print("\ngrowth against N={} (x N, x peak RSS, x seconds per study):".format(base["n"]))
    for r in results[1:]:
        scale = r["n"] / base["n"]
        for stage in base["stages"]:
            a, b = base["stages"][stage], r["stages"][stage]
            per = (b["seconds"] / r["n"]) / (a["seconds"] / base["n"])
            rss = b["rss_mib"] / a["rss_mib"]
            anon = b["tree_anon_mib"] / max(a["tree_anon_mib"], 1)
            print(
                f"  N={r['n']:>7} {stage:<10} x{scale:5.1f} N: RSS x{rss:.2f} "
                f"(anonymous x{anon:.2f}), seconds/study x{per:.2f}"
            )
    for r in results:
        d = r.get("disk")
        if d:
            saved = 1 - d["bytes"] / d["format1_bytes"]
            print(
                f"N={r['n']}: prepared images {d['bytes'] / 2**20:.1f} MiB for {d['studies']} "
                f"studies ({d['laterals']} laterals); format 1 would be "
                f"{d['format1_bytes'] / 2**20:.1f} MiB: {100 * saved:.1f} % saved"
            )
        if r.get("pairs_per_s"):
            print(f"N={r['n']}: training {r['pairs_per_s']:.1f} pairs/s (the capped epoch)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, nargs="+", default=[20_000, 50_000, 200_000])
    ap.add_argument("--source-px", type=int, default=64, help="side of the source PNGs")
    ap.add_argument("--prepared-px", type=int, default=64, help="preprocess.image_size")
    ap.add_argument("--lateral-missing", type=float, default=0.5, help="studies without one")
    ap.add_argument("--pool", type=int, default=64, help="distinct PNGs per view")
    ap.add_argument("--train-steps", type=int, default=0, help="batches; 0 = a full epoch")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--model", choices=("densenet", "tiny"), default="densenet", help="tiny: a small CNN"
    )
    ap.add_argument("--workers", type=int, default=2, help="preprocess workers")
    ap.add_argument("--saliency", action="store_true", help="evaluate's Grad-CAM galleries")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep each size's work folder")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    args.work = args.work or tempfile.mkdtemp(prefix="cxr-scale-")
    results = [one_size(n, args) for n in sorted(args.studies)]
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
