"""The evaluation report: a self-contained HTML page and a short Markdown summary.

:func:`render_html` fills the Jinja2 template ``templates/report.html.j2`` (the markup and the
inline CSS) with the values of an :class:`Evaluation` prepared here: formatted numbers, table
rows, and the figures as PNG data URIs (no network resource). Every value is HTML-escaped on
output. :func:`render_markdown` gives the summary shown in the Prefect UI. Both show aggregates
only: no path or free-text column of the predictions; the HTML's saliency galleries (evaluate
stage only) name their studies by the first characters of their salted study keys.
"""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Mapping
from typing import Any

import jinja2
from markupsafe import Markup

from pipelines.evaluation.bootstrap import Estimate
from pipelines.evaluation.figures import (
    VERDICT_COLOURS,
    data_uri,
    figure_forest,
    figure_lateral_gain,
    figure_pr,
    figure_reliability,
    figure_roc,
)
from pipelines.evaluation.metrics import NOT_ESTIMABLE, PairedDifference, verdict_of
from pipelines.evaluation.operating_points import OperatingPoint
from pipelines.evaluation.report_sections import (
    Cell,
    calibration_section,
    gate_section,
    subgroup_section,
)
from pipelines.evaluation.report_sections import estimate_cell as _estimate
from pipelines.evaluation.summary import Evaluation
from pipelines.evaluation.table import FRONTAL_ONLY_METHOD

TEMPLATE = "report.html.j2"


def _escape(value: Any) -> Markup:
    """The template's ``finalize``: escape every output value with :func:`html.escape`.

    Its entities (``&quot;``, ``&#x27;``) are the report's, where markupsafe would write
    ``&#34;`` and ``&#39;``; markup the template made itself (macro output) passes unchanged.
    Jinja escapes a constant expression such as ``{{ "a'b" }}`` with markupsafe while compiling,
    so the template writes literal text outside ``{{ }}``.
    """
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("pipelines.evaluation", "templates"),
        autoescape=True,
        finalize=_escape,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def _percent(est: Estimate) -> str | Cell:
    if est.value is None:
        return Cell("n/a", "ne")
    if est.lower is None:
        return f"{est.value:.0%}"
    return f"{est.value:.0%} ({est.lower:.0%}–{est.upper:.0%})"


def _verdict(verdict: str) -> Cell:
    return Cell(verdict, "badge" if verdict in VERDICT_COLOURS else "ne")


def _findings_rows(ev: Evaluation) -> list[list[Any]]:
    """The findings table: one row per finding, then the macro and micro AUROC rows."""
    disc, ece = ev.modes["dual"].discrimination, ev.modes["dual"].ece
    front = ev.modes.get("frontal_only")
    front_scores = front.discrimination.by_name() if front else {}
    rows: list[list[Any]] = []
    for row in disc.findings:
        note: str | Cell = ""
        if row.status == NOT_ESTIMABLE:
            note = Cell(NOT_ESTIMABLE, "ne")
        elif row.n_pos < ev.params.min_positives:
            note = Cell("few positives", "few")
        prevalence = "" if row.prevalence is None else f"{row.prevalence:.1%}"
        cells = [row.finding, row.n_pos, row.n_neg, row.n_missing, prevalence]
        cells += [_estimate(row.auroc), _estimate(row.auprc), _estimate(ece[row.finding])]
        if front:
            cells.append(_estimate(front_scores[row.finding].auroc))
        rows.append([*cells, note])
    for label, attr in (("Macro mean", "macro_auroc"), ("Micro (pooled)", "micro_auroc")):
        extra = [_estimate(getattr(front.discrimination, attr))] if front else []
        overall = _estimate(getattr(disc, attr))
        rows.append([Cell(label, "bold"), "", "", "", "", overall, "", "", *extra, ""])
    return rows


def _not_trained_rows(ev: Evaluation) -> list[list[Any]]:
    """The not-trained findings: training label counts (where recorded) and the reason."""
    train = ev.label_coverage.get("train", {})
    rows: list[list[Any]] = []
    for name, why in ev.not_trained.items():
        c = train.get(name, {})
        counts = [c.get(k, "") for k in ("positives", "negatives", "unannotated")]
        rows.append([name, *counts, Cell(why, "ne")])
    return rows


def _source_table(ev: Evaluation) -> dict[str, Any] | None:
    """The findings x (split, source) AUROC table (None: one source only)."""
    if not ev.sources:
        return None
    head: list[Any] = [Cell("Studies (patients)", "bold")]
    head += [f"{r.discrimination.n_studies} ({r.discrimination.n_patients})" for r in ev.sources]
    rows: list[list[Any]] = [head]
    for j, name in enumerate(ev.findings):
        rows.append([name, *(_estimate(r.discrimination.findings[j].auroc) for r in ev.sources)])
    macro = [_estimate(r.discrimination.macro_auroc) for r in ev.sources]
    rows.append([Cell("Macro mean", "bold"), *macro])
    return {"columns": [f"{r.split}: {r.source}" for r in ev.sources], "rows": rows}


