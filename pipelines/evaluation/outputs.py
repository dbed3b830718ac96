"""The evaluation's files: DVC metrics, thresholds, curve CSVs, and the HTML / Markdown report.

:func:`write_outputs` writes an :class:`Evaluation` (atomically): the headline and per-finding
metrics JSONs (:func:`metrics_dict`, :func:`split_metrics`), the validation-chosen thresholds
(:func:`thresholds_dict`, read by the model card), the ROC / PR / calibration CSVs of DVC plots
(:func:`write_curves`) and the report (:mod:`pipelines.evaluation.report`).
:func:`render_report` recomputes everything from a saved predictions table into one folder: it
is what ``cxr report --predictions FILE --out DIR`` runs.

Not-estimable values are left out of the JSONs (a finding's ``status`` says why), never written
as NaN or 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.errors import ReportError
from pipelines.evaluation.bootstrap import Estimate
from pipelines.evaluation.metrics import NOT_ESTIMABLE, FindingScore, PairedDifference
from pipelines.evaluation.report import render_html, render_markdown
from pipelines.evaluation.summary import RULES, Evaluation, ReportParams, summarize
from pipelines.io import atomic_path, write_json

#: The headline's AUROC of a finding left out as not trained.
NOT_TRAINED = "not trained"

# --------------------------------------------------------------------------------------------
# Metrics and thresholds
# --------------------------------------------------------------------------------------------


def _put(d: dict[str, Any], key: str, est: Estimate | None) -> None:
    """``d[key]`` (and ``key_lo`` / ``key_hi`` with a CI), rounded; nothing if not estimable."""
    if est is None or est.value is None:
        return
    d[key] = round(est.value, 6)
    if est.lower is not None:
        d[f"{key}_lo"] = round(est.lower, 6)
        d[f"{key}_hi"] = round(est.upper, 6)


def _finding_metrics(ev: Evaluation, row: FindingScore) -> dict[str, Any]:
    """One finding's block of :func:`metrics_dict`."""
    dual, name = ev.modes["dual"], row.finding
    f: dict[str, Any] = {
        "status": row.status,
        "n_pos": row.n_pos,
        "n_neg": row.n_neg,
        "n_missing": row.n_missing,
    }
    _put(f, "auroc", row.auroc)
    _put(f, "auprc", row.auprc)
    _put(f, "ece", dual.ece[name])
    if dual.ece_compare is not None:
        _put(f, "ece_raw", dual.ece_compare.before[name])
    if "frontal_only" in ev.modes:
        front = ev.modes["frontal_only"].discrimination.by_name()[name]
        _put(f, "frontal_only_auroc", front.auroc)
    paired = {d.finding: d for d in ev.paired or []}
    if name in paired:
        _put(f, "lateral_delta", paired[name].delta)
        f["lateral_verdict"] = paired[name].verdict
    tta = {d.finding: d for d in ev.tta or []}
    if name in tta:
        _put(f, "tta_delta", tta[name].delta)
        f["tta_verdict"] = tta[name].verdict
    for rule, points in dual.operating_points.items():
        op = next(o for o in points if o.finding == name)
        if op.threshold is None:
            continue
        block: dict[str, Any] = {"threshold": round(op.threshold, 6)}
        for metric in ("sensitivity", "specificity", "ppv", "npv"):
            _put(block, metric, getattr(op, metric))
        f[rule] = block
    return f


