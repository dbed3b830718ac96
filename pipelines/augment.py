"""augment stage: seeded, versioned augmented copies of the train split, and the same ops online.

One policy, one implementation of its ops: :func:`transform` applies a :class:`Draw` (affine
with bilinear sampling and black fill, brightness, contrast, gamma: the
``torchvision.transforms.v2.functional`` ops) to a float image in [0, 1] on any device, and
Gaussian noise is added on top. :func:`draw_from_uniforms` turns eight uniforms into a
:class:`Draw`, so both paths below follow the params with the same distribution. A study
without a lateral gets none (offline: none stored; online: its zero lateral stays zeros).

**Offline** (this stage, ``python -m pipelines.augment``): ``augment.copies`` variants of every
train study of the prepared shards are written to ``augment.out`` in the same shard format (meta
gains a ``copy`` column, 1..copies); training reads originals + copies
(``ShardDataset([prepared, augmented], "train")``). Each view of each study draws its own
parameters from a generator seeded by (``base.seed``, ``augment.version``, study key, copy,
view), never from process or row order, so the same params give bit-identical shards and a
changed study does not reshuffle the others. The result is rounded back to uint8. Bump
``version`` whenever the policy's code changes. ``copies: 0`` writes an empty, valid index.

**Online** (:class:`OnlineAugment`, ``train.online_augment: true``): the train stage draws each
sample's parameters and noise from a generator on the training device (seeded by the run's seed
and the rank, see :func:`online_generator`) and applies :func:`transform` to each sample there,
so every epoch sees fresh variants. For the same draw it gives the offline pixels before their
uint8 rounding (the noise itself comes from the generator, not from the draw's noise seed).

Which one: offline copies cost disk and a stage run but nothing at training time, are exactly
reproducible and cached by DVC, and suit CPU training where every millisecond of the step counts.
Online gives unlimited variety (no fixed set of copies to overfit) and suits GPU training; its
draws depend on the training generator, not on study keys. Horizontal flips are off by default:
they move the heart to the right, which a real chest radiograph (barring dextrocardia) never
shows.
"""

from __future__ import annotations

import hashlib
import logging
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator
from torch import nn

from pipelines.config import BaseParams, StageParams, load_params, parse_section
from pipelines.data import (
    INDEX_FILE,
    ShardViews,
    lateral_rows,
    open_shard,
    read_index,
    shard_name,
    write_index,
    write_views,
)
from pipelines.errors import UserError
from pipelines.io import atomic_path, write_metrics
from pipelines.labels import FINDINGS
from pipelines.schema import SPLITS
from pipelines.stage import run_stage

log = logging.getLogger(__name__)

METRICS_PATH = Path("metrics/augment.json")
PREVIEW_PATH = Path("plots/augment/preview.png")
VIEWS = ("frontal", "lateral")


class AugmentParams(StageParams):
    """The ``augment`` section of params.yaml."""

    prepared: str = "data/prepared"  # the preprocess stage's shards
    copies: int = Field(1, ge=0, le=100)
    version: int = Field(1, ge=1)  # bump when the policy's code changes
    rotation_deg: float = Field(5.0, ge=0, le=45)  # uniform in [-r, r]
    translate: float = Field(0.04, ge=0, le=0.3)  # fraction of the side, each axis
    scale: tuple[float, float] = (0.93, 1.07)
    brightness: float = Field(0.08, ge=0, lt=1)  # factor in [1 - b, 1 + b]
    contrast: float = Field(0.1, ge=0, lt=1)  # factor in [1 - c, 1 + c]
    gamma: tuple[float, float] = (0.9, 1.1)
    noise_std: float = Field(0.01, ge=0, le=0.5)  # Gaussian, in [0, 1] units
    hflip: bool = False  # flips move the heart: off by default
    preview: int = Field(4, ge=0, le=32)  # studies in the preview PNG
    out: str = "data/augmented"

    @field_validator("scale", "gamma")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"must be (low, high) with 0 < low <= high, got {list(v)}")
        return v


# ----------------------------------------------------------------------------------------------
# The ops (offline and online)


@dataclass(frozen=True)
class Draw:
    """The parameters of one augmented view (recorded, replayable)."""

    angle: float  # degrees, clockwise (torchvision ``affine``)
    translate: tuple[float, float]  # fraction of the side (x, y)
    scale: float
    flip: bool
    brightness: float
    contrast: float
    gamma: float
    noise_seed: int  # offline noise; online noise comes from the training generator


N_UNIFORMS = 8  # uniforms in [0, 1) per draw (see draw_from_uniforms)


