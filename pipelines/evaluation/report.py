"""The evaluation report, recomputed from saved predictions alone (no model needed).

Input: a predictions table (``outputs/evaluation/predictions.parquet``), one row per
(split, study, mode) with the columns of :data:`PREDICTION_COLUMNS` plus ``y_<finding>``
(1 / 0 / NaN) and ``p_<finding>`` (probability) for every finding. ``mode`` is ``dual`` (both
views) or ``frontal_only`` (the same model with the lateral view masked).

:func:`summarize` computes everything (:mod:`pipelines.evaluation.metrics`): per-finding AUROC /
AUPRC with patient-bootstrap CIs on the test split, macro and micro AUROC, validation-chosen
operating points applied to test, calibration, and the paired dual vs frontal-only AUROC
differences.
:func:`write_outputs` writes the DVC metrics JSON, the thresholds JSON, the curve CSVs (DVC
plots), a self-contained HTML report (figures as embedded PNGs, inline CSS, no network
resources) and a Markdown summary. :func:`render_report` does both into one folder: it is what
``cxr report --predictions FILE --out DIR`` runs.

No PHI: the report shows aggregates only; no key, path or free-text column of the predictions
reaches an output (unknown columns are dropped on input).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field
from sklearn.metrics import precision_recall_curve, roc_curve

from pipelines.config import StageParams
from pipelines.errors import ReportError
from pipelines.evaluation.metrics import (
    NOT_ESTIMABLE,
    DiscriminationReport,
    Estimate,
    OperatingPoint,
    PairedDifference,
    PatientBootstrap,
    apply_thresholds,
    class_counts,
    compute_roc_auc,
    expected_calibration_error,
    paired_auroc_difference,
    reliability_curve,
    sensitivity_threshold,
    verdict_of,
    youden_threshold,
)
from pipelines.io import atomic_path, write_json
from pipelines.labels import FINDINGS

log = logging.getLogger(__name__)

PREDICTION_COLUMNS: tuple[str, ...] = ("split", "study_key", "patient_key", "has_lateral", "mode")
MODES: tuple[str, ...] = ("dual", "frontal_only")
FRONTAL_ONLY_METHOD = (
    "the same trained model scores each study a second time with its lateral view hidden "
    "(has_lateral = False and a blank lateral image), exactly as it sees a study that has no "
    "lateral view"
)


class ReportParams(StageParams):
    """What the report computes (the metric part of the ``evaluate`` params section).

    Attributes:
        bootstrap_resamples: patient-level bootstrap resamples for every CI.
        seed: bootstrap seed.
        ci_level: CI coverage (0.95 = 95 % intervals).
        sensitivity_target: the second operating point: the highest validation threshold whose
            sensitivity reaches this.
        ece_bins: equal-width probability bins for the calibration error and diagrams.
        paired_subset: test studies of the dual vs frontal-only comparison: ``with_lateral``
            (those that have a lateral view: the only ones masking changes) or ``all``.
        min_positives: findings with fewer test positives are flagged "few positives".
    """

    bootstrap_resamples: int = Field(2000, ge=1)
    seed: int = 1337
    ci_level: float = Field(0.95, gt=0, lt=1)
    sensitivity_target: float = Field(0.9, gt=0, le=1)
    ece_bins: int = Field(10, ge=1, le=100)
    paired_subset: Literal["with_lateral", "all"] = "with_lateral"
    min_positives: int = Field(10, ge=0)


def report_params(params: ReportParams | Mapping[str, Any] | None) -> ReportParams:
    """``ReportParams`` from a model, or from a mapping (keys it does not know are ignored).

    Raises:
        ReportError: a known key has a bad value.
    """
    if params is None:
        return ReportParams()
    if isinstance(params, ReportParams):
        return params
    if isinstance(params, StageParams):
        params = params.model_dump()
    known = {k: v for k, v in dict(params).items() if k in ReportParams.model_fields}
    try:
        return ReportParams.model_validate(known)
    except ValueError as exc:
        raise ReportError(f"report params: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------


def prediction_findings(predictions: pd.DataFrame) -> list[str]:
    """Findings with both ``y_<f>`` and ``p_<f>`` columns, in :data:`FINDINGS` order first."""
    ys = {c[2:] for c in predictions.columns if c.startswith("y_")}
    ps = {c[2:] for c in predictions.columns if c.startswith("p_")}
    both = ys & ps
    return [f for f in FINDINGS if f in both] + sorted(both - set(FINDINGS))


def validate_predictions(predictions: pd.DataFrame, source: str = "predictions") -> pd.DataFrame:
    """Check a predictions table and keep only the columns the report uses.

    Raises:
        ReportError: missing columns, no dual-mode test rows, duplicate rows, probabilities
            outside [0, 1], labels other than 1 / 0 / NaN, or modes that cover different studies.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ReportError(f"{source}: missing columns {missing}")
    findings = prediction_findings(predictions)
    if not findings:
        raise ReportError(f"{source}: no y_<finding> / p_<finding> column pairs")
    cols = [*PREDICTION_COLUMNS, *(f"y_{f}" for f in findings), *(f"p_{f}" for f in findings)]
    df = predictions[cols].copy()
    df["split"] = df["split"].astype(str)
    df["mode"] = df["mode"].astype(str)
    df["has_lateral"] = df["has_lateral"].astype(bool)
    unknown = sorted(set(df["mode"]) - set(MODES))
    if unknown:
        raise ReportError(f"{source}: unknown mode(s) {unknown}; expected {list(MODES)}")
    if not ((df["split"] == "test") & (df["mode"] == "dual")).any():
        raise ReportError(f"{source}: no dual-mode rows of the test split to evaluate")
    dup = df.duplicated(["split", "mode", "study_key"])
    if dup.any():
        raise ReportError(f"{source}: {int(dup.sum())} duplicate (split, mode, study_key) rows")
    if df[["study_key", "patient_key"]].isna().any().any():
        raise ReportError(f"{source}: missing study_key or patient_key values")
    p = df[[f"p_{f}" for f in findings]].to_numpy(dtype=np.float64)
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ReportError(f"{source}: probabilities must be finite and within [0, 1]")
    y = df[[f"y_{f}" for f in findings]].to_numpy(dtype=np.float64)
    if (~np.isnan(y) & (y != 0) & (y != 1)).any():
        raise ReportError(f"{source}: labels must be 1, 0 or empty (NaN)")
    for split, part in df.groupby("split"):
        sets = [set(part.loc[part["mode"] == m, "study_key"]) for m in MODES]
        if all(sets) and sets[0] != sets[1]:
            raise ReportError(f"{source}: split {split}: dual and frontal_only rows differ")
    df.attrs = {k: v for k, v in predictions.attrs.items() if k in ("model", "frontal_only")}
    return df