def _paired_rows(diffs: list[PairedDifference], macro: Estimate | None) -> list[list[Any]]:
    """A paired comparison's table: per finding both AUROCs, the difference and its verdict."""
    rows: list[list[Any]] = [
        [
            d.finding,
            "" if d.auroc_a is None else f"{d.auroc_a:.3f}",
            "" if d.auroc_b is None else f"{d.auroc_b:.3f}",
            _estimate(d.delta),
            _verdict(d.verdict),
        ]
        for d in diffs
    ]
    verdict = verdict_of(macro) if macro is not None else NOT_ESTIMABLE
    rows.append([Cell("Macro mean", "bold"), "", "", _estimate(macro), _verdict(verdict)])
    return rows


def _paired(ev: Evaluation) -> dict[str, Any] | None:
    """The dual vs frontal-only section: counts, subset and table rows (None: not compared)."""
    if ev.paired is None:
        return None
    rows = _paired_rows(ev.paired, ev.paired_macro)
    return {**ev.paired_counts, "subset": ev.params.paired_subset, "rows": rows}


def _tta(ev: Evaluation) -> dict[str, Any] | None:
    """The test-time augmentation section (None: the scores are single passes)."""
    if ev.tta is None:
        return None
    verdict = verdict_of(ev.tta_macro) if ev.tta_macro is not None else NOT_ESTIMABLE
    return {
        "views": len(ev.tta_draws),
        "rows": _paired_rows(ev.tta, ev.tta_macro),
        "macro": _estimate(ev.tta_macro),
        "verdict": verdict,
    }


def _operating_rows(points: list[OperatingPoint]) -> list[list[Any]]:
    """One operating-point table: threshold, rates with CIs and counts per finding."""
    rows: list[list[Any]] = []
    for op in points:
        if op.threshold is None:
            rows.append([op.finding, Cell("not estimable on validation", "ne"), *[""] * 5])
            continue
        rates = [_percent(e) for e in (op.sensitivity, op.specificity, op.ppv, op.npv)]
        counts = f"{op.tp}/{op.fp}/{op.tn}/{op.fn}"
        rows.append([op.finding, f"{op.threshold:.3f}", *rates, counts])
    return rows


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Nested mappings as ``(dotted.key, text)`` rows; non-strings as JSON."""
    if isinstance(value, Mapping):
        out = []
        for k, v in value.items():
            out += _flatten(f"{prefix}.{k}" if prefix else str(k), v)
        return out
    return [(prefix, json.dumps(value, default=str) if not isinstance(value, str) else value)]


def _figures(ev: Evaluation) -> dict[str, str | None]:
    gain = figure_lateral_gain(ev)
    return {
        "forest": data_uri(figure_forest(ev)),
        "lateral_gain": data_uri(gain) if gain is not None else None,
        "roc": data_uri(figure_roc(ev)),
        "pr": data_uri(figure_pr(ev)),
        "reliability": data_uri(figure_reliability(ev)),
    }


def _pct(value: float | None) -> str | Cell:
    return Cell(NOT_ESTIMABLE, "ne") if value is None else f"{value:.0%}"


def _localisation_rows(loc: Mapping[str, Any]) -> list[list[Any]]:
    """Per finding and view drawn on: n, mass inside vs baseline, pointing game, lateral share."""
    rows: list[list[Any]] = []
    for finding, r in loc.get("findings", {}).items():
        for view in ("frontal", "lateral"):
            if view not in r:
                continue
            v = r[view]
            lift = v["mass_inside"] / v["baseline"] if v["baseline"] > 0 else None
            rows.append(
                [
                    finding,
                    view,
                    v["n"],
                    Cell(f"{v['mass_inside']:.1%}", "bold"),
                    f"{v['baseline']:.1%}",
                    Cell(NOT_ESTIMABLE, "ne") if lift is None else f"{lift:.1f}x",
                    _pct(v["pointing"]),
                    _pct(v["pointing_baseline"]),
                    _pct(r.get("lateral_share")),
                ]
            )
    return rows


def _evidence_rows(loc: Mapping[str, Any]) -> list[list[Any]]:
    """Per finding: the Grad-CAM mass the finding adds to each view, the lateral's share."""
    rows: list[list[Any]] = []
    for finding, r in loc.get("findings", {}).items():
        e = r.get("evidence")
        if e:
            share = e["lateral_share"]
            shown = _pct(None) if share is None else Cell(f"{share:.0%}", "bold")
            gains = [f"{e['frontal']:+.3f}", f"{e['lateral']:+.3f}"]
            rows.append([finding, e["positives"], e["negatives"], *gains, shown])
    return rows


