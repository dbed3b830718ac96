"""The evaluation report: a self-contained HTML page and a short Markdown summary.

:func:`render_html` gives the HTML report of an :class:`Evaluation` (inline CSS, figures as
embedded PNGs, no network resources); :func:`render_markdown` the summary shown in the Prefect UI.
Both show aggregates only: no key, path or free-text column of the predictions.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.evaluation.figures import (
    VERDICT_COLOURS,
    data_uri,
    figure_forest,
    figure_lateral_gain,
    figure_pr,
    figure_reliability,
    figure_roc,
)
from pipelines.evaluation.metrics import NOT_ESTIMABLE, Estimate
from pipelines.evaluation.summary import FRONTAL_ONLY_METHOD, Evaluation

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
    if verdict not in VERDICT_COLOURS:
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
    gain = figure_lateral_gain(ev)
    png = {
        "forest": data_uri(figure_forest(ev)),
        "roc": data_uri(figure_roc(ev)),
        "pr": data_uri(figure_pr(ev)),
        "reliability": data_uri(figure_reliability(ev)),
        "lateral": data_uri(gain) if gain is not None else None,
    }
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
                f"{_badge(ev.macro_verdict())} on {ev.paired_counts.get('studies', 0)} studies",
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
        f'<figure><img alt="AUROC per finding" src="{png["forest"]}"><figcaption>AUROC per '
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
            ["<b>Macro mean</b>", "", "", _fmt(ev.paired_macro), _badge(ev.macro_verdict())]
        )
        parts.append(
            _table(
                ["Finding", "AUROC dual", "AUROC frontal only", f"Difference ({level} CI)", ""],
                prow,
            )
        )
        if png["lateral"]:
            parts.append(
                f'<figure><img alt="lateral view gain" src="{png["lateral"]}"><figcaption>'
                "Green: the lateral view helps (interval above 0); red: it hurts; grey: no "
                "demonstrated difference.</figcaption></figure>"
            )
    else:
        parts.append("<p>Not compared (see the notes above).</p>")

    # Curves
    parts.append("<h2>ROC curves</h2>")
    parts.append(
        f'<figure><img alt="ROC curves" src="{png["roc"]}"><figcaption>Blue: dual view; '
        "dashed orange: frontal only; black dot: the validation-chosen Youden operating point "
        "applied to test. Dotted diagonal: chance.</figcaption></figure>"
    )
    parts.append("<h2>Precision-recall curves</h2>")
    parts.append(
        f'<figure><img alt="PR curves" src="{png["pr"]}"><figcaption>Dotted line: the '
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
        f'<figure><img alt="reliability diagrams" src="{png["reliability"]}"><figcaption>'
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
            f"({ev.macro_verdict()}; {ev.paired_counts['studies']} studies)"
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