def _split(df: pd.DataFrame, split: str, mode: str, order: pd.Index | None = None) -> pd.DataFrame:
    part = df[(df["split"] == split) & (df["mode"] == mode)].set_index("study_key")
    if order is not None and len(part):
        part = part.loc[order]
    return part.sort_index() if order is None else part


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


@dataclass
class ModeResult:
    """Everything computed for one scoring mode on the test split."""

    discrimination: DiscriminationReport
    thresholds: dict[str, dict[str, float | None]]
    operating_points: dict[str, list[OperatingPoint]]
    ece: dict[str, Estimate]
    reliability: dict[str, pd.DataFrame]
    roc: dict[str, pd.DataFrame]
    pr: dict[str, pd.DataFrame]


@dataclass
class Evaluation:
    """The report's content (see :func:`summarize`)."""

    findings: list[str]
    params: ReportParams
    counts: dict[str, int]
    modes: dict[str, ModeResult]
    paired: list[PairedDifference] | None = None
    paired_macro: Estimate | None = None
    paired_counts: dict[str, int] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _curves(y: np.ndarray, p: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    keep = ~np.isnan(y)
    if len(np.unique(y[keep])) < 2:
        return None
    fpr, tpr, thr = roc_curve(y[keep], p[keep])
    precision, recall, pthr = precision_recall_curve(y[keep], p[keep])
    roc = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.where(np.isinf(thr), np.nan, thr)})
    pr = pd.DataFrame(
        {"recall": recall, "precision": precision, "threshold": np.r_[pthr, np.nan]}
    ).iloc[::-1]
    return roc, pr.reset_index(drop=True)


def _mode_result(
    test: pd.DataFrame,
    val: pd.DataFrame,
    findings: list[str],
    boot: PatientBootstrap,
    params: ReportParams,
) -> ModeResult:
    ycols, pcols = [f"y_{f}" for f in findings], [f"p_{f}" for f in findings]
    y, p = test[ycols].to_numpy(np.float64), test[pcols].to_numpy(np.float64)
    level = params.ci_level
    disc = compute_roc_auc(y, p, boot, findings, level)
    thresholds: dict[str, dict[str, float | None]] = {}
    if len(val):
        yv, pv = val[ycols].to_numpy(np.float64), val[pcols].to_numpy(np.float64)
        vpos, vneg, _ = class_counts(yv)
        for f, name in enumerate(findings):
            thresholds[name] = {
                "youden": youden_threshold(yv[:, f], pv[:, f]),
                "sensitivity_target": sensitivity_threshold(
                    yv[:, f], pv[:, f], params.sensitivity_target
                ),
                "val_n_pos": int(vpos[f]),
                "val_n_neg": int(vneg[f]),
            }
    ops: dict[str, list[OperatingPoint]] = {}
    if thresholds:
        for rule in RULES:
            chosen = [thresholds[f][rule] for f in findings]
            ops[rule] = apply_thresholds(y, p, chosen, boot, findings, rule, level)
    ece, reliability, roc, pr = {}, {}, {}, {}
    for f, name in enumerate(findings):
        # ECE is a point estimate: it is biased upwards and resampling adds to the bias, so a
        # percentile interval can lie entirely above the estimate (seen on simulated data)
        point = expected_calibration_error(y[:, f], p[:, f], params.ece_bins)
        ece[name] = Estimate(float(point) if np.isfinite(point) else None, None, None)
        reliability[name] = reliability_curve(y[:, f], p[:, f], params.ece_bins)
        curves = _curves(y[:, f], p[:, f])
        if curves is not None:
            roc[name], pr[name] = curves
    return ModeResult(disc, thresholds, ops, ece, reliability, roc, pr)


