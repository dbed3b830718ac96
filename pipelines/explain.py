"""Saliency per view and finding: Grad-CAM of the trained two-view model (MONAI's ``GradCAM``).

For a study and a finding, :class:`Explainer` gives one heatmap for the frontal and one for the
lateral view (:class:`Saliency`):

- **where**: Grad-CAM (Selvaraju et al.) at the output of the **last dense block** of each
  view's trunk (``features.denseblock4``): the block's channels weighted by the mean gradient
  of the finding's logit over the block's positions, summed, ReLU. The maps are computed by
  :class:`monai.visualize.GradCAM` on the part of the model after those blocks (each block's
  output enters through its own tap, so a model whose two views share one trunk gets one map
  per view all the same), then bilinearly upsampled to each view image's resolution;
- **how much**: the view's **share of the evidence** is its share of the positive Grad-CAM mass
  of the study: ``frontal_share = M_f / (M_f + M_l)`` with ``M_v`` the sum of view ``v``'s map
  over the block's positions (both blocks have the same grid, and the weights are gradients of
  the same logit, so the sums compare). It is NaN when neither view has positive evidence; a
  study without a lateral view, or a frontal-only model, has ``frontal_share`` 1 (or NaN);
- the two heatmaps are scaled together to [0, 1] by the larger of their maxima, so a view with
  little evidence looks faint beside the other.

Grad-CAM at this layer is coarse by construction: the last block's grid is the input size / 32
(2 x 2 at the demo's 64 px input, 16 x 16 at 512 px). It explains the eager PyTorch checkpoint
(``models/best.pt``) only: the exported TorchScript / ONNX / int8 / mobile models carry no
gradients to the last block, so ``cxr predict --explain`` loads the checkpoint beside them.

:func:`overlay` colours a heatmap over its grey image (RGB uint8) and :func:`png_bytes` encodes
it; the evaluation report's galleries and ``cxr predict --explain`` use both.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipelines.model import DualViewDenseNet, load_model, to_model_input

LAST_BLOCK = "denseblock4"
#: The colour map of :func:`overlay` (matplotlib's name).
COLORMAP = "jet"


@dataclass(frozen=True)
class Saliency:
    """Grad-CAM of one study for one finding.

    Attributes:
        finding: the finding's name.
        probability: the model's probability for it (the same forward pass).
        frontal: float32 (H, W) in [0, 1] at the frontal image's resolution.
        lateral: the same for the lateral image; None without a lateral view or branch.
        frontal_share: the frontal view's share of the positive Grad-CAM mass (NaN: none).
    """

    finding: str
    probability: float
    frontal: np.ndarray
    lateral: np.ndarray | None
    frontal_share: float

    @property
    def lateral_share(self) -> float:
        """The lateral view's share of the evidence: ``1 - frontal_share`` (NaN: none)."""
        return 1.0 - self.frontal_share


@dataclass(frozen=True)
class Blocks:
    """A batch's last dense block outputs (model input size / 32 grid) and probabilities.

    Attributes:
        frontal: (B, 1024, h, w) of the frontal trunk; ``lateral``: of the lateral trunk (None
            for a frontal-only model); ``present``: (B,) bool lateral views that count;
        probs: (B, F) the model's probabilities.
    """

    frontal: torch.Tensor
    lateral: torch.Tensor | None
    present: torch.Tensor
    probs: np.ndarray

    def take(self, rows: Sequence[int] | np.ndarray) -> Blocks:
        """The blocks of some studies (``rows`` into this batch)."""
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.frontal.device)
        lat = self.lateral.index_select(0, idx) if self.lateral is not None else None
        rows_np = np.asarray(rows, dtype=np.int64)
        return Blocks(
            self.frontal.index_select(0, idx), lat, self.present[idx], self.probs[rows_np]
        )

    @staticmethod
    def concat(parts: Sequence[Blocks]) -> Blocks:
        """One batch of several (in order)."""
        lat = None if parts[0].lateral is None else torch.cat([b.lateral for b in parts])
        return Blocks(
            torch.cat([b.frontal for b in parts]),
            lat,
            torch.cat([b.present for b in parts]),
            np.concatenate([b.probs for b in parts]),
        )