def metrics_dict(ev: Evaluation) -> dict[str, Any]:
    """The DVC metrics: headline numbers at the top, then one block per finding.

    Args:
        ev: from :func:`summarize`.

    Returns:
        Counts, bootstrap settings, macro / micro AUROC and ECE, frontal-only and lateral-gain
        summaries, and ``findings``: per finding its counts, status, estimates and operating
        points. Not-estimable values are left out, never NaN or 0.5.
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
    if dual.ece_compare is not None:  # its CI, and the raw ECE, are in "calibration"
        macro_ece = dual.ece_compare.after["macro"].value
        if macro_ece is not None:
            out["macro_ece"] = round(macro_ece, 6)
        out["calibration"] = calibration_metrics(ev)
    out["findings_estimable"] = sum(f.status != NOT_ESTIMABLE for f in dual.discrimination.findings)
    if "frontal_only" in ev.modes:
        fo: dict[str, Any] = {}
        _put(fo, "macro_auroc", ev.modes["frontal_only"].discrimination.macro_auroc)
        _put(fo, "micro_auroc", ev.modes["frontal_only"].discrimination.micro_auroc)
        out["frontal_only"] = fo
    if ev.paired is not None:
        gain = {"subset": ev.params.paired_subset, **ev.paired_counts}
        out["lateral_gain"] = _paired_block(gain, ev.paired, ev.paired_macro)
    if ev.tta is not None:
        out["tta"] = _paired_block({"views": len(ev.tta_draws)}, ev.tta, ev.tta_macro)
    out["findings"] = {
        row.finding: _finding_metrics(ev, row) for row in dual.discrimination.findings
    }
    if ev.not_trained:
        out["not_trained"] = dict(ev.not_trained)
    if ev.sources:
        out["by_source"] = source_metrics(ev)
    return out


def _paired_block(
    head: dict[str, Any], diffs: list[PairedDifference], macro: Estimate | None
) -> dict[str, Any]:
    """A paired comparison's summary: ``head``, the macro delta and the verdict counts."""
    out = dict(head)
    _put(out, "macro_delta", macro)
    for verdict in ("helps", "hurts", "neutral"):
        out[f"n_{verdict}"] = sum(d.verdict == verdict for d in diffs)
    return out


def calibration_metrics(ev: Evaluation) -> dict[str, Any]:
    """Per mode: the method fitted on validation, its cross-validated log losses, and the test
    macro ECE before and after with the (paired) change."""
    out: dict[str, Any] = {}
    for mode, result in ev.modes.items():
        compare, cal = result.ece_compare, result.calibration
        block: dict[str, Any] = {"method": cal.method if cal else "none (no validation rows)"}
        if cal is not None and cal.cv_loss:
            block["cv_log_loss"] = {m: round(v, 4) for m, v in cal.cv_loss.items()}
        if compare is not None:
            _put(block, "macro_ece_before", compare.before["macro"])
            _put(block, "macro_ece_after", compare.after["macro"])
            _put(block, "macro_ece_change", compare.change["macro"])
        out[mode] = block
    return out


def subgroup_metrics(ev: Evaluation) -> dict[str, Any]:
    """``metrics/evaluate_subgroups.json``: per attribute and finding, each group's counts and
    AUROC (with CI) and the largest gap with its adjusted CI and flag; the flagged gaps first."""
    sg = ev.subgroups
    if sg is None:
        return {"attributes": {}}
    out: dict[str, Any] = {
        "flagged": [
            {k: v for k, v in g.items() if k != "delta"} | _estimate_dict("gap", g["delta"])
            for g in sg.flagged()
        ],
        "comparisons": sg.comparisons,
        "ci_level": sg.level,
        "gap_ci_level": round(sg.adjusted_level, 6),
        "min_positives": sg.min_positives,
        "not_analysed": dict(sg.skipped),
        "attributes": {},
    }
    for a in sg.attributes:
        per: dict[str, Any] = {}
        for finding, scores in a.scores.items():
            groups = {}
            for s in scores:
                groups[s.group] = {"studies": s.n_studies, "n_pos": s.n_pos, "n_neg": s.n_neg}
                _put(groups[s.group], "auroc", s.auroc)
            block: dict[str, Any] = {"groups": groups}
            gap = a.gaps.get(finding)
            if gap is not None:
                block["gap"] = {"high": gap.high, "low": gap.low, "flagged": gap.flagged}
                block["gap"] |= _estimate_dict("delta", gap.delta)
            per[finding] = block
        out["attributes"][a.attribute] = {"groups": a.groups, "findings": per}
    return out


def _estimate_dict(key: str, est: Estimate) -> dict[str, Any]:
    d: dict[str, Any] = {}
    _put(d, key, est)
    return d


