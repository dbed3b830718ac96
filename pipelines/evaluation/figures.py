"""The report's figures: matplotlib ``Figure`` objects (no pyplot state), PNGs as data URIs.

One function per figure of the HTML report, each from an :class:`Evaluation`: ROC, precision-
recall and reliability grids (one panel per finding), the AUROC forest plot and the lateral-view
gain plot. Layouts are fixed (no ``tight_layout`` / ``bbox_inches="tight"``: those re-measure
every tick label, which is slow for the grids). :func:`data_uri` renders a figure on the Agg
canvas as an embeddable PNG.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from pipelines.evaluation.summary import Evaluation

DUAL, FRONT, RAW = "#1f5fa8", "#d9822b", "#9a9a9a"
VERDICT_COLOURS = {"helps": "#2e7d32", "hurts": "#c62828", "neutral": "#6d6d6d"}


def data_uri(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (80 dpi), for an ``<img src>``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n: int, xlabel: str, ylabel: str) -> tuple[Figure, list[Any]]:
    """A 4-column grid of unit-square panels with shared, fixed ticks."""
    cols = 4
    rows = max(1, -(-n // cols))
    height = 2.9 * rows + 0.5
    fig = Figure(figsize=(3.0 * cols, height))
    grid = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    axes = list(grid.ravel())
    ticks = [0, 0.25, 0.5, 0.75, 1]
    labels = ["0", "", "0.5", "", "1"]
    for ax in axes:
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(ticks, labels)
        ax.set_yticks(ticks, labels)
        ax.tick_params(labelsize=7, labelbottom=True)
        ax.grid(color="#eeeeee", lw=0.6)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.subplots_adjust(
        left=0.06, right=0.99, bottom=0.55 / height, top=1 - 0.45 / height, wspace=0.12, hspace=0.45
    )
    fig.supxlabel(xlabel, fontsize=9, y=0.1 / height)
    fig.supylabel(ylabel, fontsize=9, x=0.01)
    return fig, axes


def _not_estimable_panel(ax: Any, name: str) -> None:
    ax.set_title(name, fontsize=8.5)
    ax.text(0.5, 0.5, "not estimable\n(one class only)", ha="center", va="center", fontsize=9)


def _fixed_margins(fig: Figure) -> None:
    h = fig.get_figheight()
    fig.subplots_adjust(left=0.2, right=0.97, bottom=0.6 / h, top=1 - 0.15 / h)


def figure_roc(ev: Evaluation) -> Figure:
    """ROC curves per finding: dual (solid) and frontal-only (dashed), Youden point marked."""
    fig, axes = _grid(len(ev.findings), "False positive rate (1 - specificity)", "Sensitivity")
    dual, front = ev.modes["dual"], ev.modes.get("frontal_only")
    scores = dual.discrimination.by_name()
    for ax, name in zip(axes, ev.findings, strict=False):
        if name not in dual.roc:
            _not_estimable_panel(ax, name)
            continue
        ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls=":")
        if front is not None and name in front.roc:
            r = front.roc[name]
            ax.plot(r["fpr"], r["tpr"], color=FRONT, lw=1.6, ls="--", label="frontal only")
        ax.plot(dual.roc[name]["fpr"], dual.roc[name]["tpr"], color=DUAL, lw=1.2, label="dual")
        op = next((o for o in dual.operating_points.get("youden", []) if o.finding == name), None)
        if op is not None and op.sensitivity.value is not None:
            ax.plot(1 - op.specificity.value, op.sensitivity.value, "o", color="black", ms=4)
        ax.set_title(f"{name}\nAUROC {scores[name].auroc.format(2)}", fontsize=8.5)
    axes[0].legend(fontsize=7, loc="lower right")
    return fig


def figure_pr(ev: Evaluation) -> Figure:
    """Precision-recall curves per finding, with the prevalence (chance) line."""
    fig, axes = _grid(len(ev.findings), "Recall (sensitivity)", "Precision (PPV)")
    dual, front = ev.modes["dual"], ev.modes.get("frontal_only")
    scores = dual.discrimination.by_name()
    for ax, name in zip(axes, ev.findings, strict=False):
        if name not in dual.pr:
            _not_estimable_panel(ax, name)
            continue
        prev = scores[name].prevalence or 0.0
        ax.axhline(prev, color="#bbbbbb", lw=0.8, ls=":")
        if front is not None and name in front.pr:
            r = front.pr[name]
            ax.step(r["recall"], r["precision"], color=FRONT, lw=1.6, ls="--")
        ax.step(dual.pr[name]["recall"], dual.pr[name]["precision"], color=DUAL, lw=1.2)
        ax.set_title(f"{name}\nAUPRC {scores[name].auprc.format(2)}", fontsize=8.5)
    return fig


def _reliability_line(ax: Any, rel: pd.DataFrame, colour: str, label: str | None) -> None:
    rel = rel[rel["count"] > 0]
    if len(rel):
        size = 8 + 60 * rel["count"] / rel["count"].max()
        ax.plot(rel["mean_predicted"], rel["observed"], color=colour, lw=1.0, label=label)
        ax.scatter(rel["mean_predicted"], rel["observed"], s=size, color=colour, zorder=3)


def figure_reliability(ev: Evaluation) -> Figure:
    """Reliability diagrams: observed frequency vs mean predicted probability per bin, of the
    raw probabilities (grey) and of the calibrated ones (blue), with their test ECEs."""
    fig, axes = _grid(len(ev.findings), "Mean predicted probability (bin)", "Observed frequency")
    dual = ev.modes["dual"]
    compare = dual.ece_compare
    for k, (ax, name) in enumerate(zip(axes, ev.findings, strict=False)):
        ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls=":")
        if name in dual.reliability_raw and dual.calibration is not None:
            _reliability_line(ax, dual.reliability_raw[name], RAW, "raw" if k == 0 else None)
        _reliability_line(ax, dual.reliability[name], DUAL, "calibrated" if k == 0 else None)
        title = f"{name}\nECE {dual.ece[name].format(3)}"
        if compare is not None and dual.calibration is not None:
            title = f"{name}\nECE {compare.before[name].format(2)} -> {dual.ece[name].format(2)}"
        ax.set_title(title, fontsize=8)
        if k == 0 and dual.calibration is not None:
            ax.legend(fontsize=7, loc="upper left")
    return fig


_FOREST_LABELS = {"dual": "both views", "frontal_only": "lateral view masked"}


def figure_forest(ev: Evaluation) -> Figure:
    """Per-finding AUROC with CIs (dual and frontal-only) and the macro mean."""
    names = [*ev.findings, "Macro mean"]
    fig = Figure(figsize=(7.5, 0.36 * len(names) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    modes = [("dual", DUAL, -0.15), ("frontal_only", FRONT, 0.15)]
    for mode, colour, offset in modes:
        if mode not in ev.modes:
            continue
        disc = ev.modes[mode].discrimination
        ests = [f.auroc for f in disc.findings] + [disc.macro_auroc]
        for i, est in enumerate(ests):
            yy = len(names) - 1 - i + offset
            if est.value is None:
                if mode == "dual":
                    ax.text(
                        0.52,
                        yy - offset,
                        "not estimable (one class only)",
                        fontsize=7.5,
                        va="center",
                        color="#8a6d3b",
                    )
                continue
            if est.lower is not None:
                ax.plot([est.lower, est.upper], [yy, yy], color=colour, lw=1.5)
            label = _FOREST_LABELS[mode] if i == 0 else None
            ax.plot(est.value, yy, "o", color=colour, ms=4, label=label, clip_on=False)
    ax.axvline(0.5, color="#999999", lw=0.8, ls=":")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names[::-1], fontsize=8)
    lows = [
        e.lower if e.lower is not None else e.value
        for mode in ev.modes.values()
        for e in [*(f.auroc for f in mode.discrimination.findings), mode.discrimination.macro_auroc]
        if e.value is not None
    ]
    ax.set_xlim(min([0.45, *(v - 0.02 for v in lows)]), 1.02)  # a point at 1.0 is not clipped
    ax.axvline(1.0, color="#cccccc", lw=0.6)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel(f"AUROC with {ev.params.ci_level:.0%} CI (patient bootstrap)", fontsize=9)
    # above the axes, where it covers no row (inside, it hid the macro mean)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    ax.grid(axis="x", color="#eeeeee", lw=0.6)
    h = fig.get_figheight()
    fig.subplots_adjust(left=0.2, right=0.97, bottom=0.6 / h, top=1 - 0.45 / h)
    return fig


def figure_lateral_gain(ev: Evaluation) -> Figure | None:
    """Paired AUROC differences (dual - frontal-only) with CIs, coloured by verdict.

    Returns:
        The figure, or None when the modes were not compared.
    """
    if not ev.paired:
        return None
    ests = [(d.finding, d.delta, d.verdict) for d in ev.paired]
    ests.append(("Macro mean", ev.paired_macro, ev.macro_verdict()))
    fig = Figure(figsize=(7.5, 0.36 * len(ests) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    n = len(ests)
    for i, (_, est, verdict) in enumerate(ests):
        yy = n - 1 - i
        if est is None or est.value is None:
            ax.text(
                0.02,
                yy,
                "not estimable",
                fontsize=7.5,
                va="center",
                color="#8a6d3b",
                transform=ax.get_yaxis_transform(),
            )
            continue
        colour = VERDICT_COLOURS.get(verdict, "#6d6d6d")
        if est.lower is not None:
            ax.plot([est.lower, est.upper], [yy, yy], color=colour, lw=1.6)
        ax.plot(est.value, yy, "o", color=colour, ms=4)
    ax.axvline(0, color="#555555", lw=0.8)
    ax.set_yticks(range(n))
    ax.set_yticklabels([e[0] for e in ests][::-1], fontsize=8)
    ax.set_xlabel(
        "AUROC difference: dual view minus frontal only (paired bootstrap CI)", fontsize=9
    )
    ax.grid(axis="x", color="#eeeeee", lw=0.6)
    _fixed_margins(fig)
    return fig
