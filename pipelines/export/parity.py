"""Parity: every exported file against the eager module on the held-out test studies.

Every exported file is loaded back through the same runtime code as ``cxr predict``
(:func:`pipelines.runners.load_runner`) and run on the test studies of ``data/prepared`` beside
the eager module (:func:`run_parity`): max / mean |Δprobability| and the test macro AUROC
difference (:func:`parity_figures`, on :func:`pipelines.evaluation.metrics.macro_auroc`) go to
``metrics/export.json``; beyond the params tolerances the stage fails with :class:`ParityError`
naming the format and the figure (:func:`check_parity`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.data import ShardDataset
from pipelines.errors import ExportError, ParityError
from pipelines.evaluation.metrics import macro_auroc
from pipelines.export.inference import stack_studies
from pipelines.ood import refusals
from pipelines.runners import Runner, Scores

if TYPE_CHECKING:
    from pipelines.export.stage import Tolerance


def parity_figures(
    reference: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    ood: tuple[np.ndarray, np.ndarray] | None = None,
    thresholds: dict[str, float] | None = None,
    has_lateral: np.ndarray | None = None,
) -> dict[str, float]:
    """Agreement of ``probs`` with ``reference`` on the same studies.

    Args:
        reference, probs: (N, F) probabilities of the eager and the exported model.
        labels: (N, F) test labels.
        ood: the gate's distances (N, 2) of the eager and the exported model, if gated.
        thresholds: the gate's thresholds (frontal, lateral), the scale of ``ood``'s figures.
        has_lateral: (N,) which studies were read with a lateral view (the refusal rule gates
            the lateral distance only there); None: all.

    Returns:
        ``max_abs_prob``, ``mean_abs_prob``, ``macro_auroc`` (exported), ``macro_auroc_eager``
        and ``auroc_drop`` (eager - exported; NaN when no finding is estimable); with ``ood``,
        ``max_ood_shift``: the largest |Δdistance| as a share of its view's threshold (what
        could move a refusal), and ``ood_refusals_changed``: test studies the exported model
        refuses or accepts unlike the eager one.
    """
    diff = np.abs(probs.astype(np.float64) - reference.astype(np.float64))
    eager, exported = macro_auroc(labels, reference), macro_auroc(labels, probs)
    out = {
        "max_abs_prob": float(diff.max()) if diff.size else 0.0,
        "mean_abs_prob": float(diff.mean()) if diff.size else 0.0,
        "macro_auroc": exported,
        "macro_auroc_eager": eager,
        "auroc_drop": eager - exported,
    }
    if ood is not None and thresholds:
        ref, got = (np.asarray(x, dtype=np.float64) for x in ood)
        scale = np.array([thresholds.get(v, np.inf) for v in ("frontal", "lateral")])
        out["max_ood_shift"] = float((np.abs(got - ref) / scale).max()) if ref.size else 0.0
        read = np.ones(len(ref), bool) if has_lateral is None else np.asarray(has_lateral)
        refused = [
            np.array([r is not None for r in refusals(d, read, thresholds)]) for d in (ref, got)
        ]
        out["ood_refusals_changed"] = int((refused[0] != refused[1]).sum())
    return out


def check_parity(figures: dict[str, dict[str, float]], tolerances: dict[str, Tolerance]) -> None:
    """Raise for the first format beyond its tolerance.

    Raises:
        ParityError: naming the format, the figure, its value and the bound.
    """
    problems = []
    for fmt, fig in figures.items():
        tol = tolerances[fmt]
        if not fig["max_abs_prob"] <= tol.max_abs_prob:  # NaN fails too
            problems.append(
                f"{fmt}: max |Δprobability| {fig['max_abs_prob']:.3g} > "
                f"tolerance {tol.max_abs_prob:.3g}"
            )
        if np.isfinite(fig["auroc_drop"]) and fig["auroc_drop"] > tol.max_auroc_drop:
            problems.append(
                f"{fmt}: test macro AUROC drop {fig['auroc_drop']:.4f} > "
                f"tolerance {tol.max_auroc_drop:.4f}"
            )
        if "max_ood_shift" in fig and not fig["max_ood_shift"] <= tol.max_ood_shift:
            problems.append(
                f"{fmt}: max Δ of the out-of-distribution distance {fig['max_ood_shift']:.3g} "
                f"of its threshold > tolerance {tol.max_ood_shift:.3g}"
            )
    if problems:
        raise ParityError("export parity failed: " + "; ".join(problems))


def run_parity(
    reference: Runner,
    runners: dict[str, Runner],
    dataset: ShardDataset,
    batch: int,
    limit: int = 0,
    thresholds: dict[str, float] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Every runner against ``reference`` on the studies of ``dataset`` (``thresholds``: the
    out-of-distribution gate's, for the figures of its distances).

    Returns:
        (figures per format, a summary: studies, with_lateral, seconds per format).

    Raises:
        ExportError: the dataset is empty.
    """
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    if n == 0:
        raise ExportError("export: no test studies in the prepared data to check parity on")
    outputs: dict[str, list[Scores]] = {k: [] for k in ["eager", *runners]}
    seconds = dict.fromkeys(outputs, 0.0)
    labels, read = [], []
    for start in range(0, n, batch):
        f, lat, has, y = stack_studies(dataset, np.arange(start, min(start + batch, n)))
        labels.append(y)
        read.append(has)
        for name, runner in [("eager", reference), *runners.items()]:
            t0 = time.perf_counter()
            outputs[name].append(runner(f, lat, has))
            seconds[name] += time.perf_counter() - t0
    y_all, has_lateral = np.concatenate(labels), np.concatenate(read)
    ref = _joined(outputs.pop("eager"))
    figures = {}
    for k, v in outputs.items():
        got = _joined(v)
        gated = ref.ood is not None and got.ood is not None
        ood = (ref.ood, got.ood) if gated else None
        figures[k] = parity_figures(
            ref.probabilities, got.probabilities, y_all, ood, thresholds, has_lateral
        )
    summary = {
        "studies": n,
        "with_lateral": int(has_lateral.sum()),
        "seconds_per_study": {k: v / n for k, v in seconds.items()},
    }
    return figures, summary


def _joined(parts: list[Scores]) -> Scores:
    """One :class:`Scores` of the batches' in order."""
    ood = [p.ood for p in parts]
    return Scores(
        np.concatenate([p.probabilities for p in parts]).astype(np.float32),
        None if any(o is None for o in ood) else np.concatenate(ood),
    )