def draw_from_uniforms(params: AugmentParams, u: Sequence[float], noise_seed: int = 0) -> Draw:
    """The policy's distribution: eight uniforms in [0, 1) -> one :class:`Draw`.

    Args:
        params: the policy.
        u: angle, x shift, y shift, flip, scale, brightness, contrast, gamma (in this order).
        noise_seed: recorded in the draw (the offline noise seed).

    Returns:
        Angle, shifts uniform in [-r, r]; scale and gamma uniform in their ranges; brightness
        and contrast factors uniform in [1 - b, 1 + b]; a flip with probability 1/2 where
        ``hflip`` is on.
    """
    p = params

    def between(low: float, high: float, x: float) -> float:
        return low + (high - low) * x  # what numpy's Generator.uniform computes

    signed = [between(-1.0, 1.0, x) for x in u[:4]]
    return Draw(
        angle=float(signed[0] * p.rotation_deg),
        translate=(float(signed[1] * p.translate), float(signed[2] * p.translate)),
        scale=float(between(*p.scale, u[4])),
        flip=bool(p.hflip and signed[3] > 0),
        brightness=float(between(1 - p.brightness, 1 + p.brightness, u[5])),
        contrast=float(between(1 - p.contrast, 1 + p.contrast, u[6])),
        gamma=float(between(*p.gamma, u[7])),
        noise_seed=int(noise_seed),
    )


def transform(x: torch.Tensor, draw: Draw) -> torch.Tensor:
    """Apply a draw's geometry and intensity ops (no noise) to one image, on its device.

    Args:
        x: float (C, H, W) in [0, 1] (square).
        draw: the parameters.

    Returns:
        float (C, H, W) in [0, 1]: flip, affine (bilinear, black fill), brightness, contrast,
        gamma, by ``torchvision.transforms.v2.functional``.
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    size = x.shape[-1]
    if draw.flip:
        x = F.horizontal_flip(x)
    x = F.affine(
        x,
        angle=draw.angle,
        translate=[draw.translate[0] * size, draw.translate[1] * size],
        scale=draw.scale,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
        fill=0.0,
    )
    x = F.adjust_brightness(x, draw.brightness)
    x = F.adjust_contrast(x, draw.contrast)
    return F.adjust_gamma(x, draw.gamma)


# ----------------------------------------------------------------------------------------------
# Offline policy


def sample_seed(seed: int, version: int, study_key: str, copy: int, view: str) -> int:
    """A 128-bit seed from what identifies one augmented view (not from any order)."""
    text = f"cxr-augment|{seed}|{version}|{study_key}|{copy}|{view}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:16], "little")


class AugmentPolicy:
    """The seeded, versioned offline policy: draw parameters, then apply them.

    Args:
        params: the ``augment`` params.
        seed: ``base.seed``.
    """

    def __init__(self, params: AugmentParams, seed: int):
        self.params = params
        self.seed = seed

    def draw(self, study_key: str, copy: int, view: str) -> Draw:
        """The parameters for one view of one copy of one study."""
        p = self.params
        rng = np.random.default_rng(sample_seed(self.seed, p.version, study_key, copy, view))
        u = rng.random(N_UNIFORMS).tolist()
        return draw_from_uniforms(p, u, noise_seed=int(rng.integers(2**63)))

    def apply(self, image: np.ndarray, draw: Draw) -> np.ndarray:
        """Apply a draw to a uint8 (S, S) image; returns uint8 (S, S)."""
        x = torch.from_numpy(np.array(image, dtype=np.float32)).div_(255.0)[None]
        out = transform(x, draw)[0].numpy()
        if self.params.noise_std > 0:
            noise = np.random.default_rng(draw.noise_seed).standard_normal(out.shape)
            out = out + (self.params.noise_std * noise).astype(np.float32)
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)

    def augment_pair(
        self, pair: np.ndarray, has_lateral: bool, study_key: str, copy: int
    ) -> np.ndarray:
        """Augment a (2, S, S) uint8 study; each view gets its own draw; no lateral stays 0."""
        out = np.zeros_like(pair)
        out[0] = self.apply(pair[0], self.draw(study_key, copy, "frontal"))
        if has_lateral:
            out[1] = self.apply(pair[1], self.draw(study_key, copy, "lateral"))
        return out

    def augment_shard(
        self, src: ShardViews, study_keys: Sequence[str], copy: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment a shard's studies: (frontals (N, S, S), laterals (L, S, S)) as stored.

        Each view gets the draw :meth:`augment_pair` gives it; studies without a lateral have
        none in the output either.
        """
        frontal = np.empty(src.frontal.shape, dtype=np.uint8)
        rows = src.lateral_row
        lateral = np.empty((int((rows >= 0).sum()), *src.frontal.shape[1:]), dtype=np.uint8)
        for i, (key, out_row) in enumerate(zip(study_keys, lateral_rows(rows >= 0), strict=True)):
            frontal[i] = self.apply(np.asarray(src.frontal[i]), self.draw(key, copy, "frontal"))
            if out_row >= 0:
                view = np.asarray(src.lateral[rows[i]])
                lateral[out_row] = self.apply(view, self.draw(key, copy, "lateral"))
        return frontal, lateral


