"""The evaluation's numbers, computed from a predictions table alone (no model needed).

Input: a predictions table (``outputs/evaluation/predictions.parquet``; its columns and
checks: :mod:`pipelines.evaluation.table`).

:func:`summarize` checks the table (:func:`~pipelines.evaluation.table.validate_predictions`)
and computes, with :mod:`pipelines.evaluation.metrics`: per-finding AUROC / AUPRC with
patient-bootstrap CIs on the test split, macro and micro AUROC, validation-chosen operating
points applied to test, calibration, the paired dual vs frontal-only AUROC differences and,
with test-time augmentation, the paired TTA vs single-pass differences. The result is an
:class:`Evaluation`, which :mod:`pipelines.evaluation.outputs` writes out.

No PHI: unknown columns of the predictions are dropped on input, and an :class:`Evaluation`
holds aggregates only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from sklearn.metrics import precision_recall_curve, roc_curve

from pipelines.config import StageParams
from pipelines.coverage import untrained_by_validation
from pipelines.errors import ReportError
from pipelines.evaluation.bootstrap import Estimate, PatientBootstrap
from pipelines.evaluation.calibration import (
    Calibration,
    EceComparison,
    compare_ece,
    fit_calibration,
    reliability_curve,
)
from pipelines.evaluation.metrics import (
    NOT_ESTIMABLE,
    DiscriminationReport,
    PairedDifference,
    class_counts,
    compute_roc_auc,
    paired_auroc_difference,
    verdict_of,
)
from pipelines.evaluation.operating_points import (
    OperatingPoint,
    apply_thresholds,
    sensitivity_threshold,
    youden_threshold,
)
from pipelines.evaluation.sources import SourceResult, by_source
from pipelines.evaluation.subgroups import SubgroupAnalysis, subgroup_analysis
from pipelines.evaluation.table import (
    FRONTAL_ONLY_METHOD,
    SINGLE_PREFIX,
    prediction_findings,
    split_rows,
    validate_predictions,
)

#: How operating-point thresholds are chosen on validation (see :class:`ModeResult`).
RULES: tuple[str, ...] = ("youden", "sensitivity_target")


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
        calibration: the post-hoc calibration fitted on validation (per mode and finding):
            ``auto`` (the method of lowest cross-validated log loss on validation), ``none``,
            ``temperature``, ``platt`` or ``isotonic``
            (:func:`pipelines.evaluation.calibration.fit_calibration`).
        subgroup_min_positives: a subgroup enters a finding's gap comparison with at least this
            many test positives and as many negatives (:mod:`pipelines.evaluation.subgroups`).
    """

    bootstrap_resamples: int = Field(2000, ge=1)
    seed: int = 1337
    ci_level: float = Field(0.95, gt=0, lt=1)
    sensitivity_target: float = Field(0.9, gt=0, le=1)
    ece_bins: int = Field(10, ge=1, le=100)
    paired_subset: Literal["with_lateral", "all"] = "with_lateral"
    min_positives: int = Field(10, ge=0)
    calibration: Literal["auto", "none", "temperature", "platt", "isotonic"] = "auto"
    subgroup_min_positives: int = Field(5, ge=1)