def _saliency(saliency: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The template's saliency section (None: not computed)."""
    if saliency is None:
        return None
    loc = saliency["localisation"]
    return {
        "measurable": bool(loc.get("measurable")),
        "reason": loc.get("reason", ""),
        "studies_per_finding": loc.get("studies_per_finding"),
        "rows": _localisation_rows(loc) if loc.get("measurable") else [],
        "evidence": _evidence_rows(loc) if loc.get("measurable") else [],
        "galleries": saliency["galleries"],
        "kinds": saliency["kinds"],
    }


def render_html(
    ev: Evaluation,
    run_params: Mapping[str, Any] | None = None,
    versions: Mapping[str, Any] | None = None,
    saliency: Mapping[str, Any] | None = None,
    gate: Mapping[str, Any] | None = None,
) -> str:
    """The self-contained HTML report (inline CSS, PNGs as data URIs, no external resources).

    Args:
        ev: from :func:`pipelines.evaluation.summary.summarize`.
        run_params: the params table of the report (default: the report params).
        versions: git / DVC versions to show (the model summary of ``ev`` comes first).
        saliency: the Grad-CAM galleries and localisation of the evaluate stage
            (:func:`pipelines.evaluation.saliency.saliency_results`); None: not computed
            (e.g. ``cxr report`` from saved predictions).
        gate: the out-of-distribution gate's metrics (``evaluate``'s ``gate_results``); None:
            not computed.

    Returns:
        The HTML page.
    """
    p, disc = ev.params, ev.modes["dual"].discrimination
    front = ev.modes.get("frontal_only")
    shown_versions = {"model": ev.model, **(versions or {})} if ev.model else dict(versions or {})
    lateral_gain = None
    if ev.paired_macro is not None:
        lateral_gain = {
            "delta": _estimate(ev.paired_macro),
            "verdict": _verdict(ev.macro_verdict()),
            "studies": ev.paired_counts.get("studies", 0),
        }
    operating_points = ev.modes["dual"].operating_points.items()
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            counts=ev.counts,
            n_findings=len(ev.findings),
            level=f"{p.ci_level:.0%}",
            resamples=p.bootstrap_resamples,
            min_positives=p.min_positives,
            ece_bins=p.ece_bins,
            sensitivity_target=f"{p.sensitivity_target:.0%}",
            frontal_only_method=FRONTAL_ONLY_METHOD,
            notes=ev.notes,
            macro_auroc=_estimate(disc.macro_auroc),
            micro_auroc=_estimate(disc.micro_auroc),
            front_macro_auroc=_estimate(front.discrimination.macro_auroc) if front else None,
            lateral_gain=lateral_gain,
            has_frontal_only=front is not None,
            findings_rows=_findings_rows(ev),
            not_trained_rows=_not_trained_rows(ev),
            source_table=_source_table(ev),
            paired=_paired(ev),
            operating_points=[(rule, _operating_rows(ops)) for rule, ops in operating_points],
            versions=_flatten("", shown_versions),
            run_params=_flatten("", dict(run_params or p.model_dump())),
            figures=_figures(ev),
            saliency=_saliency(saliency),
            calibration=calibration_section(ev),
            subgroups=subgroup_section(ev),
            gate=gate_section(gate),
            tta=_tta(ev),
        )
    )


def _md(est: Estimate | None, digits: int = 3) -> str:
    return NOT_ESTIMABLE if est is None or est.value is None else est.format(digits)


def _markdown_extras(ev: Evaluation) -> list[str]:
    """Calibration, test-time augmentation and flagged subgroup gaps, one line each."""
    lines = []
    dual = ev.modes["dual"]
    if dual.ece_compare is not None and dual.calibration is not None:
        c = dual.ece_compare
        lines.append(
            f"- Calibration ({dual.calibration.method}, fitted on validation): macro ECE "
            f"{_md(c.before['macro'])} -> {_md(c.after['macro'])} (change {_md(c.change['macro'])})"
        )
    if ev.tta is not None:
        lines.append(
            f"- Test-time augmentation ({len(ev.tta_draws)} views), macro AUROC change: "
            f"{_md(ev.tta_macro)} ({verdict_of(ev.tta_macro) if ev.tta_macro else NOT_ESTIMABLE})"
        )
    if ev.subgroups is not None:
        flagged = ev.subgroups.flagged()
        lines.append(
            f"- Subgroup gaps flagged: {len(flagged)} of {ev.subgroups.comparisons} comparisons"
            + "".join(
                f"; {g['finding']} {g['attribute']} {g['high']} vs {g['low']} "
                f"{g['delta'].format(2)}"
                for g in flagged
            )
        )
    return lines


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
            f"({ev.macro_verdict()}; {ev.paired_counts['studies']} studies)"
        )
    lines += [f"- Note: {n}" for n in ev.notes]
    lines += [
        f"- **Not trained** (no metric, no decision): {f}: {why}"
        for f, why in ev.not_trained.items()
    ]
    lines += _markdown_extras(ev)
    for r in ev.sources:
        lines.append(
            f"- AUROC by source, {r.split} split, {r.source}: macro "
            f"{_md(r.discrimination.macro_auroc)} ({r.discrimination.n_studies} studies)"
        )
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
