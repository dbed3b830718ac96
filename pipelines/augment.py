"""augment stage: seeded, versioned augmented copies of the train split, plus online augmentation.

**Offline** (this stage, ``python -m pipelines.augment``): ``augment.copies`` variants of every
train study of the prepared shards are written to ``augment.out`` in the same shard format (meta
gains a ``copy`` column, 1..copies); training reads originals + copies
(``ShardDataset([prepared, augmented], "train")``). Each view of each study draws its own
parameters from a generator seeded by (``base.seed``, ``augment.version``, study key, copy,
view), never from process or row order, so the same params give bit-identical shards and a
changed study does not reshuffle the others. The ops are ``torchvision.transforms.v2.functional``
(affine with bilinear sampling and black fill, brightness, contrast, gamma) plus Gaussian noise,
on float32 [0, 1], rounded back to uint8. Bump ``version`` whenever the policy's code changes.
``copies: 0`` writes an empty, valid index. A missing lateral (all zeros) stays zeros.

**Online** (:class:`OnlineAugment`, for the training stage to enable): the same distribution,
drawn per batch on the training device with ``affine_grid`` / ``grid_sample`` and tensor
intensity ops, so a GPU run sees fresh variants every epoch at almost no cost.

Which one: offline copies cost disk and a stage run but nothing at training time, are exactly
reproducible and cached by DVC, and suit CPU training where every millisecond of the step counts.
Online gives unlimited variety (no fixed set of copies to overfit) and suits GPU training; its
draws depend on the training generator, not on study keys. Both follow the params below, but the
two implementations are not pixel-identical. Horizontal flips are off by default: they move the
heart to the right, which a real chest radiograph (barring dextrocardia) never shows.
"""

from __future__ import annotations

import hashlib
import logging
import math
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator
from torch import nn