def summarize(
    predictions: pd.DataFrame,
    params: ReportParams | Mapping[str, Any] | None = None,
    source: str = "predictions",
) -> Evaluation:
    """Compute the whole evaluation from a predictions table.

    Args:
        predictions: see the module docstring; extra columns are ignored.
        params: :class:`ReportParams` (or a mapping with its keys).
        source: name of the table in error messages (its file path).

    Raises:
        ReportError: the table is unusable (see :func:`validate_predictions`).
    """
    params = report_params(params)
    df = validate_predictions(predictions, source)
    findings = prediction_findings(df)
    test = _split(df, "test", "dual")
    val = _split(df, "val", "dual")
    boot = PatientBootstrap(test["patient_key"].to_numpy(), params.bootstrap_resamples, params.seed)
    counts = {
        "test_studies": len(test),
        "test_patients": boot.n_patients,
        "test_studies_with_lateral": int(test["has_lateral"].sum()),
        "val_studies": len(val),
        "val_patients": int(val["patient_key"].nunique()),
    }
    notes = []
    if not len(val):
        notes.append("No validation predictions: operating points were not chosen.")
    modes = {"dual": _mode_result(test, val, findings, boot, params)}
    evaluation = Evaluation(findings, params, counts, modes, model=dict(df.attrs.get("model", {})))
    front = _split(df, "test", "frontal_only", test.index)
    if len(front):
        front_val = _split(df, "val", "frontal_only", val.index if len(val) else None)
        modes["frontal_only"] = _mode_result(front, front_val, findings, boot, params)
        subset = (
            test["has_lateral"].to_numpy()
            if params.paired_subset == "with_lateral"
            else np.ones(len(test), bool)
        )
        if subset.any():
            ycols, pcols = [f"y_{f}" for f in findings], [f"p_{f}" for f in findings]
            sub_boot = boot.subset(subset)
            diffs, macro = paired_auroc_difference(
                test[ycols].to_numpy(np.float64)[subset],
                test[pcols].to_numpy(np.float64)[subset],
                front[pcols].to_numpy(np.float64)[subset],
                sub_boot,
                findings,
                params.ci_level,
            )
            evaluation.paired, evaluation.paired_macro = diffs, macro
            evaluation.paired_counts = {
                "studies": int(subset.sum()),
                "patients": sub_boot.n_patients,
            }
        else:
            notes.append("No test study has a lateral view: dual vs frontal-only not compared.")
    else:
        why = df.attrs.get("frontal_only")
        why = f" ({why})" if why and why != FRONTAL_ONLY_METHOD else ""
        notes.append(f"No frontal-only predictions{why}: dual vs frontal-only not compared.")
    evaluation.notes = notes
    return evaluation


# --------------------------------------------------------------------------------------------
# Machine-readable outputs
# --------------------------------------------------------------------------------------------


def _put(d: dict[str, Any], key: str, est: Estimate | None) -> None:
    if est is None or est.value is None:
        return
    d[key] = round(est.value, 6)
    if est.lower is not None:
        d[f"{key}_lo"] = round(est.lower, 6)
        d[f"{key}_hi"] = round(est.upper, 6)


def metrics_dict(ev: Evaluation) -> dict[str, Any]:
    """The DVC metrics: headline numbers at the top, then one block per finding.

    Not-estimable values are left out (the finding's ``status`` says why), never NaN or 0.5.
    """
    dual = ev.modes["dual"]
    out: dict[str, Any] = dict(ev.counts)
    out["bootstrap"] = {
        "unit": "patient",
        "resamples": ev.params.bootstrap_resamples,
        "ci_level": ev.params.ci_level,
        "seed": ev.params.seed,
    }
    _put(out, "macro_auroc", dual.discrimination.macro_auroc)
    _put(out, "micro_auroc", dual.discrimination.micro_auroc)
    eces = [e.value for e in dual.ece.values() if e.value is not None]
    if eces:
        out["macro_ece"] = round(float(np.mean(eces)), 6)
    out["findings_estimable"] = sum(f.status != NOT_ESTIMABLE for f in dual.discrimination.findings)
    if "frontal_only" in ev.modes:
        fo: dict[str, Any] = {}
        _put(fo, "macro_auroc", ev.modes["frontal_only"].discrimination.macro_auroc)
        _put(fo, "micro_auroc", ev.modes["frontal_only"].discrimination.micro_auroc)
        out["frontal_only"] = fo
    if ev.paired is not None:
        gain: dict[str, Any] = {"subset": ev.params.paired_subset, **ev.paired_counts}
        _put(gain, "macro_delta", ev.paired_macro)
        for verdict in ("helps", "hurts", "neutral"):
            gain[f"n_{verdict}"] = sum(d.verdict == verdict for d in ev.paired)
        out["lateral_gain"] = gain
    paired = {d.finding: d for d in ev.paired or []}
    per: dict[str, Any] = {}
    for row in dual.discrimination.findings:
        name = row.finding
        f: dict[str, Any] = {
            "status": row.status,
            "n_pos": row.n_pos,
            "n_neg": row.n_neg,
            "n_missing": row.n_missing,
        }
        _put(f, "auroc", row.auroc)
        _put(f, "auprc", row.auprc)
        _put(f, "ece", dual.ece[name])
        if "frontal_only" in ev.modes:
            _put(
                f,
                "frontal_only_auroc",
                ev.modes["frontal_only"].discrimination.by_name()[name].auroc,
            )
        if name in paired:
            _put(f, "lateral_delta", paired[name].delta)
            f["lateral_verdict"] = paired[name].verdict
        for rule, points in dual.operating_points.items():
            op = next(o for o in points if o.finding == name)
            if op.threshold is None:
                continue
            block: dict[str, Any] = {"threshold": round(op.threshold, 6)}
            for metric in ("sensitivity", "specificity", "ppv", "npv"):
                _put(block, metric, getattr(op, metric))
            f[rule] = block
        per[name] = f
    out["findings"] = per
    return out


