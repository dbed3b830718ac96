"""Test-time augmentation (TTA): a study's probabilities averaged over a few seeded views.

With ``evaluate.tta_views: K`` (0: off), a study is scored ``K + 1`` times: as it is, and under
``K`` fixed draws of the training augment policy (:class:`pipelines.augment.AugmentPolicy`:
flip, rotation, shift, scale, brightness, contrast, gamma; no noise). The probabilities are the
mean of those ``K + 1`` passes. The draws are the same for every study (draw ``k`` of the policy
seeded by ``base.seed`` and the policy's version; its own draw per view), so a study's score
does not depend on which batch or which run it is in.

Where each part lives:

- evaluate scores val and test both ways (:func:`augment_views` on the shard batches), keeps the
  single-pass probabilities beside the TTA ones, and reports whether TTA helps (paired AUROC
  difference, :mod:`pipelines.evaluation.summary`). Calibration and thresholds are then fitted
  on the TTA scores, since those are what ``cxr predict`` produces.
- ``thresholds.json`` and the model card carry the draws (:func:`draws_to_json`);
  ``cxr predict`` and the scoring flow wrap the exported model with :func:`tta_runner`, which
  applies the same :func:`augment_views` (PyTorch is imported for it: the transforms are
  torchvision's, as in training).
- The out-of-distribution gate's distances are those of the pass on the image as it is.

The pixels: a view is augmented from its uint8 image by :func:`pipelines.augment.transform` and
rounded back to uint8, exactly what the offline augment stage writes for the same draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.runners import Runner, Scores

if TYPE_CHECKING:
    import torch

    from pipelines.augment import AugmentParams, Draw

#: What seeds the TTA draws in place of a study key (draw ``k`` is the policy's copy ``k``).
TTA_KEY = "cxr-test-time-augmentation"
VIEWS: tuple[str, str] = ("frontal", "lateral")
RULE = (
    "probabilities = mean over the study as it is and one pass per draw (each view under its "
    "draw: pipelines.augment.transform, no noise, rounded to uint8); the calibration maps and "
    "thresholds were fitted on these means; the gate uses the first pass"
)

#: One TTA view: each view's draw.
ViewDraws = dict[str, "Draw"]


def tta_draws(params: AugmentParams, seed: int, views: int) -> list[ViewDraws]:
    """The ``views`` draws of the augment policy TTA uses (noise left out).

    Args:
        params: the ``augment`` params (the policy and its version).
        seed: ``base.seed``.
        views: how many augmented views (0: none).
    """
    from pipelines.augment import AugmentPolicy

    policy = AugmentPolicy(params, seed)
    return [{v: policy.draw(TTA_KEY, k, v) for v in VIEWS} for k in range(1, views + 1)]


def draws_to_json(draws: Sequence[ViewDraws]) -> list[dict[str, dict[str, Any]]]:
    """The draws as JSON-ready dicts (``noise_seed`` dropped: TTA adds no noise)."""
    return [{v: _draw_json(d[v]) for v in VIEWS} for d in draws]


def _draw_json(draw: Draw) -> dict[str, Any]:
    return {
        "angle": draw.angle,
        "translate": list(draw.translate),
        "scale": draw.scale,
        "flip": draw.flip,
        "brightness": draw.brightness,
        "contrast": draw.contrast,
        "gamma": draw.gamma,
    }


def draws_from_json(data: Any) -> list[ViewDraws]:
    """Draws back from :func:`draws_to_json`'s form.

    Raises:
        ValueError: not a list of ``{frontal: draw, lateral: draw}`` with every field.
    """
    if not isinstance(data, list):
        raise ValueError("test-time augmentation: expected a list of draws")
    out = []
    for i, item in enumerate(data):
        try:
            out.append({v: _draw_of(item[v]) for v in VIEWS})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"test-time augmentation: draw {i} is malformed ({exc})") from exc
    return out


def _draw_of(d: dict[str, Any]) -> Draw:
    from pipelines.augment import Draw

    tx, ty = (float(x) for x in d["translate"])
    values = {k: float(d[k]) for k in ("angle", "scale", "brightness", "contrast", "gamma")}
    if not all(np.isfinite(list(values.values()))) or values["scale"] <= 0:
        raise ValueError("non-finite value or scale <= 0")
    return Draw(translate=(tx, ty), flip=bool(d["flip"]), noise_seed=0, **values)


def augment_views(x: torch.Tensor, draw: Draw) -> torch.Tensor:
    """A batch of uint8 (B, 1, S, S) views under one draw, as uint8 (blank views stay blank)."""
    import torch

    from pipelines.augment import transform

    y = transform(x.float().div(255.0), draw)
    return y.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def tta_runner(runner: Runner, draws: Sequence[ViewDraws]) -> Runner:
    """``runner`` with test-time augmentation: the mean probabilities over the study as it
    is and each draw; the gate's distances of the first pass.

    Args:
        runner: an exported model's runner (:func:`pipelines.runners.load_runner`).
        draws: from the model card (:func:`draws_from_json`).
    """
    if not draws:
        return runner

    def run(frontal: np.ndarray, lateral: np.ndarray, has_lateral: np.ndarray) -> Scores:
        import torch

        first = runner(frontal, lateral, has_lateral)
        total = first.probabilities.astype(np.float64)
        f = torch.from_numpy(np.ascontiguousarray(frontal))
        lat = torch.from_numpy(np.ascontiguousarray(lateral))
        for d in draws:
            out = runner(
                augment_views(f, d["frontal"]).numpy(),
                augment_views(lat, d["lateral"]).numpy(),
                has_lateral,
            )
            total += out.probabilities
        return Scores((total / (len(draws) + 1)).astype(np.float32), first.ood)

    return run