from pipelines.config import BaseParams, StageParams, load_params, parse_section
from pipelines.data import INDEX_FILE, read_index, shard_name, write_index, write_shard
from pipelines.errors import UserError
from pipelines.io import atomic_path, write_json
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
# Offline policy


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
    noise_seed: int


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
        u = rng.uniform(-1.0, 1.0, size=4)
        return Draw(
            angle=float(u[0] * p.rotation_deg),
            translate=(float(u[1] * p.translate), float(u[2] * p.translate)),
            scale=float(rng.uniform(*p.scale)),
            flip=bool(p.hflip and u[3] > 0),
            brightness=float(rng.uniform(1 - p.brightness, 1 + p.brightness)),
            contrast=float(rng.uniform(1 - p.contrast, 1 + p.contrast)),
            gamma=float(rng.uniform(*p.gamma)),
            noise_seed=int(rng.integers(2**63)),
        )

    def apply(self, image: np.ndarray, draw: Draw) -> np.ndarray:
        """Apply a draw to a uint8 (S, S) image; returns uint8 (S, S)."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        size = image.shape[-1]
        x = torch.from_numpy(np.array(image, dtype=np.float32)).div_(255.0)[None]
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
        x = F.adjust_gamma(x, draw.gamma)
        out = x[0].numpy()
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
            src = np.load(prepared / f"{entry['name']}.images.npy", mmap_mode="r")
            meta = pd.read_parquet(prepared / f"{entry['name']}.meta.parquet")
            aug = np.empty(src.shape, dtype=np.uint8)
            for i, (key, lat) in enumerate(
                zip(meta["study_key"], meta["has_lateral"], strict=True)
            ):
                aug[i] = policy.augment_pair(np.asarray(src[i]), bool(lat), str(key), copy)
                images += 1 + bool(lat)
            meta = meta.assign(copy=copy)
            entries.append(write_shard(out, shard_name("train", len(entries)), aug, meta))
            studies += len(meta)
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
        src = np.load(Path(prepared) / f"{entry['name']}.images.npy", mmap_mode="r")
        meta = pd.read_parquet(Path(prepared) / f"{entry['name']}.meta.parquet")
        order = np.argsort(~meta["has_lateral"].to_numpy(), kind="stable")  # dual view first
        for i in order[: params.preview - len(picks)]:
            picks.append((np.asarray(src[i]), bool(meta["has_lateral"].iloc[i]), meta.iloc[i]))
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


class OnlineAugment(nn.Module):
    """Random affine + intensity jitter of a batch, on whatever device the batch is on.

    Same parameter meanings as :class:`AugmentParams` (rotation in degrees, translation as a
    fraction of the side, scale / gamma ranges, brightness / contrast factors, noise std in
    [0, 1] units). Active only in training mode; ``eval()`` makes it the identity.

    Args:
        rotation_deg, translate, scale, brightness, contrast, gamma, noise_std, hflip: the policy.
    """

    def __init__(
        self,
        rotation_deg: float = 5.0,
        translate: float = 0.04,
        scale: tuple[float, float] = (0.93, 1.07),
        brightness: float = 0.08,
        contrast: float = 0.1,
        gamma: tuple[float, float] = (0.9, 1.1),
        noise_std: float = 0.01,
        hflip: bool = False,
    ):
        super().__init__()
        self.rotation = math.radians(rotation_deg)
        self.translate = translate
        self.scale = tuple(scale)
        self.brightness = brightness
        self.contrast = contrast
        self.gamma = tuple(gamma)
        self.noise_std = noise_std
        self.hflip = hflip

    @classmethod
    def from_params(cls, p: AugmentParams) -> OnlineAugment:
        """Build from the ``augment`` section."""
        keys = ("rotation_deg", "translate", "scale", "brightness", "contrast", "gamma")
        return cls(**{k: getattr(p, k) for k in keys}, noise_std=p.noise_std, hflip=p.hflip)

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
        b, dev = x.shape[0], x.device

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(b, device=dev, generator=generator)

        draws = {
            "angle": uniform(-self.rotation, self.rotation),
            "scale": uniform(*self.scale),
            "tx": uniform(-self.translate, self.translate),
            "ty": uniform(-self.translate, self.translate),
            "flip": (uniform(0.0, 1.0) < 0.5) & self.hflip,
            "brightness": uniform(1 - self.brightness, 1 + self.brightness),
            "contrast": uniform(1 - self.contrast, 1 + self.contrast),
            "gamma": uniform(*self.gamma),
        }
        y = self.transform(x, draws)
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(y.shape, device=dev, generator=generator)
        y = y.clamp(0.0, 1.0)
        if mask is not None:
            y = torch.where(mask.to(dev).view(b, 1, 1, 1), y, x)
        return y

    @staticmethod
    def transform(x: torch.Tensor, d: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply given per-sample parameters (no noise) to a float batch in [0, 1].

        Args:
            x: float (B, C, H, W).
            d: (B,) tensors: ``angle`` (radians, clockwise as torchvision's affine), ``scale``,
                ``tx`` / ``ty`` (fraction of the side; positive = right / down), ``flip`` (bool),
                ``brightness``, ``contrast``, ``gamma``.
        """
        b = x.shape[0]
        angle, scale = -d["angle"].float(), d["scale"].float()  # as counter-clockwise
        flip = torch.where(d["flip"].bool(), -1.0, 1.0).to(x.device)
        # theta maps output to input coordinates: the inverse of flip -> rotate -> scale ->
        # shift, in normalised coordinates (which span 2, y pointing down)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        tx, ty = 2 * d["tx"].float(), 2 * d["ty"].float()
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin * flip, -(cos * tx - sin * ty) * flip], dim=1),
                torch.stack([sin, cos, -(sin * tx + cos * ty)], dim=1),
            ],
            dim=1,
        )
        grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        y = nn.functional.grid_sample(
            x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        view = (b, 1, 1, 1)
        y = y * d["brightness"].float().view(view)
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * d["contrast"].float().view(view) + mean
        return y.clamp(0.0, 1.0) ** d["gamma"].float().view(view)


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
    write_json(metrics, summary)
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