def source_metrics(ev: Evaluation) -> dict[str, dict[str, Any]]:
    """Per split and source: studies, patients, macro AUROC and per-finding AUROC (with CIs)."""
    out: dict[str, dict[str, Any]] = {}
    for r in ev.sources:
        d = r.discrimination
        block: dict[str, Any] = {"studies": d.n_studies, "patients": d.n_patients}
        _put(block, "macro_auroc", d.macro_auroc)
        per: dict[str, Any] = {}
        for f in d.findings:
            per[f.finding] = {"n_pos": f.n_pos, "n_neg": f.n_neg}
            _put(per[f.finding], "auroc", f.auroc)
        block["findings"] = per
        out.setdefault(r.split, {})[r.source] = block
    return out


def split_metrics(full: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split :func:`metrics_dict` into a headline file and a per-finding details file.

    The headline (``metrics/evaluate.json``) keeps ``dvc metrics show`` readable: counts, macro /
    micro AUROC with CIs, frontal-only and lateral-gain summaries, plus one AUROC and one
    lateral-view delta per finding (the string ``not estimable`` where there is none, ``not
    trained`` for a finding left out), and each source's macro AUROC where a split holds several
    sources. The
    details (``metrics/evaluate_findings.json``) hold the bootstrap settings and every
    per-finding number: CIs, counts, status, ECE, operating points.

    Args:
        full: from :func:`metrics_dict`.

    Returns:
        ``(headline, details)``.
    """
    details_only = ("findings", "bootstrap", "by_source", "calibration")
    headline = {k: v for k, v in full.items() if k not in details_only}
    findings = full.get("findings", {})
    headline["auroc"] = {k: f.get("auroc", f["status"]) for k, f in findings.items()}
    unscored = [f for f in full.get("not_trained", {}) if f not in findings]
    headline["auroc"] |= dict.fromkeys(unscored, NOT_TRAINED)
    if "by_source" in full:
        headline["by_source_macro_auroc"] = {
            split: {name: b.get("macro_auroc", NOT_ESTIMABLE) for name, b in per.items()}
            for split, per in full["by_source"].items()
        }
    if "lateral_gain" in full:
        headline["lateral_delta"] = {
            k: f.get("lateral_delta", NOT_ESTIMABLE) for k, f in findings.items()
        }
    if "tta" in full:
        headline["tta_delta"] = {k: f.get("tta_delta", NOT_ESTIMABLE) for k, f in findings.items()}
    details = {"bootstrap": full.get("bootstrap", {}), "findings": findings}
    for key in ("by_source", "calibration"):
        if key in full:
            details[key] = full[key]
    return headline, details


def _policy_major(per_finding: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    return {rule: {f: t[rule] for f, t in per_finding.items()} for rule in RULES}


def thresholds_dict(ev: Evaluation) -> dict[str, Any]:
    """Validation-chosen thresholds, one ``{finding: threshold}`` mapping per rule.

    Top-level ``youden`` and ``sensitivity_target`` are for the dual-view model (what the model
    card carries); ``frontal_only`` holds the same for studies scored without a lateral view.
    A finding that is not trained (:mod:`pipelines.coverage`) has no threshold at all; it is
    listed under ``not_trained`` with its reason, which the model card and ``cxr predict`` carry.
    The thresholds apply to **calibrated** probabilities: ``calibration`` holds, per mode
    (``dual``, ``frontal_only``), the maps fitted on validation that turn the model's raw
    probabilities into them.

    Args:
        ev: from :func:`summarize`.

    Returns:
        The thresholds, the rule, the sensitivity target and the validation class counts.
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
    out["not_trained"] = dict(ev.not_trained)
    out["calibration"] = {  # the thresholds are on this scale: the card and predict apply it
        mode: r.calibration.to_json() for mode, r in ev.modes.items() if r.calibration is not None
    }
    if ev.tta_draws:  # the scores they were fitted on: the card and predict apply them too
        out["tta"] = {"views": len(ev.tta_draws), "draws": ev.tta_draws}
    return out


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def write_curves(ev: Evaluation, plots_dir: str | Path) -> list[Path]:
    """Per-finding dual-view curve CSVs for DVC plots: ``roc/``, ``pr/``, ``calibration/``.

    Old files of the three folders are removed first (a finding may stop being estimable).

    Args:
        ev: from :func:`summarize`.
        plots_dir: the folder of the three subfolders.

    Returns:
        The CSVs written.
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
    subgroups_path: str | Path | None = None,
    run_params: Mapping[str, Any] | None = None,
    versions: Mapping[str, Any] | None = None,
    saliency: Mapping[str, Any] | None = None,
    gate: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every output of an evaluation (atomically) and return the full metrics dict.

    Args:
        ev: from :func:`summarize`.
        html_path, markdown_path: the report and its summary.
        metrics_path, findings_metrics_path: the two DVC metrics JSONs (see
            :func:`split_metrics`).
        thresholds_path: validation-chosen thresholds (for the model card).
        plots_dir: folder of the ROC / PR / calibration CSVs (DVC plots).
        subgroups_path: the subgroup DVC metrics (:func:`subgroup_metrics`); None: not written.
        run_params: params shown in the report (default: the report params).
        versions: git / DVC / model versions shown in the report.
        saliency: the galleries and localisation (:func:`pipelines.evaluation.saliency.
            saliency_results`); None: the report says they were not computed.
        gate: the out-of-distribution gate's metrics (shown in the report); None: not shown.

    Returns:
        :func:`metrics_dict` of ``ev``.
    """
    metrics = metrics_dict(ev)
    headline, details = split_metrics(metrics)
    write_json(metrics_path, headline)
    write_json(findings_metrics_path, details)
    write_json(thresholds_path, thresholds_dict(ev))
    if subgroups_path is not None:
        write_json(subgroups_path, subgroup_metrics(ev))
    write_curves(ev, plots_dir)
    _write_text(Path(html_path), render_html(ev, run_params, versions, saliency, gate))
    _write_text(Path(markdown_path), render_markdown(ev))
    return metrics


def _read_predictions(predictions: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, str]:
    """The predictions table and its name for error messages (its path, if it is a file)."""
    if not isinstance(predictions, str | Path):
        return predictions, "predictions"
    path = Path(predictions)
    if not path.is_file():
        raise ReportError(f"{path}: predictions file not found")
    try:
        return pd.read_parquet(path), str(predictions)
    except Exception as exc:  # pyarrow raises several types
        raise ReportError(f"{path}: not a readable Parquet file ({exc})") from exc


def render_report(
    predictions: pd.DataFrame | str | Path,
    out_dir: str | Path,
    params: ReportParams | Mapping[str, Any] | None = None,
    versions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Recompute the evaluation from saved predictions and write the report into ``out_dir``.

    Writes ``report.html``, ``report.md``, ``metrics.json`` (headline), ``metrics_findings.json``
    (per-finding details), ``metrics_subgroups.json``, ``thresholds.json`` and
    ``plots/{roc,pr,calibration}/<finding>.csv``.
    No model is loaded.

    Args:
        predictions: the predictions table, or the path of its Parquet file.
        out_dir: output folder (created).
        params: :class:`ReportParams` or a mapping (e.g. the ``evaluate`` params section: keys
            that are not report params are shown in the report but otherwise ignored).
        versions: git / DVC / model versions to show (see
            :func:`pipelines.evaluation.provenance.collect_versions`).

    Returns:
        ``{"metrics": <the full metrics dict>, "files": {name: path}}``.

    Raises:
        ReportError: the predictions file is missing, unreadable or not a predictions table.
    """
    table, source = _read_predictions(predictions)
    out = Path(out_dir)
    files = {
        "html": out / "report.html",
        "markdown": out / "report.md",
        "metrics": out / "metrics.json",
        "findings_metrics": out / "metrics_findings.json",
        "thresholds": out / "thresholds.json",
        "subgroups": out / "metrics_subgroups.json",
        "plots": out / "plots",
    }
    ev = summarize(table, params, source)
    run_params = ev.params.model_dump() | (dict(params) if isinstance(params, Mapping) else {})
    metrics = write_outputs(
        ev,
        html_path=files["html"],
        markdown_path=files["markdown"],
        metrics_path=files["metrics"],
        findings_metrics_path=files["findings_metrics"],
        thresholds_path=files["thresholds"],
        plots_dir=files["plots"],
        subgroups_path=files["subgroups"],
        run_params=run_params,
        versions=versions,
    )
    return {"metrics": metrics, "files": {k: str(v) for k, v in files.items()}}
