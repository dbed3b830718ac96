"""GPU check for the train stage: pairs/s under AMP vs fp32, and the share of step time spent
waiting on data. Exits cleanly with a message where no CUDA device exists.

1. Bare two-branch DenseNet-121 steps on random tensors already on the GPU (channels_last):
   fp32 against AMP (bf16 where supported, else fp16 with a GradScaler), same size and batch.
2. The train stage's loop (:class:`pipelines.train.trainer.Trainer`) fed from prepared shards
   on disk through ``make_loader`` with ``--workers`` processes and pinned memory: the time each
   step waits for its batch (``next(loader)`` until the batch is ready), as a share of the total.

    .venv/bin/python benchmarks/gpu_check.py --size 224 --batch 32 --steps 30 --workers 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import make_shards, new_model

from pipelines.data import ShardDataset, make_loader
from pipelines.labels import FINDINGS
from pipelines.losses import build_loss
from pipelines.runtime import resolve_precision
from pipelines.train import TrainParams, build_scheduler
from pipelines.train.trainer import Trainer


def bare_rate(device, size: int, batch: int, precision: str, steps: int, warmup: int = 3):
    """Pairs/s of forward + BCE + backward + AdamW on GPU-resident random tensors."""
    model = new_model(channels_last=True).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    x = torch.randn(batch, 1, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    has = torch.ones(batch, dtype=torch.bool, device=device)
    y = (torch.rand(batch, len(FINDINGS), device=device) < 0.2).float()

    def step():
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x, x, has)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def data_wait(device, args, precision: str, tmp: Path) -> dict:
    """Run the stage's step from shards; time spent waiting for each batch vs the whole step."""
    root = make_shards(tmp / "shards", args.batch * (args.steps + 3), args.prepared_size)
    ds = ShardDataset(root, "train")
    loader = make_loader(
        ds, args.batch, shuffle=True, drop_last=True, num_workers=args.workers, pin_memory=True
    )
    model = new_model(channels_last=True).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = build_scheduler(opt, TrainParams(epochs=1000), args.steps + 3)
    trainer = Trainer(model, opt, sched, build_loss("focal"), device, precision, args.size,
                      True, grad_clip=1.0)  # fmt: skip
    model.train()
    waits, totals = [], []
    it = iter(loader)
    for i in range(args.steps + 3):
        start = time.perf_counter()
        batch = next(it)
        ready = time.perf_counter()
        trainer.step(batch)
        torch.cuda.synchronize(device)
        end = time.perf_counter()
        if i >= 3:  # skip warm-up (workers starting, cuDNN autotune)
            waits.append(ready - start)
            totals.append(end - start)
    return {
        "workers": args.workers,
        "pairs_per_s": args.batch * len(totals) / sum(totals),
        "data_wait_share": sum(waits) / sum(totals),
        "median_wait_ms": 1000 * statistics.median(waits),
        "median_step_ms": 1000 * statistics.median(totals),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--prepared-size", type=int, default=256, help="shard size (resized on GPU)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to measure (run it on a GPU machine)")
        return
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    amp = resolve_precision("auto", device)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, AMP = {amp}")
    fp32 = bare_rate(device, args.size, args.batch, "fp32", args.steps)
    mixed = bare_rate(device, args.size, args.batch, amp, args.steps)
    print(f"bare step, {args.size} px, batch {args.batch}: fp32 {fp32:.0f} pairs/s, "
          f"{amp} {mixed:.0f} pairs/s ({mixed / fp32:.2f}x)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        wait = data_wait(device, args, amp, Path(tmp))
    print(f"train loop from shards ({args.workers} workers): {wait['pairs_per_s']:.0f} pairs/s, "
          f"{100 * wait['data_wait_share']:.1f}% of step time waiting on data")  # fmt: skip
    print(json.dumps({"fp32_pairs_per_s": fp32, "amp_pairs_per_s": mixed, "amp": amp,
                      "speedup": mixed / fp32, "loop": wait}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