def split_trunk(trunk: nn.Module) -> tuple[nn.Module, nn.Module]:
    """A :func:`pipelines.model.densenet_trunk` as (input -> last dense block, the rest).

    Both parts share the trunk's modules (no copies): the second is ``norm5``, ReLU, pooling.

    Raises:
        ValueError: ``trunk`` is not a DenseNet trunk ending in ``denseblock4`` + ``norm5``.
    """
    features = trunk[0] if isinstance(trunk, nn.Sequential) else None
    names = [n for n, _ in features.named_children()] if features is not None else []
    if names[-2:] != [LAST_BLOCK, "norm5"]:
        raise ValueError(f"not a DenseNet trunk ending in {LAST_BLOCK} + norm5: {names[-2:]}")
    children = list(features.children())
    return nn.Sequential(*children[:-1]), nn.Sequential(children[-1], *list(trunk.children())[1:])


class _AfterBlocks(nn.Module):
    """The model from each view's last dense block on (what Grad-CAM differentiates)."""

    def __init__(self, model: DualViewDenseNet):
        super().__init__()
        # only the modules after the blocks are registered (MONAI's wrapper walks them on
        # every call); the fusion is the model's own method
        self._fuse = model.fuse
        self.head = model.head
        self.frontal_tap, self.lateral_tap = nn.Identity(), nn.Identity()
        self.frontal_rest = split_trunk(model.frontal_encoder)[1]
        self.two_views = model.fusion != "frontal"
        self.lateral_rest = split_trunk(model._lateral_trunk())[1] if self.two_views else None

    def forward(
        self, frontal: torch.Tensor, lateral: torch.Tensor | None, present: torch.Tensor
    ) -> torch.Tensor:
        f = self.frontal_rest(self.frontal_tap(frontal))
        lat = None
        if self.lateral_rest is not None and lateral is not None:
            lat = self.lateral_rest(self.lateral_tap(lateral))
        return self._fuse(f, lat, present)


