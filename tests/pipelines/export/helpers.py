"""Stand-ins the export tests share: a tiny two-branch net, prepared shards with planted keys."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.data import ShardDataset, shard_meta, shard_name, write_index, write_shard
from pipelines.labels import FINDINGS
from pipelines.model import to_model_input
from pipelines.ood import OodGate, fit_gate

ROOT = Path(__file__).resolve().parents[3]
SIZE = 32
PLANTED = "PHI-PLANTED-7731"  # written into the shards' key columns: must never reach the card


class TinyNet(nn.Module):
    """A stand-in with the trained model's forward signature (normalised views, bool mask)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)

        def trunk() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(1, 8, 3, stride=2, padding=1),
                nn.BatchNorm2d(8),
                nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(1),
            )

        self.frontal_encoder, self.lateral_encoder = trunk(), trunk()
        self.head = nn.Linear(33, len(FINDINGS))
        with torch.no_grad():  # non-trivial BN statistics
            for bn in (m for m in self.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
        self.eval()

    def view_features(self, frontal, lateral):
        return self.frontal_encoder(frontal), self.lateral_encoder(lateral)

    def fuse(self, f, lat, present):
        m = present.to(torch.bool).to(f.dtype).unsqueeze(1)
        return self.head(torch.cat([f, lat * m, m], dim=1))

    def forward(self, frontal, lateral, has_lateral):
        return self.fuse(*self.view_features(frontal, lateral), has_lateral)


def fitted_gate(net: nn.Module, prepared: Path, widen: float = 1.0) -> OodGate:
    """The out-of-distribution gate of ``net`` fitted as evaluate fits it, on the train and
    val shards of ``prepared``; ``widen`` multiplies its thresholds (a wide-open gate for
    tests about something else)."""

    def feats(split):
        ds = ShardDataset(prepared, split)
        b = ds.get_batch(np.arange(len(ds)))
        with torch.no_grad():
            f, lat = net.view_features(
                to_model_input(b["frontal"], None), to_model_input(b["lateral"], None)
            )
        has = b["has_lateral"].numpy().astype(bool)
        return {"frontal": f.numpy(), "lateral": lat.numpy()[has]}

    gate = fit_gate(feats("train"), feats("val"), 0.005)
    views = {v: replace(g, threshold=g.threshold * widen) for v, g in gate.views.items()}
    return OodGate(views, gate.fit_refusal)


def make_prepared(root: Path, size: int = SIZE, counts: dict | None = None) -> Path:
    """A prepared folder with smooth random views, mixed lateral presence and labels."""
    counts = counts or {"train": 24, "val": 8, "test": 20}
    rng = np.random.default_rng(3)
    splits = {}
    for split, n in counts.items():
        base = rng.normal(size=(n, 2, size // 4, size // 4))
        images = np.kron(base, np.ones((1, 1, 4, 4)))
        images = np.clip(128 + 50 * images + rng.normal(0, 8, images.shape), 0, 255)
        images = images.astype(np.uint8)
        has_lateral = np.arange(n) % 3 != 0
        images[~has_lateral, 1] = 0
        labels = (rng.random((n, len(FINDINGS))) < 0.4).astype(np.float32)
        labels[rng.random(labels.shape) < 0.1] = np.nan
        studies = [f"{PLANTED}-s{i}" for i in range(n)]
        patients = [f"{PLANTED}-p{i}" for i in range(n)]
        meta = shard_meta(studies, patients, has_lateral, labels)
        splits[split] = [write_shard(root, shard_name(split, 0), images, meta)]
    write_index(root, size, splits)
    return root


def fresh_process_probs(model: Path, runtime: str, batch: dict) -> tuple[np.ndarray, bool]:
    """Load ``model`` in a new interpreter through predict's runtime code; (probs, torch used)."""
    work = model.parent / f"fresh-{model.name}"
    np.savez(work.with_suffix(".npz"), **batch)
    code = (
        "import sys, numpy as np\n"
        "from pipelines.runners import load_runner\n"
        "d = np.load(sys.argv[1])\n"
        "run = load_runner(sys.argv[2], sys.argv[3], threads=1)\n"
        "np.save(sys.argv[4], run(d['frontal'], d['lateral'], d['has_lateral']).probabilities)\n"
        "print('torch' in sys.modules)\n"
    )
    out = work.with_suffix(".npy")
    done = subprocess.run(
        [sys.executable, "-c", code, str(work.with_suffix(".npz")), str(model), runtime, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(out), done.stdout.strip().splitlines()[-1] == "True"