def augment_shards(
    prepared: str | Path, out: str | Path, params: AugmentParams, seed: int
) -> dict[str, Any]:
    """Write ``params.copies`` augmented copies of the prepared train split into ``out``.

    Args:
        prepared: the preprocess stage's folder.
        out: the augmented folder (old shards and index in it are removed first).
        params: the policy and copies.
        seed: ``base.seed``.

    Returns:
        A summary: copies, studies, images augmented, shards, seconds.

    Raises:
        UserError: ``prepared`` has no valid index.
    """
    start = time.perf_counter()
    prepared, out = Path(prepared), Path(out)
    try:
        index = read_index(prepared)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    for pattern in (INDEX_FILE, "*.images.npy", "*.meta.parquet"):
        for old in out.glob(pattern):
            old.unlink()
    policy = AugmentPolicy(params, seed)
    entries: list[dict] = []
    studies = images = 0
    for copy in range(1, params.copies + 1):
        for entry in index["splits"].get("train", []):
            meta, src = _read_shard(prepared, index, entry)
            frontal, lateral = policy.augment_shard(src, meta["study_key"].astype(str), copy)
            meta = meta.assign(copy=copy)
            name = shard_name("train", len(entries))
            entries.append(write_views(out, name, frontal, lateral, meta))
            studies += len(meta)
            images += len(frontal) + len(lateral)
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    splits["train"] = entries
    policy_info = params.model_dump(exclude={"prepared", "out", "preview"})
    write_index(out, index["size"], splits, stage="augment", seed=seed, policy=policy_info)
    seconds = time.perf_counter() - start
    return {
        "copies": params.copies,
        "version": params.version,
        "studies": studies,
        "images": images,
        "shards": len(entries),
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 2) if seconds and images else 0.0,
    }


def _read_shard(prepared: Path, index: dict, entry: dict) -> tuple[pd.DataFrame, ShardViews]:
    """One shard of a prepared folder: its meta and its memory-mapped views."""
    meta = pd.read_parquet(prepared / f"{entry['name']}.meta.parquet")
    images = prepared / f"{entry['name']}.images.npy"
    return meta, open_shard(images, meta["has_lateral"], index["size"], index["format"])