class Explainer:
    """Grad-CAM per view and finding of a trained model.

    Args:
        model: the trained model (put in eval mode).
        size: its input size (a checkpoint's ``meta["size"]``; None: images as they are).
        findings: its outputs' names, in order.
    """

    def __init__(self, model: DualViewDenseNet, size: int | None, findings: Sequence[str]):
        self.model = model.eval()
        self.size = size
        self.findings = list(findings)
        self.device = next(model.parameters()).device
        self._frontal_body = split_trunk(model.frontal_encoder)[0]
        self._lateral_body = split_trunk(model._lateral_trunk())[0]
        # eval mode before MONAI's wrapper sees it: it puts back the mode it found
        self._after = _AfterBlocks(model).eval()
        from monai.visualize import GradCAM  # ~3 s of imports: only where saliency is made

        taps = ["frontal_tap", "lateral_tap"] if self._after.two_views else ["frontal_tap"]
        self._cam = GradCAM(nn_module=self._after, target_layers=taps)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Explainer:
        """The explainer of a checkpoint written by the train stage.

        Raises:
            CheckpointError: missing or unusable checkpoint.
        """
        model, meta = load_model(path, map_location=device)
        return cls(model, meta.get("size"), meta["findings"])

    @property
    def two_views(self) -> bool:
        """Whether the model has a lateral branch."""
        return self._after.two_views

    def blocks(
        self, frontal: torch.Tensor, lateral: torch.Tensor, has_lateral: torch.Tensor
    ) -> Blocks:
        """The last dense blocks' outputs of a batch of studies and their probabilities.

        Args:
            frontal, lateral: uint8 (B, 1, H, W) views (any H, W; resized to the model's size).
            has_lateral: (B,) bool.
        """
        dev = self.device
        present = has_lateral.to(device=dev, dtype=torch.bool).reshape(-1)
        with torch.no_grad():
            fb = self._frontal_body(to_model_input(frontal.to(dev), self.size))
            lb = None
            if self.two_views:
                lb = self._lateral_body(to_model_input(lateral.to(dev), self.size))
            probs = torch.sigmoid(self._after(fb, lb, present).float()).cpu().numpy()
        return Blocks(fb, lb, present, probs)

    def cams(self, blocks: Blocks, finding: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Grad-CAM of one finding on the blocks' grid: frontal (B, h, w) and lateral (B, h, w)
        (None for a frontal-only model), float32, ReLU applied, not scaled."""
        k = self.findings.index(finding)
        fb = blocks.frontal.detach().requires_grad_(True)
        lb = blocks.lateral.detach().requires_grad_(True) if blocks.lateral is not None else None
        kw = {"class_idx": k, "lateral": lb, "present": blocks.present}
        with torch.enable_grad():
            cf = self._cam.compute_map(fb, layer_idx=0, **kw)
            cl = self._cam.compute_map(fb, layer_idx=1, **kw) if lb is not None else None
        as_np = lambda c: c.detach()[:, 0].float().cpu().numpy()  # noqa: E731
        return as_np(cf), (as_np(cl) if cl is not None else None)

    def explain(
        self,
        frontal: np.ndarray,
        lateral: np.ndarray | None,
        findings: Sequence[str] | None = None,
    ) -> dict[str, Saliency]:
        """Heatmaps of one study, per finding, at each view image's resolution.

        Args:
            frontal: uint8 (H, W) decoded frontal view (e.g. :func:`pipelines.imaging.
                prepare_image`'s output, or any size: it is resized to the model's input).
            lateral: uint8 (H2, W2) lateral view, or None.
            findings: names of :attr:`findings` (None: all).

        Returns:
            finding -> :class:`Saliency`.
        """
        names = list(findings) if findings is not None else self.findings
        f = torch.from_numpy(np.ascontiguousarray(frontal, dtype=np.uint8))[None, None]
        lat = torch.zeros_like(f)
        if lateral is not None:
            lat = torch.from_numpy(np.ascontiguousarray(lateral, dtype=np.uint8))[None, None]
        blocks = self.blocks(f, lat, torch.tensor([lateral is not None]))
        out = {}
        for name in names:
            cf, cl = self.cams(blocks, name)
            ml = cl[0] if (cl is not None and lateral is not None) else None
            shape_l = lateral.shape if ml is not None and lateral is not None else None
            hf, hl = scaled_heatmaps(cf[0], ml, frontal.shape, shape_l)
            p = float(blocks.probs[0, self.findings.index(name)])
            out[name] = Saliency(name, p, hf, hl, evidence_share(cf[0], ml))
        return out


def evidence_share(frontal_map: np.ndarray, lateral_map: np.ndarray | None) -> float:
    """The frontal view's share of the positive Grad-CAM mass (NaN when there is none)."""
    mf = float(np.maximum(frontal_map, 0).sum())
    ml = float(np.maximum(lateral_map, 0).sum()) if lateral_map is not None else 0.0
    return mf / (mf + ml) if mf + ml > 0 else math.nan


def upsample(cam: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A Grad-CAM grid (h, w) bilinearly resized to an image's (H, W), float32."""
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    up = F.interpolate(t, size=tuple(shape[:2]), mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def scaled_heatmaps(
    frontal_map: np.ndarray,
    lateral_map: np.ndarray | None,
    frontal_shape: tuple[int, ...],
    lateral_shape: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Both views' maps at their images' resolutions, scaled together to [0, 1] by the larger
    maximum (all zeros when neither has positive evidence)."""
    hf = np.maximum(upsample(frontal_map, frontal_shape), 0)
    hl = None
    if lateral_map is not None:
        hl = np.maximum(upsample(lateral_map, lateral_shape or frontal_shape), 0)
    peak = max(float(hf.max()), float(hl.max()) if hl is not None else 0.0)
    if peak > 0:
        hf = hf / peak
        hl = hl / peak if hl is not None else None
    return hf.astype(np.float32), (hl.astype(np.float32) if hl is not None else None)


def overlay(
    image: np.ndarray, heatmap: np.ndarray, size: int | None = None, alpha: float = 0.5
) -> np.ndarray:
    """A heatmap coloured over its grey image.

    Args:
        image: uint8 (H, W) grey image.
        heatmap: float (h, w) in [0, 1] (resized to the image's shape when it differs).
        size: output side (the image is resized to ``size`` x ``size``; None: as it is).
        alpha: opacity of the colour where the heatmap is 1 (it fades with the heatmap, so
            cold areas show the image).

    Returns:
        uint8 (H, W, 3) RGB (or (size, size, 3)).
    """
    from matplotlib import colormaps  # a second of import time only where overlays are made

    grey = np.asarray(image, dtype=np.uint8)
    if size is not None and grey.shape != (size, size):
        grey = np.asarray(Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR))
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1)
    if heat.shape != grey.shape:
        heat = np.clip(upsample(heat, grey.shape), 0, 1)
    colour = colormaps[COLORMAP](heat)[..., :3]
    w = (alpha * heat)[..., None]
    rgb = (1 - w) * (grey[..., None] / 255.0) + w * colour
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) or (H, W) uint8 image (no metadata: same pixels, same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
