"""The two-branch DenseNet-121: a trunk per view, a fusion head, one logit per finding.

Inputs are single-channel radiographs normalised by :func:`normalize` (uint8 -> float). Each view
goes through a torchvision DenseNet-121 ``features`` trunk whose first convolution takes one
channel (from ImageNet weights by summing the RGB kernels), then ReLU + global average pooling
(as torchvision's own head does). The two 1024-d vectors are fused:

- ``concat``: ``[frontal, lateral * has_lateral, has_lateral]`` -> the lateral features of a study
  without a lateral view are zeroed and a 0/1 indicator tells the head they are absent;
- ``mean`` / ``max``: HeMIS-style pooling over the views that are present (a study without a
  lateral view gets its frontal features unchanged).

then dropout and a linear layer (one logit per finding). ``frontal_only`` builds no lateral
branch at all and ignores the lateral input: the ablation baseline. In training, view dropout
hides a present lateral view with probability ``view_dropout`` so the head also learns to cope
without it, and the lateral trunk only runs on the studies whose lateral view is kept (missing
views cost no compute and do not pollute the trunk's batch-norm statistics). In eval mode both
trunks run on the whole batch with fixed shapes, which keeps the graph traceable for export.

Checkpoints (``models/best.pt``) are ``{"model": state_dict, "meta": {...plain types...}}`` and
load with ``torch.load(weights_only=True)`` through :func:`load_model`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import field_validator
from torch import nn
from torchvision.models import DenseNet121_Weights, densenet121

from pipelines.config import StageParams
from pipelines.errors import CheckpointError
from pipelines.labels import FINDINGS

#: Grey-level normalisation, in [0, 1] units: the means of ImageNet's RGB mean / std, so that
#: summing the RGB kernels of an ImageNet first convolution sees inputs on the scale it was
#: trained on. ``normalize(x) = (x / 255 - PIXEL_MEAN) / PIXEL_STD``.
PIXEL_MEAN: float = 0.449
PIXEL_STD: float = 0.226
FEATURE_DIM = 1024  # DenseNet-121's pooled feature width
# Older torchvision DenseNet checkpoints name layers ``norm.1``; today's modules say ``norm1``.
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)

Fusion = Literal["concat", "mean", "max"]


class ModelParams(StageParams):
    """Architecture params (the ``train.model`` section of ``params.yaml``).

    Attributes:
        weights: ``none`` (random init), ``imagenet`` (torchvision's ImageNet weights, which it
            downloads once into ``$TORCH_HOME``) or a local ``.pth`` path holding a torchvision
            DenseNet-121 state dict (3- or 1-channel first conv; ``classifier.*`` is ignored).
        fusion: ``concat``, ``mean`` or ``max`` (see the module docstring).
        dropout: dropout before the final linear layer.
        shared_weights: one trunk for both views instead of one per view.
        frontal_only: build and use the frontal branch only (the ablation).
        view_dropout: in training, chance of hiding a present lateral view.
        memory_efficient: torchvision's checkpointed dense layers (less memory, ~20% slower).
    """

    weights: str = "none"
    fusion: Fusion = "concat"
    dropout: float = 0.2
    shared_weights: bool = False
    frontal_only: bool = False
    view_dropout: float = 0.0
    memory_efficient: bool = False

    @field_validator("dropout", "view_dropout")
    @classmethod
    def _probability(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"must be in [0, 1), got {value}")
        return value


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] (B, 1, H, W) -> float32 ``(x / 255 - PIXEL_MEAN) / PIXEL_STD``."""
    return (x.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD


def to_model_input(x: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 (B, 1, H, W) -> normalised float, resized to ``size`` (bilinear, antialiased).

    The one preprocessing path of training, evaluation and export: ``meta["size"]`` of a
    checkpoint is the ``size`` it was trained with.
    """
    x = normalize(x)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x


def _fix_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        match = _LEGACY_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision DenseNet-121 state dict from ``path``, as ``features.*`` keys."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found (train.model.weights)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        raise CheckpointError(f"{path}: not a loadable weights file ({exc})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a DenseNet-121 state dict (name -> tensor)")
    state = _fix_legacy_keys(state)
    if not any(k.startswith("features.") for k in state):  # a bare ``features`` state dict
        state = {f"features.{k}": v for k, v in state.items()}
    return state


def _one_channel_conv(conv: nn.Conv2d, pretrained: bool) -> nn.Conv2d:
    """The first convolution for grey input: RGB kernels summed when pretrained, else fresh."""
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        if pretrained:
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        else:
            nn.init.kaiming_normal_(new.weight)
    return new


def densenet_trunk(weights: str = "none", memory_efficient: bool = False) -> nn.Sequential:
    """A single-channel DenseNet-121 feature extractor: ``(B, 1, H, W) -> (B, 1024)``.

    Args:
        weights: ``none``, ``imagenet`` or a local torchvision DenseNet-121 state dict path.
        memory_efficient: torchvision's checkpointed dense layers.

    Raises:
        CheckpointError: the weights file is missing, unreadable or not a DenseNet-121.
    """
    if weights == "imagenet":
        net = densenet121(
            weights=DenseNet121_Weights.IMAGENET1K_V1, memory_efficient=memory_efficient
        )
    else:
        net = densenet121(weights=None, memory_efficient=memory_efficient)
        if weights != "none":
            path = Path(weights)
            state = {k: v for k, v in _read_weights_file(path).items() if k.startswith("features.")}
            conv0 = state.get("features.conv0.weight")
            if conv0 is not None and conv0.ndim == 4 and conv0.shape[1] == 1:
                state["features.conv0.weight"] = conv0.expand(-1, 3, -1, -1) / 3.0
            try:
                net.load_state_dict(state, strict=False)
            except RuntimeError as exc:
                raise CheckpointError(f"{path}: does not fit DenseNet-121 ({exc})") from exc
            missing = [
                k
                for k in net.features.state_dict()
                if f"features.{k}" not in state and not k.endswith("num_batches_tracked")
            ]
            if missing:
                raise CheckpointError(
                    f"{path}: not a DenseNet-121 state dict ({len(missing)} trunk tensors "
                    f"missing, e.g. {missing[0]})"
                )
    features = net.features
    features.conv0 = _one_channel_conv(features.conv0, pretrained=weights != "none")
    return nn.Sequential(features, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


class DualViewDenseNet(nn.Module):
    """Frontal + lateral DenseNet-121 trunks, a fusion head, one logit per finding.

    Args:
        params: architecture params.
        num_findings: number of outputs.

    Raises:
        CheckpointError: from :func:`densenet_trunk`.
    """

    def __init__(self, params: ModelParams, num_findings: int = len(FINDINGS)):
        super().__init__()
        self.fusion: str = "frontal" if params.frontal_only else params.fusion
        self.view_dropout = params.view_dropout
        self.frontal_encoder = densenet_trunk(params.weights, params.memory_efficient)
        self.lateral_encoder: nn.Module | None = None
        if not params.frontal_only and not params.shared_weights:
            self.lateral_encoder = densenet_trunk(params.weights, params.memory_efficient)
        width = {"concat": 2 * FEATURE_DIM + 1}.get(self.fusion, FEATURE_DIM)
        self.dropout = nn.Dropout(params.dropout)
        self.head = nn.Linear(width, num_findings)

    def _lateral_trunk(self) -> nn.Module:
        return self.frontal_encoder if self.lateral_encoder is None else self.lateral_encoder

    def _lateral_features(
        self, lateral: torch.Tensor, present: torch.Tensor, like: torch.Tensor
    ) -> torch.Tensor:
        trunk = self._lateral_trunk()
        if not self.training:  # fixed shapes: traceable, and eval-mode BN is per sample
            return trunk(lateral)
        keep = present.nonzero().squeeze(1)
        feats = trunk(lateral.index_select(0, keep))  # an empty batch still touches every param
        return like.new_zeros(like.shape[0], feats.shape[1]).index_copy(0, keep, feats)

    def view_features(
        self, frontal: torch.Tensor, lateral: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each view's pooled trunk features (B, 1024), in eval mode (lateral None for a
        frontal-only model): what :meth:`fuse` takes, and what the out-of-distribution gate
        (:mod:`pipelines.ood`) measures. In eval mode ``fuse(*view_features(f, l), mask)``
        equals ``forward(f, l, mask)``."""
        f = self.frontal_encoder(frontal)
        return f, (None if self.fusion == "frontal" else self._lateral_trunk()(lateral))

    def forward(
        self, frontal: torch.Tensor, lateral: torch.Tensor, has_lateral: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, F) from normalised views (B, 1, H, W) and the lateral mask (B,) bool."""
        f = self.frontal_encoder(frontal)
        if self.fusion == "frontal":
            return self.fuse(f, None, has_lateral)
        present = has_lateral.to(device=f.device, dtype=torch.bool).reshape(-1)
        if self.training and self.view_dropout > 0:
            present = present & (torch.rand(present.shape, device=f.device) >= self.view_dropout)
        return self.fuse(f, self._lateral_features(lateral, present, f), present)

    def fuse(
        self, f: torch.Tensor, lat: torch.Tensor | None, present: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, F) from the views' pooled features (B, 1024) and which laterals count.

        ``lat`` is ignored (may be None) by a frontal-only model. :mod:`pipelines.explain`
        calls it with features it computed from each trunk's last dense block.
        """
        if self.fusion == "frontal":
            return self.head(self.dropout(f))
        assert lat is not None, "a two-view model needs the lateral features"
        m = present.to(device=f.device, dtype=f.dtype).reshape(-1, 1)
        if self.fusion == "concat":
            fused = torch.cat([f, lat * m, m], dim=1)
        elif self.fusion == "mean":
            fused = (f + lat * m) / (1.0 + m)
        else:  # max over the views present
            fused = torch.where(m.bool(), torch.maximum(f, lat), f)
        return self.head(self.dropout(fused))


def build_model(params: ModelParams, num_findings: int = len(FINDINGS)) -> DualViewDenseNet:
    """The model described by ``params`` (weights loaded as ``params.weights`` says).

    Raises:
        CheckpointError: the weights file is missing or does not fit.
    """
    return DualViewDenseNet(params, num_findings)


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[DualViewDenseNet, dict[str, Any]]:
    """A trained model in eval mode and its checkpoint's ``meta`` (plain types).

    The architecture is rebuilt from ``meta["model_params"]`` with ``weights: none`` (nothing is
    downloaded); ``meta`` also holds ``findings``, ``size`` (the input size to resize to),
    ``epoch``, ``val_macro_auroc`` and the run's ``train`` params.

    Args:
        path: a checkpoint written by the train stage (``models/best.pt``).
        map_location: where to put the weights.

    Raises:
        CheckpointError: missing file, not a cxr-dag checkpoint, or weights that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run the train stage first")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a loadable checkpoint ({exc})") from exc
    if not (isinstance(ckpt, dict) and "model" in ckpt and "meta" in ckpt):
        raise CheckpointError(f"{path}: not a cxr-dag checkpoint (expects 'model' and 'meta')")
    meta = ckpt["meta"]
    try:
        params = ModelParams.model_validate({**meta["model_params"], "weights": "none"})
        model = build_model(params, len(meta["findings"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not describe this model ({exc})") from exc
    return model.to(map_location).eval(), meta
