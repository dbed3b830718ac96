"""Training throughput on CPU, each figure against a baseline measured in the same run.

1. loop: the train stage's epoch loop (shards on disk -> make_loader -> normalise -> autocast
   step with focal loss, grad clipping, AdamW, LR schedule, progress bookkeeping) in pairs/s,
   against a bare two-branch DenseNet-121 step on random tensors already in memory (forward,
   BCE, backward, AdamW) at the same size, batch and precision. Target: ratio >= 0.90.
2. precision: bare-step pairs/s with bf16 autocast + channels_last against fp32 (128 px), and
   fp32 + channels_last (the stage's choice on CPUs without native bf16).
3. rss: peak resident memory of a fresh process running the train loop at batch 16, 224 px.

Rounds alternate loop and bare measurements so that load from other processes hits both.

    .venv/bin/python benchmarks/bench_train.py            # all three
    .venv/bin/python benchmarks/bench_train.py --only loop --size 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.data import (
    ShardDataset,
    make_loader,
    shard_meta,
    shard_name,
    write_index,
    write_shard,
)
from pipelines.labels import FINDINGS
from pipelines.losses import build_loss
from pipelines.model import ModelParams, build_model
from pipelines.runtime import resolve_precision
from pipelines.train import TrainParams, build_scheduler
from pipelines.train.trainer import Trainer


def make_shards(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """Random prepared shards (every study with a lateral view, ~10% NaN labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 2, size, size), dtype=np.uint8)
    labels = (rng.random((n, len(FINDINGS))) < 0.2).astype(np.float32)
    labels[rng.random(labels.shape) < 0.1] = np.nan
    meta = shard_meta([f"s{i}" for i in range(n)], [f"p{i}" for i in range(n)], True, labels)
    write_index(root, size, {"train": [write_shard(root, shard_name("train", 0), images, meta)]})
    return root


def new_model(channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelParams()).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def bare_rate(model, size: int, batch: int, precision: str, steps: int, cl: bool = True) -> float:
    """Pairs/s of forward + BCE + backward + AdamW on random in-memory tensors."""
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(batch, 1, size, size).contiguous(memory_format=fmt)
    lat = torch.randn(batch, 1, size, size).contiguous(memory_format=fmt)
    has = torch.ones(batch, dtype=torch.bool)
    y = (torch.rand(batch, len(FINDINGS)) < 0.2).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x, lat, has)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def loop_trainer(model, size: int, batch: int, precision: str, steps: int) -> Trainer:
    """The stage's Trainer (focal loss, grad clipping, AdamW, warm-up + cosine, channels_last)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    params = TrainParams(epochs=1000, lr=1e-4, warmup_epochs=0.5)
    return Trainer(
        model,
        opt,
        build_scheduler(opt, params, steps),
        build_loss("focal"),
        torch.device("cpu"),
        precision,
        size,
        True,
        grad_clip=1.0,
    )


def bench_loop(args, tmp: Path) -> dict:
    root = make_shards(tmp / "loop", args.batch * args.steps, args.size)
    ds = ShardDataset(root, "train")
    gen = torch.Generator().manual_seed(0)
    loader = make_loader(
        ds,
        args.batch,
        sampler=torch.utils.data.RandomSampler(ds, generator=gen),
        drop_last=True,
        num_workers=args.workers,
    )
    model = new_model(channels_last=True)
    trainer = loop_trainer(model, args.size, args.batch, args.precision, args.steps)
    bare_rate(model, args.size, args.batch, args.precision, 2)  # warm-up: oneDNN primitives
    trainer.train_epoch(loader)
    loops, bares = [], []
    for r in range(args.rounds):
        stats = trainer.train_epoch(loader, progress=args.progress)
        loops.append(stats.pairs_per_s)
        bares.append(bare_rate(model, args.size, args.batch, args.precision, args.steps))
        print(f"  round {r}: loop {loops[-1]:.1f} pairs/s, bare {bares[-1]:.1f} pairs/s")
    loop, bare = statistics.median(loops), statistics.median(bares)
    return {"size": args.size, "batch": args.batch, "precision": args.precision,
            "loop_pairs_per_s": loop, "bare_pairs_per_s": bare, "ratio": loop / bare}  # fmt: skip


def bench_precision(args) -> dict:
    out = {}
    cases = (("fp32", "fp32", False), ("fp32_channels_last", "fp32", True),
             ("bf16_channels_last", "bf16", True))  # fmt: skip
    for name, precision, cl in cases:
        model = new_model(cl)
        bare_rate(model, args.precision_size, args.batch, precision, 2, cl)
        out[name] = bare_rate(model, args.precision_size, args.batch, precision, args.steps, cl)
        print(f"  {name}: {out[name]:.1f} pairs/s at {args.precision_size} px")
    return {"size": args.precision_size, "batch": args.batch,
            "pairs_per_s": out, "bf16_cl_vs_fp32": out["bf16_channels_last"] / out["fp32"],
            "fp32_cl_vs_fp32": out["fp32_channels_last"] / out["fp32"]}  # fmt: skip


def rss_child(size: int, batch: int, precision: str, steps: int) -> None:
    """Run ``steps`` train-loop steps in this (fresh) process; print peak RSS in MiB."""
    with tempfile.TemporaryDirectory() as tmp:
        root = make_shards(Path(tmp), batch * steps, size)
        ds = ShardDataset(root, "train")
        loader = make_loader(ds, batch, shuffle=True, drop_last=True)
        trainer = loop_trainer(new_model(True), size, batch, precision, steps)
        trainer.train_epoch(loader)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_rss(args) -> dict:
    out = {}
    for precision in ("bf16", "fp32"):
        cmd = [sys.executable, __file__, "--rss-child", "--size", "224", "--batch", "16",
               "--precision", precision, "--steps", "2"]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[precision] = json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_mib"]
        print(f"  peak RSS, batch 16, 224 px, {precision}: {out[precision]:.0f} MiB")
    return {"batch": 16, "size": 224, "peak_rss_mib": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["loop", "precision", "rss"], action="append")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--precision-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--precision",
        default=resolve_precision("auto", torch.device("cpu")),
        choices=["fp32", "bf16"],
    )
    ap.add_argument("--steps", type=int, default=6, help="steps per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="tqdm bar on, as in the stage")
    ap.add_argument(
        "--deterministic", action="store_true", help="deterministic kernels (train.deterministic)"
    )
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if args.rss_child:
        rss_child(args.size, args.batch, args.precision, args.steps)
        return
    sections = args.only or ["loop", "precision", "rss"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "loop" in sections:
            print(f"loop vs bare step ({args.size} px, batch {args.batch}, {args.precision}):")
            results["loop"] = r = bench_loop(args, Path(tmp))
            print(f"  => loop/bare = {r['ratio']:.3f} (target >= 0.90)")
        if "precision" in sections:
            print(f"bf16 + channels_last vs fp32 ({args.precision_size} px, batch {args.batch}):")
            results["precision"] = r = bench_precision(args)
            print(f"  => bf16+CL / fp32 = {r['bf16_cl_vs_fp32']:.2f}x, "
                  f"fp32+CL / fp32 = {r['fp32_cl_vs_fp32']:.2f}x")  # fmt: skip
        if "rss" in sections:
            print("peak RSS (fresh process, train loop):")
            results["rss"] = bench_rss(args)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