def save_preview(prepared: str | Path, params: AugmentParams, seed: int, path: str | Path) -> None:
    """A PNG of a few train studies: original vs augmented (copy 1), frontal and lateral.

    Shown whatever ``copies`` is, so the policy can be judged before copies are written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks: list[tuple[np.ndarray, bool, pd.Series]] = []
    index = read_index(prepared)
    for entry in index["splits"].get("train", []):
        if len(picks) >= params.preview:
            break
        meta, src = _read_shard(Path(prepared), index, entry)
        order = np.argsort(~meta["has_lateral"].to_numpy(), kind="stable")  # dual view first
        for i in order[: params.preview - len(picks)]:
            row = src.lateral_row[i]
            lat = np.asarray(src.lateral[row]) if row >= 0 else np.zeros_like(src.frontal[i])
            pair = np.stack([np.asarray(src.frontal[i]), lat])
            picks.append((pair, bool(row >= 0), meta.iloc[i]))
    policy = AugmentPolicy(params, seed)
    n = max(1, len(picks))
    height = 2.1 * n + 0.6
    fig, axes = plt.subplots(n, 4, figsize=(7.6, height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.6 / height,
                        wspace=0.04, hspace=0.35)  # fmt: skip
    titles = ("frontal", "frontal augmented", "lateral", "lateral augmented")
    for ax in axes.flat:
        ax.axis("off")
    for r, (pair, lat, row) in enumerate(picks):
        aug = policy.augment_pair(pair, lat, str(row["study_key"]), 1)
        shown = (pair[0], aug[0], pair[1], aug[1]) if lat else (pair[0], aug[0], None, None)
        labels = ", ".join(f for f in FINDINGS if row[f] == 1) or "-"
        for c, img in enumerate(shown):
            if img is not None:
                axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=255)
            elif c == 2:
                axes[r, c].text(0.5, 0.5, "no lateral", ha="center", va="center", fontsize=8)
            title = titles[c] if c else f"{titles[0]}: {labels}"
            title = textwrap.fill(title, 34, max_lines=2, placeholder=" ...")
            axes[r, c].set_title(title, fontsize=7)
    if not picks:
        axes[0, 0].text(0.5, 0.5, "no train studies", ha="center", va="center")
    fig.suptitle(
        f"augment v{params.version} (copies={params.copies}): original vs augmented (copy 1)",
        fontsize=9,
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Online, batched, on the training device


def online_generator(seed: int, rank: int, device: torch.device | str) -> torch.Generator:
    """The online augmentation's generator on ``device``, seeded by the run's seed and the rank.

    Its stream is apart from torch's global one (which the model's dropout draws from).
    """
    text = f"cxr-augment-online|{seed}|{rank}".encode()
    generator = torch.Generator(device=device)
    return generator.manual_seed(int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1)


class OnlineAugment(nn.Module):
    """The augment policy applied to a batch on whatever device the batch is on.

    Each sample gets its own :class:`Draw` (from :func:`draw_from_uniforms` on uniforms drawn
    on the batch's device) and Gaussian noise from the same generator, applied with
    :func:`transform`: without noise, the pixels :meth:`AugmentPolicy.apply` gives for the same
    draw, before its uint8 rounding. Active only in training mode; ``eval()`` makes it the
    identity.

    Args:
        params: the ``augment`` section (its policy keys).
    """

    def __init__(self, params: AugmentParams):
        super().__init__()
        self.params = params

    def draws(
        self, n: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> list[Draw]:
        """The parameters of ``n`` samples, drawn on ``device`` (``generator`` if given)."""
        u = torch.rand(
            (n, N_UNIFORMS), generator=generator, device=device, dtype=torch.float64
        ).tolist()
        return [draw_from_uniforms(self.params, row) for row in u]

    def augment_view(
        self, x: torch.Tensor, draw: Draw, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One sample: float (C, H, W) in [0, 1] -> augmented, clamped to [0, 1].

        Args:
            x: the image.
            draw: its parameters.
            noise: standard normal noise of ``x``'s shape (scaled by ``noise_std``); None: none.
        """
        y = transform(x, draw)
        if noise is not None and self.params.noise_std > 0:
            y = y + self.params.noise_std * noise
        return y.clamp(0.0, 1.0)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Augment a batch.

        Args:
            x: (B, C, H, W) uint8 (0..255) or float in [0, 1].
            mask: optional bool (B,): only these samples are augmented (e.g. ``has_lateral``,
                so missing laterals stay zeros).
            generator: a generator on ``x``'s device, for reproducible draws.

        Returns:
            float32 (B, C, H, W) in [0, 1].
        """
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        if not self.training:
            return x
        draws = self.draws(len(x), x.device, generator)
        noise = None
        if self.params.noise_std > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device)
        keep = [True] * len(x) if mask is None else mask.bool().tolist()
        views = [
            self.augment_view(x[i], draws[i], None if noise is None else noise[i])
            if keep[i]
            else x[i]
            for i in range(len(x))
        ]
        return torch.stack(views)


# ----------------------------------------------------------------------------------------------
# Stage entry


def run_augment(
    params: AugmentParams,
    seed: int,
    metrics: str | Path = METRICS_PATH,
    preview: str | Path = PREVIEW_PATH,
) -> dict[str, Any]:
    """Write the augmented shards, the summary JSON and the preview PNG."""
    summary = augment_shards(params.prepared, params.out, params, seed)
    write_metrics(metrics, summary)
    save_preview(params.prepared, params, seed, preview)
    log.info(
        "augment v%d: %d copies, %d studies, %d images, %.1f images/s",
        params.version,
        params.copies,
        summary["studies"],
        summary["images"],
        summary["images_per_s"],
    )
    return summary


def main() -> None:
    """DVC entry point: ``python -m pipelines.augment`` reads ``augment`` and ``base``."""

    def go() -> dict[str, Any]:
        raw = load_params()
        base = parse_section(BaseParams, "base", raw, "params.yaml")
        return run_augment(parse_section(AugmentParams, "augment", raw, "params.yaml"), base.seed)

    run_stage(go)


if __name__ == "__main__":
    main()