def split_metrics(full: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split :func:`metrics_dict` into a headline file and a per-finding details file.

    The headline (``metrics/evaluate.json``) keeps ``dvc metrics show`` readable: counts, macro /
    micro AUROC with CIs, frontal-only and lateral-gain summaries, plus one AUROC and one
    lateral-view delta per finding (the string ``not estimable`` where there is none). The
    details (``metrics/evaluate_findings.json``) hold the bootstrap settings and every
    per-finding number: CIs, counts, status, ECE, operating points.
    """
    headline = {k: v for k, v in full.items() if k not in ("findings", "bootstrap")}
    findings = full.get("findings", {})
    headline["auroc"] = {k: f.get("auroc", f["status"]) for k, f in findings.items()}
    if "lateral_gain" in full:
        headline["lateral_delta"] = {
            k: f.get("lateral_delta", NOT_ESTIMABLE) for k, f in findings.items()
        }
    return headline, {"bootstrap": full.get("bootstrap", {}), "findings": findings}


RULES: tuple[str, ...] = ("youden", "sensitivity_target")


def _policy_major(per_finding: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    return {rule: {f: t[rule] for f, t in per_finding.items()} for rule in RULES}


def thresholds_dict(ev: Evaluation) -> dict[str, Any]:
    """Validation-chosen thresholds, one ``{finding: threshold}`` mapping per rule.

    Top-level ``youden`` and ``sensitivity_target`` are for the dual-view model (what the model
    card carries); ``frontal_only`` holds the same for studies scored without a lateral view.
    A threshold is ``null`` where the finding has one class only in the validation split.
    """
    dual = ev.modes["dual"].thresholds
    out: dict[str, Any] = {
        "chosen_on": "val",
        "rule": "positive when probability >= threshold",
        "target_sensitivity": ev.params.sensitivity_target,
        **_policy_major(dual),
        "validation": {
            "studies": ev.counts["val_studies"],
            "n_pos": {f: t["val_n_pos"] for f, t in dual.items()},
            "n_neg": {f: t["val_n_neg"] for f, t in dual.items()},
        },
    }
    if "frontal_only" in ev.modes and ev.modes["frontal_only"].thresholds:
        out["frontal_only"] = _policy_major(ev.modes["frontal_only"].thresholds)
    return out


def write_curves(ev: Evaluation, plots_dir: str | Path) -> list[Path]:
    """Per-finding dual-view curve CSVs for DVC plots: ``roc/``, ``pr/``, ``calibration/``.

    Old files of the three folders are removed first (a finding may stop being estimable).
    """
    plots_dir = Path(plots_dir)
    dual = ev.modes["dual"]
    written = []
    tables = {
        "roc": dual.roc,
        "pr": dual.pr,
        "calibration": {
            k: v[v["count"] > 0][["mean_predicted", "observed", "count", "bin_lower", "bin_upper"]]
            for k, v in dual.reliability.items()
            if v["count"].sum() > 0
        },
    }
    for kind, per in tables.items():
        folder = plots_dir / kind
        if folder.is_dir():
            for old in folder.glob("*.csv"):
                old.unlink()
        for name, table in per.items():
            path = folder / f"{name}.csv"
            with atomic_path(path) as tmp:
                table.to_csv(tmp, index=False, float_format="%.6g")
            written.append(path)
    return written


# --------------------------------------------------------------------------------------------
# Figures (matplotlib Figure objects: no pyplot state, Agg canvas)
# --------------------------------------------------------------------------------------------

_DUAL, _FRONT = "#1f5fa8", "#d9822b"
_VERDICT_COLOURS = {"helps": "#2e7d32", "hurts": "#c62828", "neutral": "#6d6d6d"}


def _png(fig: Figure) -> str:
    # fixed layouts (no tight_layout / bbox_inches="tight"): those re-measure every tick label
    # and cost seconds per grid on a small CPU
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


def figure_roc(ev: Evaluation) -> str:
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
            ax.plot(r["fpr"], r["tpr"], color=_FRONT, lw=1.6, ls="--", label="frontal only")
        ax.plot(dual.roc[name]["fpr"], dual.roc[name]["tpr"], color=_DUAL, lw=1.2, label="dual")
        op = next((o for o in dual.operating_points.get("youden", []) if o.finding == name), None)
        if op is not None and op.sensitivity.value is not None:
            ax.plot(1 - op.specificity.value, op.sensitivity.value, "o", color="black", ms=4)
        ax.set_title(f"{name}\nAUROC {scores[name].auroc.format(2)}", fontsize=8.5)
    axes[0].legend(fontsize=7, loc="lower right")
    return _png(fig)


def figure_pr(ev: Evaluation) -> str:
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
            ax.step(r["recall"], r["precision"], color=_FRONT, lw=1.6, ls="--")
        ax.step(dual.pr[name]["recall"], dual.pr[name]["precision"], color=_DUAL, lw=1.2)
        ax.set_title(f"{name}\nAUPRC {scores[name].auprc.format(2)}", fontsize=8.5)
    return _png(fig)


def figure_reliability(ev: Evaluation) -> str:
    """Reliability diagrams: observed frequency vs mean predicted probability per bin."""
    fig, axes = _grid(len(ev.findings), "Mean predicted probability (bin)", "Observed frequency")
    dual = ev.modes["dual"]
    for ax, name in zip(axes, ev.findings, strict=False):
        rel = dual.reliability[name]
        rel = rel[rel["count"] > 0]
        ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls=":")
        if len(rel):
            size = 8 + 60 * rel["count"] / rel["count"].max()
            ax.plot(rel["mean_predicted"], rel["observed"], color=_DUAL, lw=1.0)
            ax.scatter(rel["mean_predicted"], rel["observed"], s=size, color=_DUAL, zorder=3)
        ax.set_title(f"{name}\nECE {dual.ece[name].format(3)}", fontsize=8.5)
    return _png(fig)


def figure_forest(ev: Evaluation) -> str:
    """Per-finding AUROC with CIs (dual and frontal-only) and the macro mean."""
    names = [*ev.findings, "Macro mean"]
    fig = Figure(figsize=(7.5, 0.36 * len(names) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    modes = [("dual", _DUAL, -0.15), ("frontal_only", _FRONT, 0.15)]
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
            ax.plot(est.value, yy, "o", color=colour, ms=4, label=mode if i == 0 else None)
    ax.axvline(0.5, color="#999999", lw=0.8, ls=":")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names[::-1], fontsize=8)
    lows = [
        e.lower if e.lower is not None else e.value
        for mode in ev.modes.values()
        for e in [*(f.auroc for f in mode.discrimination.findings), mode.discrimination.macro_auroc]
        if e.value is not None
    ]
    ax.set_xlim(min([0.45, *(v - 0.02 for v in lows)]), 1.0)
    ax.set_xlabel(f"AUROC with {ev.params.ci_level:.0%} CI (patient bootstrap)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", color="#eeeeee", lw=0.6)
    _fixed_margins(fig)
    return _png(fig)


def figure_lateral_gain(ev: Evaluation) -> str | None:
    """Paired AUROC differences (dual - frontal-only) with CIs, coloured by verdict."""
    if not ev.paired:
        return None
    rows = [*ev.paired]
    fig = Figure(figsize=(7.5, 0.36 * (len(rows) + 1) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ests = [(d.finding, d.delta, d.verdict) for d in rows]
    ests.append(("Macro mean", ev.paired_macro, _verdict_macro(ev)))
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
        colour = _VERDICT_COLOURS.get(verdict, "#6d6d6d")
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
    return _png(fig)


def _fixed_margins(fig: Figure) -> None:
    h = fig.get_figheight()
    fig.subplots_adjust(left=0.2, right=0.97, bottom=0.6 / h, top=1 - 0.15 / h)


def _verdict_macro(ev: Evaluation) -> str:
    return verdict_of(ev.paired_macro) if ev.paired_macro is not None else NOT_ESTIMABLE


# --------------------------------------------------------------------------------------------
# HTML and Markdown
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
  color:#1d2733;background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.6em;margin:.2em 0 .1em}h2{font-size:1.25em;margin-top:1.8em;
  border-bottom:2px solid #e3e7ec;padding-bottom:.2em}h3{font-size:1.05em}
.sub{color:#5a6675;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{flex:1 1 200px;border:1px solid #dfe4ea;border-radius:8px;padding:10px 14px;
  background:#fbfcfd}
.card .k{font-size:.8em;color:#5a6675;text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:1.35em;font-weight:600}.card .c{font-size:.85em;color:#5a6675}
table{border-collapse:collapse;width:100%;font-size:.88em;margin:8px 0 4px}
th,td{border-bottom:1px solid #e6e9ee;padding:5px 8px;text-align:right;white-space:nowrap}
th{background:#f0f3f6;position:sticky;top:0}td:first-child,th:first-child{text-align:left}
td.l,th.l{text-align:left;white-space:normal}
.ne{color:#8a6d3b;font-style:italic}.few{color:#8a6d3b}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:.85em}
.helps{background:#2e7d32}.hurts{background:#c62828}.neutral{background:#6d6d6d}
.note{background:#f3f7fc;border-left:4px solid #1f5fa8;padding:8px 14px;margin:12px 0}
.warn{background:#fdf6ec;border-left:4px solid #d9822b;padding:8px 14px;margin:12px 0}
figure{margin:12px 0}figure img{max-width:100%;height:auto;border:1px solid #eef0f3}
figcaption{font-size:.85em;color:#5a6675}
code{background:#f0f3f6;padding:0 4px;border-radius:3px}
footer{margin-top:40px;font-size:.8em;color:#7a8594}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(est: Estimate | None, digits: int = 3) -> str:
    if est is None or est.value is None:
        return f'<span class="ne">{NOT_ESTIMABLE}</span>'
    return _e(est.format(digits))


def _pct(est: Estimate | None) -> str:
    if est is None or est.value is None:
        return '<span class="ne">n/a</span>'
    if est.lower is None:
        return f"{est.value:.0%}"
    return _e(f"{est.value:.0%} ({est.lower:.0%}–{est.upper:.0%})")


def _badge(verdict: str) -> str:
    if verdict not in _VERDICT_COLOURS:
        return f'<span class="ne">{_e(verdict)}</span>'
    return f'<span class="badge {verdict}">{verdict}</span>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    head = "".join(f"<th{' class=l' if i < left else ''}>{h}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=l' if i < left else ''}>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(key: str, value: str, comment: str = "") -> str:
    return (
        f'<div class="card"><div class="k">{_e(key)}</div><div class="v">{value}</div>'
        f'<div class="c">{comment}</div></div>'
    )


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        out = []
        for k, v in value.items():
            out += _flatten(f"{prefix}.{k}" if prefix else str(k), v)
        return out
    return [(prefix, json.dumps(value, default=str) if not isinstance(value, str) else value)]


def render_html(
    ev: Evaluation,
    run_params: Mapping[str, Any] | None = None,
    versions: Mapping[str, Any] | None = None,
) -> str:
    """The self-contained HTML report (inline CSS, PNGs as data URIs, no external resources)."""
    p = ev.params
    dual = ev.modes["dual"]
    disc = dual.discrimination
    level = f"{p.ci_level:.0%}"
    parts: list[str] = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>Chest X-ray model evaluation</title><style>{_CSS}</style></head><body><main>",
        "<h1>Chest X-ray model: evaluation on the held-out test split</h1>",
        f'<p class="sub">{ev.counts["test_studies"]} test studies from '
        f"{ev.counts['test_patients']} patients "
        f"({ev.counts['test_studies_with_lateral']} with a lateral view); "
        f"{len(ev.findings)} findings; {level} confidence intervals from "
        f"{p.bootstrap_resamples} patient-level bootstrap resamples.</p>",
    ]
    cards = [
        _card("Macro AUROC (dual view)", _fmt(disc.macro_auroc), f"{level} CI in brackets"),
        _card("Micro AUROC (dual view)", _fmt(disc.micro_auroc), "all findings pooled"),
    ]
    if "frontal_only" in ev.modes:
        cards.append(
            _card(
                "Macro AUROC (frontal only)",
                _fmt(ev.modes["frontal_only"].discrimination.macro_auroc),
                "same model, lateral hidden",
            )
        )
    if ev.paired_macro is not None:
        cards.append(
            _card(
                "Lateral view: macro gain",
                _fmt(ev.paired_macro),
                f"{_badge(_verdict_macro(ev))} on {ev.paired_counts.get('studies', 0)} studies",
            )
        )
    parts.append(f'<div class="cards">{"".join(cards)}</div>')
    for note in ev.notes:
        parts.append(f'<div class="warn">{_e(note)}</div>')

    parts.append(
        '<div class="note"><b>How to read this report.</b><ul>'
        "<li><b>AUROC</b> is the probability that the model scores a randomly chosen study "
        "<i>with</i> the finding higher than one <i>without</i> it: 0.5 is a coin toss, 1.0 is "
        "perfect ranking. <b>AUPRC</b> (average precision) summarises precision over all "
        "sensitivities; compare it with the finding's prevalence, which is what a random "
        "ranking would get.</li>"
        f"<li>A <b>{level} confidence interval</b> (in brackets) is the range of values "
        "compatible with this test set: with another sample of patients the estimate would move "
        "within roughly this range. Narrow intervals need many patients with the finding. The "
        "intervals come from a <b>patient-level bootstrap</b>: whole patients are redrawn at "
        "random, with all their studies together, because studies of the same patient resemble "
        "each other and would otherwise make the results look more certain than they are.</li>"
        "<li><b>Not estimable</b> means the test split has no positive (or no negative) study "
        "for that finding, so no AUROC can be computed; it is not a score of 0.5. Findings "
        f"with fewer than {p.min_positives} positive studies are marked <i>few positives</i>: "
        "read their numbers with caution.</li>"
        f"<li><b>Frontal only</b>: {_e(FRONTAL_ONLY_METHOD)}. The difference between the two "
        "therefore measures what the lateral view adds to <i>this</i> model; a model trained on "
        "frontal images alone could do somewhat better than the masked one. The comparison is "
        "paired: both scores of the same studies enter each bootstrap resample, and a finding "
        "is marked <b>helps</b> or <b>hurts</b> only when the whole interval of the difference "
        "lies above or below zero; otherwise <b>neutral</b> (no demonstrated difference).</li>"
        "<li><b>Operating points</b> turn probabilities into yes/no calls. Their thresholds were "
        "chosen on the separate <i>validation</i> split (never on the test split) and are "
        "applied unchanged to the test split below. <b>Calibration</b>: when the model says 30 %, "
        "about 30 % of such studies should have the finding; the expected calibration error "
        "(ECE) is the average gap.</li></ul></div>"
    )

    # Findings table
    parts.append("<h2>Findings</h2>")
    front = ev.modes.get("frontal_only")
    front_scores = front.discrimination.by_name() if front else {}
    rows = []
    for row in disc.findings:
        note = ""
        if row.status == NOT_ESTIMABLE:
            note = f'<span class="ne">{NOT_ESTIMABLE}</span>'
        elif row.n_pos < p.min_positives:
            note = '<span class="few">few positives</span>'
        prev = "" if row.prevalence is None else f"{row.prevalence:.1%}"
        cells = [
            _e(row.finding),
            str(row.n_pos),
            str(row.n_neg),
            str(row.n_missing),
            prev,
            _fmt(row.auroc),
            _fmt(row.auprc),
            _fmt(dual.ece[row.finding]),
        ]
        if front:
            cells.append(_fmt(front_scores[row.finding].auroc))
        rows.append([*cells, note])
    headers = [
        "Finding",
        "Positives",
        "Negatives",
        "Unannotated",
        "Prevalence",
        f"AUROC ({level} CI)",
        f"AUPRC ({level} CI)",
        "ECE",
    ]
    if front:
        headers.append("AUROC frontal only")
    rows.append(
        [
            "<b>Macro mean</b>",
            "",
            "",
            "",
            "",
            _fmt(disc.macro_auroc),
            "",
            "",
            *([_fmt(front.discrimination.macro_auroc)] if front else []),
            "",
        ]
    )
    rows.append(
        [
            "<b>Micro (pooled)</b>",
            "",
            "",
            "",
            "",
            _fmt(disc.micro_auroc),
            "",
            "",
            *([_fmt(front.discrimination.micro_auroc)] if front else []),
            "",
        ]
    )
    parts.append(_table([*headers, "Note"], rows))
    parts.append(
        '<p class="sub">Macro mean = average over estimable findings; micro = one AUROC over all '
        "(study, finding) pairs pooled. Unannotated studies are left out of a finding's "
        "numbers.</p>"
    )
    parts.append(
        f'<figure><img alt="AUROC per finding" src="{figure_forest(ev)}"><figcaption>AUROC per '
        f"finding with {level} CIs (blue: dual view; orange: frontal only).</figcaption></figure>"
    )

    # Dual vs frontal-only
    parts.append("<h2>What the lateral view adds</h2>")
    if ev.paired is not None:
        subset = (
            "test studies that have a lateral view"
            if p.paired_subset == "with_lateral"
            else "all test studies"
        )
        parts.append(
            f"<p>Compared on the {ev.paired_counts['studies']} {subset} "
            f"({ev.paired_counts['patients']} patients). Difference = AUROC with both views "
            "minus AUROC with the lateral view hidden.</p>"
        )
        prow = [
            [
                _e(d.finding),
                "" if d.auroc_a is None else f"{d.auroc_a:.3f}",
                "" if d.auroc_b is None else f"{d.auroc_b:.3f}",
                _fmt(d.delta),
                _badge(d.verdict),
            ]
            for d in ev.paired
        ]
        prow.append(
            ["<b>Macro mean</b>", "", "", _fmt(ev.paired_macro), _badge(_verdict_macro(ev))]
        )
        parts.append(
            _table(
                ["Finding", "AUROC dual", "AUROC frontal only", f"Difference ({level} CI)", ""],
                prow,
            )
        )
        fig = figure_lateral_gain(ev)
        if fig:
            parts.append(
                f'<figure><img alt="lateral view gain" src="{fig}"><figcaption>Green: the '
                "lateral view helps (interval above 0); red: it hurts; grey: no demonstrated "
                "difference.</figcaption></figure>"
            )
    else:
        parts.append("<p>Not compared (see the notes above).</p>")

    # Curves
    parts.append("<h2>ROC curves</h2>")
    parts.append(
        f'<figure><img alt="ROC curves" src="{figure_roc(ev)}"><figcaption>Blue: dual view; '
        "dashed orange: frontal only; black dot: the validation-chosen Youden operating point "
        "applied to test. Dotted diagonal: chance.</figcaption></figure>"
    )
    parts.append("<h2>Precision-recall curves</h2>")
    parts.append(
        f'<figure><img alt="PR curves" src="{figure_pr(ev)}"><figcaption>Dotted line: the '
        "finding's prevalence (a random ranking).</figcaption></figure>"
    )

    # Operating points
    parts.append("<h2>Operating points (thresholds from validation, applied to test)</h2>")
    if dual.operating_points:
        titles = {
            "youden": "Youden's J (balances sensitivity and specificity)",
            "sensitivity_target": f"Sensitivity target {p.sensitivity_target:.0%} on validation "
            "(the highest threshold reaching it)",
        }
        for rule, points in dual.operating_points.items():
            parts.append(f"<h3>{_e(titles[rule])}</h3>")
            orows = []
            for op in points:
                if op.threshold is None:
                    orows.append(
                        [_e(op.finding), '<span class="ne">not estimable on validation</span>']
                        + [""] * 5
                    )
                    continue
                orows.append(
                    [
                        _e(op.finding),
                        f"{op.threshold:.3f}",
                        _pct(op.sensitivity),
                        _pct(op.specificity),
                        _pct(op.ppv),
                        _pct(op.npv),
                        f"{op.tp}/{op.fp}/{op.tn}/{op.fn}",
                    ]
                )
            parts.append(
                _table(
                    [
                        "Finding",
                        "Threshold",
                        "Sensitivity",
                        "Specificity",
                        "PPV",
                        "NPV",
                        "TP/FP/TN/FN",
                    ],
                    orows,
                )
            )
        parts.append(
            '<p class="sub">PPV and NPV depend on how common the finding is; they hold for a '
            "population with this test split's prevalence.</p>"
        )
    else:
        parts.append("<p>Not available: no validation predictions.</p>")

    # Calibration
    parts.append("<h2>Calibration</h2>")
    parts.append(
        f'<figure><img alt="reliability diagrams" src="{figure_reliability(ev)}"><figcaption>'
        f"Reliability diagrams ({p.ece_bins} equal-width bins; dot size ~ studies in the bin). "
        "Points on the diagonal are well calibrated; below it the model over-estimates the "
        "probability, above it under-estimates.</figcaption></figure>"
    )

    # Versions and params
    parts.append("<h2>Versions and parameters</h2>")
    vrows: list[tuple[str, str]] = []
    versions = dict(versions or {})
    if ev.model:
        versions = {"model": ev.model, **versions}
    vrows += _flatten("", versions)
    if vrows:
        parts.append(_table(["Item", "Value"], [[_e(k), _e(v)] for k, v in vrows], left=2))
    else:
        parts.append("<p>No version information available.</p>")
    prows = _flatten("", dict(run_params or p.model_dump()))
    parts.append("<h3>Run parameters</h3>")
    parts.append(_table(["Parameter", "Value"], [[_e(k), _e(v)] for k, v in prows], left=2))
    parts.append(
        "<footer>Generated by cxr-dag from saved predictions. Contains aggregate results only: "
        "no patient identifiers, study keys, names or dates.</footer></main></body></html>"
    )
    return "\n".join(parts)


def _md(est: Estimate | None, digits: int = 3) -> str:
    return NOT_ESTIMABLE if est is None or est.value is None else est.format(digits)


def render_markdown(ev: Evaluation) -> str:
    """A short Markdown summary (for the Prefect UI): headline numbers and the findings table."""
    p, dual = ev.params, ev.modes["dual"]
    disc = dual.discrimination
    level = f"{p.ci_level:.0%}"
    lines = [
        "# Evaluation summary",
        "",
        f"Test split: {ev.counts['test_studies']} studies, {ev.counts['test_patients']} patients "
        f"({ev.counts['test_studies_with_lateral']} with a lateral view). {level} CIs from "
        f"{p.bootstrap_resamples} patient-level bootstrap resamples.",
        "",
        f"- **Macro AUROC (dual view): {_md(disc.macro_auroc)}**",
        f"- Micro AUROC (dual view): {_md(disc.micro_auroc)}",
    ]
    if "frontal_only" in ev.modes:
        lines.append(
            "- Macro AUROC (frontal only, lateral masked): "
            f"{_md(ev.modes['frontal_only'].discrimination.macro_auroc)}"
        )
    if ev.paired_macro is not None:
        lines.append(
            f"- Lateral view, macro AUROC gain: {_md(ev.paired_macro)} "
            f"({_verdict_macro(ev)}; {ev.paired_counts['studies']} studies)"
        )
    lines += [f"- Note: {n}" for n in ev.notes]
    paired = {d.finding: d for d in ev.paired or []}
    lines += [
        "",
        f"| Finding | Pos | Neg | AUROC ({level} CI) | AUPRC | Lateral gain | Verdict |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for row in disc.findings:
        d = paired.get(row.finding)
        lines.append(
            f"| {row.finding} | {row.n_pos} | {row.n_neg} | {_md(row.auroc)} | "
            f"{_md(row.auprc)} | {_md(d.delta) if d else ''} | {d.verdict if d else ''} |"
        )
    lines += [
        "",
        "Frontal only = " + FRONTAL_ONLY_METHOD + ". Thresholds are chosen on validation; see the "
        "HTML report for curves, operating points and calibration.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_outputs(
    ev: Evaluation,
    *,
    html_path: str | Path,
    markdown_path: str | Path,
    metrics_path: str | Path,
    findings_metrics_path: str | Path,
    thresholds_path: str | Path,
    plots_dir: str | Path,
    run_params: Mapping[str, Any] | None = None,
    versions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every output of an evaluation (atomically) and return the full metrics dict.

    Args:
        ev: from :func:`summarize`.
        html_path, markdown_path: the report and its summary.
        metrics_path, findings_metrics_path: the two DVC metrics JSONs (see
            :func:`split_metrics`).
        thresholds_path: validation-chosen thresholds (for the model card).
        plots_dir: folder of the ROC / PR / calibration CSVs (DVC plots).
        run_params: params shown in the report (default: the report params).
        versions: git / DVC / model versions shown in the report.
    """
    metrics = metrics_dict(ev)
    headline, details = split_metrics(metrics)
    write_json(metrics_path, headline)
    write_json(findings_metrics_path, details)
    write_json(thresholds_path, thresholds_dict(ev))
    write_curves(ev, plots_dir)
    _write_text(Path(html_path), render_html(ev, run_params, versions))
    _write_text(Path(markdown_path), render_markdown(ev))
    return metrics


def render_report(
    predictions: pd.DataFrame | str | Path,
    out_dir: str | Path,
    params: ReportParams | Mapping[str, Any] | None = None,
    versions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Recompute the evaluation from saved predictions and write the report into ``out_dir``.

    Writes ``report.html``, ``report.md``, ``metrics.json`` (headline), ``metrics_findings.json``
    (per-finding details), ``thresholds.json`` and ``plots/{roc,pr,calibration}/<finding>.csv``.
    No model is loaded.

    Args:
        predictions: the predictions table, or the path of its Parquet file.
        out_dir: output folder (created).
        params: :class:`ReportParams` or a mapping (e.g. the ``evaluate`` params section: keys
            that are not report params are shown in the report but otherwise ignored).
        versions: git / DVC / model versions to show (see :func:`collect_versions`).

    Returns:
        ``{"metrics": <the full metrics dict>, "files": {name: path}}``.

    Raises:
        ReportError: the predictions file is missing, unreadable or not a predictions table.
    """
    source = "predictions"
    if isinstance(predictions, str | Path):
        source = str(predictions)
        path = Path(predictions)
        if not path.is_file():
            raise ReportError(f"{path}: predictions file not found")
        try:
            predictions = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types
            raise ReportError(f"{path}: not a readable Parquet file ({exc})") from exc
    out = Path(out_dir)
    files = {
        "html": out / "report.html",
        "markdown": out / "report.md",
        "metrics": out / "metrics.json",
        "findings_metrics": out / "metrics_findings.json",
        "thresholds": out / "thresholds.json",
        "plots": out / "plots",
    }
    ev = summarize(predictions, params, source)
    run_params = ev.params.model_dump() | (dict(params) if isinstance(params, Mapping) else {})
    metrics = write_outputs(
        ev,
        html_path=files["html"],
        markdown_path=files["markdown"],
        metrics_path=files["metrics"],
        findings_metrics_path=files["findings_metrics"],
        thresholds_path=files["thresholds"],
        plots_dir=files["plots"],
        run_params=run_params,
        versions=versions,
    )
    return {"metrics": metrics, "files": {k: str(v) for k, v in files.items()}}
