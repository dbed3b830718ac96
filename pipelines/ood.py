"""The out-of-distribution gate: refuse an input unlike the chest radiographs the model learnt.

A model answers for any pixels it is given; on a CT slice, a photograph or a knee it still
returns fourteen probabilities. The gate measures, per view, how far the trained model's own
pooled features (the penultimate layer of that view's DenseNet trunk) lie from those of the
training studies: the **Mahalanobis distance** to the training features' mean under their
covariance, shrunk towards a scaled identity (1,024 features outnumber the studies). A study is
refused when its frontal distance, or its lateral distance when it has a lateral view, exceeds
that view's threshold.

Why this score: on the demo model it separated the in-distribution test studies from every real
out-of-distribution image tried (CT, MR, ultrasound, nuclear medicine, photographs) with AUROC
1.0, where the energy and max-logit scores of the outputs reached about 0.5: a model trained on
chest radiographs gives a CT slice unremarkable logits, but not unremarkable features. The
evaluate stage measures all three on every run (:mod:`pipelines.evaluation.gate`).

The shrinkage is a parameter (``evaluate.ood_shrinkage``, 0.1): Ledoit-Wolf's estimate (0.008
on the demo model) fits the training studies so closely that held-out studies lie 2.5 times
further away than training ones, and the validation tail then under-states the test tail (2.3 %
of the demo's test studies refused against 0.5 % aimed at); with 0.1 the training and
validation distances agree better, 1.1 % are refused, and the real out-of-distribution images
stay as far beyond the thresholds (at least 1.6 times the frontal threshold, 2.8 times the
lateral one).

Thresholds are fitted on the validation split, never on test: per view, the validation
distances' log is modelled as normal and the threshold is its upper ``1 - fit_refusal / 2``
quantile (the two views share the refusal budget). A parametric tail is steadier than the
maximum of a couple of hundred validation studies, which is all an empirical 99.75 % quantile
would be.

The gate runs inside the exported models (:class:`pipelines.export.inference.CXRInference`
computes the distances as a second output, :data:`pipelines.runners.OOD_OUTPUT`); the model
card carries the thresholds, and :func:`refusals` is the one decision rule that evaluate,
``cxr predict`` and the scoring flow apply. This module needs numpy only (scikit-learn to fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from pipelines.io import atomic_path

VIEWS: tuple[str, str] = ("frontal", "lateral")
METHOD = "mahalanobis"


@dataclass(frozen=True)
class ViewGate:
    """One view's training-feature statistics and threshold.

    Attributes:
        mean: (D,) mean of the training features.
        factor: (D, D) ``L`` with ``L @ L.T`` the shrunk precision matrix, so the squared
            distance is ``|| (x - mean) @ L ||^2`` (one matrix product in the exported graph).
        threshold: a squared distance above it is refused.
        n_train: training studies the statistics rest on.
    """

    mean: np.ndarray
    factor: np.ndarray
    threshold: float
    n_train: int

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(N,) squared Mahalanobis distances of (N, D) features."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) @ self.factor
        return np.einsum("ij,ij->i", z, z)


@dataclass(frozen=True)
class OodGate:
    """The fitted gate: per view its statistics and threshold (lateral absent for a model
    without a lateral branch), and the refusal rate the thresholds were fitted for."""

    views: dict[str, ViewGate]
    fit_refusal: float

    def distances(self, frontal: np.ndarray, lateral: np.ndarray | None) -> np.ndarray:
        """(N, 2) distances of both views' features (lateral 0 where no lateral gate)."""
        out = np.zeros((len(frontal), 2))
        out[:, 0] = self.views["frontal"].distances(frontal)
        if lateral is not None and "lateral" in self.views:
            out[:, 1] = self.views["lateral"].distances(lateral)
        return out

    def thresholds(self) -> dict[str, float]:
        """Per view, its threshold (what the model card carries)."""
        return {v: g.threshold for v, g in self.views.items()}

    def save(self, path: str | Path) -> None:
        """Write the statistics and thresholds as one ``.npz`` (numbers only, no PHI)."""
        arrays: dict[str, Any] = {"fit_refusal": np.float64(self.fit_refusal)}
        for v, g in self.views.items():
            arrays |= {f"{v}_mean": g.mean, f"{v}_factor": g.factor}
            arrays |= {f"{v}_threshold": np.float64(g.threshold), f"{v}_n": np.int64(g.n_train)}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> OodGate:
        """Read what :meth:`save` wrote.

        Raises:
            FileNotFoundError: no such file. KeyError: not a gate file.
        """
        with np.load(path, allow_pickle=False) as z:
            views = {
                v: ViewGate(
                    z[f"{v}_mean"], z[f"{v}_factor"], float(z[f"{v}_threshold"]), int(z[f"{v}_n"])
                )
                for v in VIEWS
                if f"{v}_mean" in z
            }
            return cls(views, float(z["fit_refusal"]))


def _statistics(train: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision factor ``L`` (``L @ L.T`` = the shrunk precision) of features."""
    from sklearn.covariance import ShrunkCovariance

    fit = ShrunkCovariance(shrinkage=shrinkage).fit(np.asarray(train, dtype=np.float64))
    return fit.location_, np.linalg.cholesky(fit.precision_)


def tail_threshold(distances: np.ndarray, refusal: float) -> float:
    """The upper ``1 - refusal`` quantile of a log-normal fitted to validation distances."""
    logs = np.log(np.maximum(np.asarray(distances, dtype=np.float64), 1e-12))
    z = NormalDist().inv_cdf(1 - refusal)
    return float(math.exp(logs.mean() + z * logs.std(ddof=1)))


def fit_gate(
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    fit_refusal: float = 0.005,
    shrinkage: float = 0.1,
) -> OodGate:
    """Fit each view's statistics on training features and its threshold on validation.

    Args:
        train, val: per view (``frontal``; ``lateral`` for a two-view model), the (N, D)
            features of the studies that have that view.
        fit_refusal: the share of validation studies the thresholds aim to refuse, split
            evenly between the views.
        shrinkage: the covariance's shrinkage towards a scaled identity (0: none, 1: all).

    Raises:
        ValueError: fewer than 2 training or validation studies of a view.
    """
    views = {}
    per_view = fit_refusal / len(train)
    for view, feats in train.items():
        held = val.get(view)
        if len(feats) < 2 or held is None or len(held) < 2:
            raise ValueError(f"ood gate: too few studies with a {view} view to fit it")
        gate = ViewGate(*_statistics(feats, shrinkage), threshold=0.0, n_train=len(feats))
        views[view] = replace(gate, threshold=tail_threshold(gate.distances(held), per_view))
    return OodGate(views, fit_refusal)


def refusals(
    distances: np.ndarray, has_lateral: np.ndarray, thresholds: dict[str, float]
) -> list[str | None]:
    """Per study, why it is refused (None: accepted): the one rule of evaluate and predict.

    Args:
        distances: (N, 2) squared distances (frontal, lateral) from the model's second output.
        has_lateral: (N,) whether the lateral view was read.
        thresholds: per view, the card's threshold (a view without one is not gated).
    """
    out: list[str | None] = []
    for d, lat in zip(np.asarray(distances, dtype=np.float64), has_lateral, strict=True):
        why = [
            f"the {view} view is unlike the model's training images (distance {d[i]:.0f} > "
            f"threshold {thresholds[view]:.0f})"
            for i, view in enumerate(VIEWS)
            if view in thresholds and (i == 0 or lat) and not d[i] <= thresholds[view]
        ]
        out.append("; ".join(why) or None)
    return out