def report_params(params: ReportParams | Mapping[str, Any] | None) -> ReportParams:
    """``ReportParams`` from a model, or from a mapping (keys it does not know are ignored).

    Args:
        params: a :class:`ReportParams`, any params model or mapping with its keys, or None
            (the defaults).

    Returns:
        The report params.

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
# Summary
# --------------------------------------------------------------------------------------------


@dataclass
class ModeResult:
    """Everything computed for one scoring mode on the test split.

    Attributes:
        discrimination: per-finding AUROC / AUPRC with CIs, macro and micro AUROC.
        thresholds: per finding, the validation-chosen threshold of each of :data:`RULES` on the
            calibrated validation probabilities, and the validation class counts
            (``val_n_pos``, ``val_n_neg``); empty without validation rows.
        operating_points: per rule, the thresholds applied to the calibrated test
            probabilities (empty without validation).
        ece: per finding, the expected calibration error of the calibrated probabilities.
        reliability: per finding, the reliability-diagram table (calibrated probabilities).
        roc, pr: per estimable finding, the ROC and precision-recall curve tables (their
            thresholds on the calibrated scale).
        calibration: the maps fitted on validation (None without validation rows).
        ece_compare: ECE before and after calibration, and the change, with CIs.
        reliability_raw: per finding, the reliability-diagram table of the raw probabilities.
    """

    discrimination: DiscriminationReport
    thresholds: dict[str, dict[str, float | None]]
    operating_points: dict[str, list[OperatingPoint]]
    ece: dict[str, Estimate]
    reliability: dict[str, pd.DataFrame]
    roc: dict[str, pd.DataFrame]
    pr: dict[str, pd.DataFrame]
    calibration: Calibration | None = None
    ece_compare: EceComparison | None = None
    reliability_raw: dict[str, pd.DataFrame] = field(default_factory=dict)


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
    #: the model's findings that are not trained, each with its reason (:mod:`pipelines.coverage`);
    #: those training could not teach are not in ``findings`` (not scored at all)
    not_trained: dict[str, str] = field(default_factory=dict)
    #: per split, per finding: labelled positives / negatives / unannotated (from training)
    label_coverage: dict[str, Any] = field(default_factory=dict)
    sources: list[SourceResult] = field(default_factory=list)
    subgroups: SubgroupAnalysis | None = None
    #: test-time augmentation against the single pass (dual view, test split): per finding
    #: and macro; None without TTA
    tta: list[PairedDifference] | None = None
    tta_macro: Estimate | None = None
    #: the test-time augmentation the scores are means over (:func:`pipelines.tta.draws_to_json`)
    tta_draws: list[dict[str, Any]] = field(default_factory=list)

    def macro_verdict(self) -> str:
        """Verdict of the paired macro AUROC difference (``not estimable`` if not compared)."""
        return verdict_of(self.paired_macro) if self.paired_macro is not None else NOT_ESTIMABLE


def _arrays(part: pd.DataFrame, findings: list[str], prefix: str) -> np.ndarray:
    return part[[f"{prefix}_{f}" for f in findings]].to_numpy(np.float64)


def _curves(y: np.ndarray, p: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """ROC and precision-recall curve tables of one finding (None when one class only)."""
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


def _thresholds(
    val: pd.DataFrame, findings: list[str], params: ReportParams
) -> dict[str, dict[str, float | None]]:
    """Per finding, the thresholds of each rule chosen on validation (empty without it)."""
    if not len(val):
        return {}
    yv, pv = _arrays(val, findings, "y"), _arrays(val, findings, "p")
    vpos, vneg, _ = class_counts(yv)
    return {
        name: {
            "youden": youden_threshold(yv[:, f], pv[:, f]),
            "sensitivity_target": sensitivity_threshold(
                yv[:, f], pv[:, f], params.sensitivity_target
            ),
            "val_n_pos": int(vpos[f]),
            "val_n_neg": int(vneg[f]),
        }
        for f, name in enumerate(findings)
    }


def _calibrated(part: pd.DataFrame, findings: list[str], cal: Calibration | None) -> pd.DataFrame:
    """``part`` with its ``p_`` columns calibrated (unchanged without a calibration)."""
    if cal is None or not len(part):
        return part
    out = part.copy()
    out[[f"p_{f}" for f in findings]] = cal.apply(_arrays(part, findings, "p"), findings)
    return out


def _fit(val: pd.DataFrame, findings: list[str], params: ReportParams) -> Calibration | None:
    """The calibration of one mode fitted on its validation rows (None without them)."""
    if not len(val):
        return None
    y, p = _arrays(val, findings, "y"), _arrays(val, findings, "p")
    return fit_calibration(y, p, val["patient_key"].to_numpy(), findings, params.calibration)


def _mode_result(
    test: pd.DataFrame,
    val: pd.DataFrame,
    findings: list[str],
    boot: PatientBootstrap,
    params: ReportParams,
) -> ModeResult:
    """Discrimination (raw scores), calibration fitted on validation, operating points chosen
    on calibrated validation scores, ECE before / after and curves of one mode on test."""
    y, raw = _arrays(test, findings, "y"), _arrays(test, findings, "p")
    level = params.ci_level
    disc = compute_roc_auc(y, raw, boot, findings, level)
    cal = _fit(val, findings, params)
    p = cal.apply(raw, findings) if cal is not None else raw
    thresholds = _thresholds(_calibrated(val, findings, cal), findings, params)
    ops: dict[str, list[OperatingPoint]] = {}
    if thresholds:
        for rule in RULES:
            chosen = [thresholds[f][rule] for f in findings]
            ops[rule] = apply_thresholds(y, p, chosen, boot, findings, rule, level)
    compare = compare_ece(y, raw, p, boot, findings, params.ece_bins, level)
    reliability, reliability_raw, roc, pr = {}, {}, {}, {}
    for f, name in enumerate(findings):
        reliability[name] = reliability_curve(y[:, f], p[:, f], params.ece_bins)
        reliability_raw[name] = reliability_curve(y[:, f], raw[:, f], params.ece_bins)
        curves = _curves(y[:, f], raw[:, f])
        if curves is not None:
            roc[name], pr[name] = (_on_scale(c, cal, name) for c in curves)
    ece = {name: compare.after[name] for name in findings}
    return ModeResult(
        disc, thresholds, ops, ece, reliability, roc, pr, cal, compare, reliability_raw
    )


def _on_scale(curve: pd.DataFrame, cal: Calibration | None, finding: str) -> pd.DataFrame:
    """A curve table with its thresholds on the calibrated scale (monotone: same points)."""
    if cal is None or finding not in cal.maps:
        return curve
    return curve.assign(threshold=cal.maps[finding].apply(curve["threshold"].to_numpy()))


def _compare_modes(
    ev: Evaluation, test: pd.DataFrame, front: pd.DataFrame, boot: PatientBootstrap
) -> None:
    """Set the paired dual vs frontal-only AUROC differences of ``ev`` (or a note why not)."""
    params = ev.params
    subset = (
        test["has_lateral"].to_numpy()
        if params.paired_subset == "with_lateral"
        else np.ones(len(test), bool)
    )
    if not subset.any():
        ev.notes.append("No test study has a lateral view: dual vs frontal-only not compared.")
        return
    sub_boot = boot.subset(subset)
    ev.paired, ev.paired_macro = paired_auroc_difference(
        _arrays(test, ev.findings, "y")[subset],
        _arrays(test, ev.findings, "p")[subset],
        _arrays(front, ev.findings, "p")[subset],
        sub_boot,
        ev.findings,
        params.ci_level,
    )
    ev.paired_counts = {"studies": int(subset.sum()), "patients": sub_boot.n_patients}


def _compare_tta(
    ev: Evaluation, test: pd.DataFrame, boot: PatientBootstrap, info: Mapping[str, Any] | None
) -> None:
    """Record the test-time augmentation of the scores (``info``: the predictions' ``tta``
    attr) and, where the table has the single-pass columns, the paired TTA vs single-pass AUROC
    differences (dual view, test split)."""
    ev.tta_draws = list((info or {}).get("draws") or [])
    if not all(f"{SINGLE_PREFIX}{f}" in test.columns for f in ev.findings):
        return
    ev.tta, ev.tta_macro = paired_auroc_difference(
        _arrays(test, ev.findings, "y"),
        _arrays(test, ev.findings, "p"),
        _arrays(test, ev.findings, SINGLE_PREFIX.rstrip("_")),
        boot,
        ev.findings,
        ev.params.ci_level,
    )


def _scored_findings(
    df: pd.DataFrame, val: pd.DataFrame, source: str
) -> tuple[list[str], dict[str, str]]:
    """The findings to score, and every finding that is not trained with its reason.

    Not trained (:mod:`pipelines.coverage`): what training recorded (too few labelled training
    studies: the ``untrained`` attr; its output carries no learned signal, so it is left out of
    every metric) and what validation cannot threshold
    (:func:`pipelines.coverage.untrained_by_validation`: still scored, since AUROC needs no
    threshold, but ``cxr predict`` makes no decision on it).

    Raises:
        ReportError: no finding is left to score.
    """
    present = prediction_findings(df)
    recorded = {f: r for f, r in (df.attrs.get("untrained") or {}).items() if f in present}
    findings = [f for f in present if f not in recorded]
    if not findings:
        why = "; ".join(f"{f}: {r}" for f, r in recorded.items())
        raise ReportError(f"{source}: no trained finding to evaluate ({why})")
    by_val = untrained_by_validation(_arrays(val, findings, "y"), findings)
    not_trained = {f: recorded.get(f) or by_val[f] for f in present if f in recorded or f in by_val}
    return findings, not_trained


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

    Returns:
        The evaluation: dual-mode results, frontal-only results and the paired comparison
        where the table has frontal-only rows, and notes on what could not be computed.

    Raises:
        ReportError: the table is unusable (see :func:`validate_predictions`).
    """
    params = report_params(params)
    df = validate_predictions(predictions, source)
    test = split_rows(df, "test", "dual")
    val = split_rows(df, "val", "dual")
    findings, not_trained = _scored_findings(df, val, source)
    boot = PatientBootstrap(test["patient_key"].to_numpy(), params.bootstrap_resamples, params.seed)
    counts = {
        "test_studies": len(test),
        "test_patients": boot.n_patients,
        "test_studies_with_lateral": int(test["has_lateral"].sum()),
        "val_studies": len(val),
        "val_patients": int(val["patient_key"].nunique()),
    }
    modes = {"dual": _mode_result(test, val, findings, boot, params)}
    ev = Evaluation(findings, params, counts, modes, model=dict(df.attrs.get("model", {})))
    ev.not_trained = not_trained
    ev.label_coverage = dict(df.attrs.get("label_coverage") or {})
    ev.sources = by_source(df, findings, params.bootstrap_resamples, params.seed, params.ci_level)
    ev.subgroups = subgroup_analysis(
        test,
        _arrays(test, findings, "y"),
        _arrays(test, findings, "p"),
        findings,
        boot,
        params.ci_level,
        params.subgroup_min_positives,
    )
    _compare_tta(ev, test, boot, df.attrs.get("tta"))
    if not len(val):
        ev.notes.append("No validation predictions: operating points were not chosen.")
    front = split_rows(df, "test", "frontal_only", test.index)
    if len(front):
        front_val = split_rows(df, "val", "frontal_only", val.index if len(val) else None)
        modes["frontal_only"] = _mode_result(front, front_val, findings, boot, params)
        _compare_modes(ev, test, front, boot)
    else:
        why = df.attrs.get("frontal_only")
        why = f" ({why})" if why and why != FRONTAL_ONLY_METHOD else ""
        ev.notes.append(f"No frontal-only predictions{why}: dual vs frontal-only not compared.")
    return ev
