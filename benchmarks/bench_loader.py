"""Benchmark the shard loader against what a two-branch DenseNet-121 training step consumes.

For each size (default 128 and 224 px) it writes ``--studies`` random studies as prepared shards
(the real format, via :func:`pipelines.data.write_shard`) to a temporary folder, then measures in
the same run:

- **loader**: samples/s of :func:`pipelines.data.make_loader` (batched memmap reads, shuffled,
  ``--workers`` DataLoader workers, default 0 = in the training process), and of a plain
  ``DataLoader(ShardDataset, batch_size, shuffle=True)`` (per-sample reads + default collate),
  median over ``--epochs`` passes;
- **train step**: pairs/s of one training step of a two-branch DenseNet-121 (torchvision
  ``densenet121().features`` twice, 1-channel first conv, pooled features concatenated into a
  14-way linear head, masked BCE, AdamW), batch ``--batch``, bf16 autocast + channels_last,
  ``--threads`` torch threads, median of ``--steps`` steps after one warm-up step.

It prints both and the ratio loader / step (the cache must feed >= 10x what training consumes).
No weights are downloaded (``weights=None``).

Usage:
    python benchmarks/bench_loader.py [--sizes 128 224] [--studies 1024] [--batch 16]
                                      [--steps 3] [--epochs 3] [--threads 2] [--workers 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipelines.data import (
    ShardDataset,
    make_loader,
    shard_meta,
    shard_name,
    write_index,
    write_shard,
)
from pipelines.labels import FINDINGS


def write_random_shards(root: Path, n: int, size: int, shard_size: int = 512) -> None:
    rng = np.random.default_rng(0)
    entries = []
    for k, lo in enumerate(range(0, n, shard_size)):
        m = min(shard_size, n - lo)
        images = rng.integers(0, 256, size=(m, 2, size, size), dtype=np.uint8)
        labels = rng.choice([0.0, 1.0, np.nan], size=(m, len(FINDINGS)), p=[0.7, 0.2, 0.1])
        keys = range(lo, lo + m)
        lateral = rng.random(m) < 0.9
        meta = shard_meta([f"s{i}" for i in keys], [f"p{i}" for i in keys], lateral, labels)
        entries.append(write_shard(root, shard_name("train", k), images, meta))
    write_index(root, size, {"train": entries, "val": [], "test": []})


def loader_rate(loader: DataLoader, epochs: int) -> float:
    rates = []
    for _ in range(epochs):
        t0, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["index"])
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


class TwoBranch(nn.Module):
    """Frontal and lateral DenseNet-121 trunks, pooled, concatenated, one linear head."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import densenet121

        def trunk() -> nn.Module:
            features = densenet121(weights=None).features
            features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            return features

        self.frontal, self.lateral = trunk(), trunk()
        self.head = nn.Linear(2 * 1024, len(FINDINGS))

    def forward(self, f: torch.Tensor, lat: torch.Tensor, has_lat: torch.Tensor) -> torch.Tensor:
        def pool(x: torch.Tensor) -> torch.Tensor:
            return nn.functional.adaptive_avg_pool2d(nn.functional.relu(x), 1).flatten(1)

        a = pool(self.frontal(f))
        b = pool(self.lateral(lat)) * has_lat[:, None].to(a.dtype)
        return self.head(torch.cat([a, b], dim=1))


def train_rate(batch: dict[str, torch.Tensor], steps: int) -> float:
    model = TwoBranch().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def prep(x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255.0 - 0.5) / 0.25
        return x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        f, lat = prep(batch["frontal"]), prep(batch["lateral"])
        y = batch["labels"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(f, lat, batch["has_lateral"])
        known = ~torch.isnan(y)
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits.float()[known], y[known], reduction="mean"
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return len(batch["index"]) / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--studies", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            write_random_shards(root, args.studies, size)
            ds = ShardDataset(root, "train")
            batched = make_loader(ds, args.batch, shuffle=True, seed=0, num_workers=args.workers)
            plain = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers)
            fast, slow = loader_rate(batched, args.epochs), loader_rate(plain, args.epochs)
            step = train_rate(ds.get_batch(range(args.batch)), args.steps)
        print(
            f"{size} px: loader {fast:9.0f} samples/s (make_loader), {slow:8.0f} samples/s "
            f"(per-sample DataLoader); train step {step:6.1f} pairs/s; "
            f"ratio {fast / step:7.0f}x (per-sample: {slow / step:.0f}x)"
        )


if __name__ == "__main__":
    main()
