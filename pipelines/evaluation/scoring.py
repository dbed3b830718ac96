"""Scoring prepared studies with the checkpoint: the evaluate stage's predictions table.

:func:`score_dataset` gives each study's probabilities with both views and with the lateral
view masked (and, with test-time augmentation, the means over the draws of :mod:`pipelines.tta`
beside the single passes), plus each view's pooled features for the out-of-distribution gate;
:func:`predictions_frame` turns one split's scores into rows of the predictions table
(:mod:`pipelines.evaluation.table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from pipelines.data import ShardDataset
from pipelines.evaluation.table import OPTIONAL_COLUMNS, SINGLE_PREFIX
from pipelines.model import to_model_input
from pipelines.tta import ViewDraws, augment_views


@dataclass
class SplitScores:
    """A split scored by the checkpoint: probabilities and each view's pooled features.

    Attributes:
        dual: (N, F) probabilities with both views (the TTA mean when TTA is on).
        masked: (N, F) probabilities with the lateral view hidden (None: not asked for).
        frontal, lateral: (N, D) features of each view's trunk (lateral None for a model
            without a lateral branch; rows of studies without a lateral hold the blank image's);
            of the images as they are, also with TTA.
        has_lateral: (N,) which studies have a lateral view.
        single, single_masked: with TTA, ``dual`` and ``masked`` of the images as they are
            (None without TTA).
    """

    dual: np.ndarray
    masked: np.ndarray | None
    frontal: np.ndarray
    lateral: np.ndarray | None
    has_lateral: np.ndarray
    single: np.ndarray | None = None
    single_masked: np.ndarray | None = None


def probabilities(
    model: torch.nn.Module, f: torch.Tensor, lat: torch.Tensor | None, present: torch.Tensor
) -> np.ndarray:
    """The model's probabilities from each view's features (``present``: which laterals)."""
    return torch.sigmoid(model.fuse(f, lat, present).float()).cpu().numpy()


def _score_batch(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    size: int | None,
    device: torch.device,
    frontal_only: bool,
    draws: Sequence[ViewDraws],
) -> dict[str, np.ndarray]:
    """One batch's probabilities (both modes; with TTA the means and the single passes) and
    the features of its images as they are."""
    frontal, lateral = batch["frontal"].to(device), batch["lateral"].to(device)
    has_lateral = batch["has_lateral"].to(device=device, dtype=torch.bool)
    hidden = torch.zeros_like(has_lateral)
    out: dict[str, np.ndarray] = {"has": has_lateral.cpu().numpy()}
    sums: dict[str, np.ndarray] = {}
    for k, d in enumerate([None, *draws]):
        views = (frontal, lateral) if d is None else (
            augment_views(frontal, d["frontal"]), augment_views(lateral, d["lateral"])
        )  # fmt: skip
        f, lat = model.view_features(*(to_model_input(v, size) for v in views))
        if k == 0:
            out["f"] = f.float().cpu().numpy()
            if lat is not None:
                out["lat"] = lat.float().cpu().numpy()
        passes = {"dual": probabilities(model, f, lat, has_lateral)}
        if frontal_only:
            passes["masked"] = probabilities(model, f, lat, hidden)
        for key, p in passes.items():
            sums[key] = p.astype(np.float64) if k == 0 else sums[key] + p
            if k == 0 and draws:
                out[f"single_{key}"] = p
    for key, total in sums.items():
        out[key] = (total / (len(draws) + 1)).astype(np.float32)
    return out


@torch.inference_mode()
def score_dataset(
    model: torch.nn.Module,
    dataset: ShardDataset,
    size: int | None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    workers: int = 0,
    frontal_only: bool = True,
    draws: Sequence[ViewDraws] = (),
) -> SplitScores:
    """Probabilities of every study, with both views and with the lateral view masked, and
    each view's features.

    One trunk pass per view, batch (and TTA draw): the masked mode is the fusion of the same
    features with the lateral marked absent, which in eval mode is exactly the model's output
    for a blank lateral image it is told is absent (the fusion zeroes an absent lateral's
    features).

    Args:
        model: in eval mode, with ``view_features(frontal, lateral)`` and
            ``fuse(f, lat, present) -> logits`` (:class:`pipelines.model.DualViewDenseNet`).
        dataset: the studies (uint8 views).
        size: input size of the model (views are resized when the shards differ).
        batch_size: studies per pass.
        device: where to run.
        workers: DataLoader workers.
        frontal_only: also score with the lateral view masked.
        draws: test-time augmentation (:mod:`pipelines.tta`): the probabilities are the mean
            over the images as they are and under each draw; empty: none.
    """
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    parts: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        for key, value in _score_batch(model, batch, size, device, frontal_only, draws).items():
            parts.setdefault(key, []).append(value)
    width = len(dataset.findings)

    def stack(key: str, w: int = width) -> np.ndarray:  # no batch (an empty split): no rows
        return np.concatenate(parts[key]) if key in parts else np.zeros((0, w), np.float32)

    return SplitScores(
        dual=stack("dual"),
        masked=stack("masked") if frontal_only else None,
        frontal=stack("f", 0),
        lateral=stack("lat", 0) if "lat" in parts else None,
        has_lateral=np.concatenate(parts["has"]) if "has" in parts else np.zeros(0, bool),
        single=stack("single_dual") if draws else None,
        single_masked=stack("single_masked") if draws and frontal_only else None,
    )


def predictions_frame(
    dataset: ShardDataset,
    split: str,
    dual: np.ndarray,
    masked: np.ndarray | None,
    single: tuple[np.ndarray | None, np.ndarray | None] | None = None,
) -> pd.DataFrame:
    """The predictions rows of one split: one per study and mode (keys, source, labels and
    probabilities of the dataset's findings).

    Args:
        dataset: the split's studies.
        split: its name.
        dual, masked: each mode's probabilities (``masked`` None: no frontal-only rows).
        single: with test-time augmentation, each mode's single-pass probabilities, written as
            ``s_<finding>`` beside the TTA means in ``p_<finding>``; None: no TTA.
    """
    meta, findings = dataset.meta, dataset.findings
    base = pd.DataFrame(
        {
            "split": split,
            "study_key": meta["study_key"].astype(str).to_numpy(),
            "patient_key": meta["patient_key"].astype(str).to_numpy(),
            "has_lateral": dataset.has_lateral,
        }
    )
    for column in OPTIONAL_COLUMNS:  # the source and the subgroup attributes, where recorded
        if column in meta:
            base[column] = meta[column].astype(str).to_numpy()
    labels = pd.DataFrame(dataset.labels, columns=[f"y_{f}" for f in findings])
    frames = []
    for m, (mode, probs) in enumerate((("dual", dual), ("frontal_only", masked))):
        if probs is None:
            continue
        parts = [
            base.assign(mode=mode),
            labels,
            pd.DataFrame(probs, columns=[f"p_{f}" for f in findings]),
        ]
        if single is not None and single[m] is not None:
            parts.append(pd.DataFrame(single[m], columns=[f"{SINGLE_PREFIX}{f}" for f in findings]))
        frames.append(pd.concat(parts, axis=1))
    return pd.concat(frames, ignore_index=True)
