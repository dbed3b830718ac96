"""The sections of the evaluation report added for reviewers: calibration, subgroups and the
out-of-distribution gate, as the rows and texts the template shows (:mod:`pipelines.evaluation.
report` renders them), plus the table cell type both modules use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.evaluation.bootstrap import Estimate
from pipelines.evaluation.metrics import NOT_ESTIMABLE
from pipelines.evaluation.summary import Evaluation


@dataclass(frozen=True)
class Cell:
    """A table cell or card value the template styles (plain ones are just ``str`` / ``int``).

    Attributes:
        text: what it shows.
        style: ``bold``, ``badge`` (a verdict badge) or the CSS class of a span (``ne``: not
            estimable or not available, ``few``: few positives).
    """

    text: str
    style: str


def estimate_cell(est: Estimate | None, digits: int = 3) -> str | Cell:
    if est is None or est.value is None:
        return Cell(NOT_ESTIMABLE, "ne")
    return est.format(digits)


def calibration_section(ev: Evaluation) -> dict[str, Any] | None:
    """The calibration section: the method per mode and the ECE before / after per finding."""
    dual = ev.modes["dual"]
    compare, cal = dual.ece_compare, dual.calibration
    if compare is None:
        return None
    rows: list[list[Any]] = []
    for name in [*ev.findings, "macro"]:
        rel = dual.reliability_raw.get(name)
        mean_raw = _mean_predicted(rel) if rel is not None else ""
        label: Any = Cell("Macro mean", "bold") if name == "macro" else name
        rows.append(
            [
                label,
                mean_raw,
                _observed(rel) if rel is not None else "",
                estimate_cell(compare.before[name]),
                estimate_cell(compare.after[name]),
                estimate_cell(compare.change[name]),
            ]
        )
    losses = ", ".join(f"{m} {v:.1f}" for m, v in (cal.cv_loss if cal else {}).items())
    modes = {m: r.calibration.method for m, r in ev.modes.items() if r.calibration is not None}
    return {"method": cal.method if cal else "none", "losses": losses, "modes": modes,
            "rows": rows}  # fmt: skip


def _mean_predicted(rel: Any) -> str:
    n = rel["count"].sum()
    return f"{(rel['mean_predicted'] * rel['count']).sum() / n:.3f}" if n else ""


def _observed(rel: Any) -> str:
    n = rel["count"].sum()
    return f"{(rel['observed'].fillna(0) * rel['count']).sum() / n:.3f}" if n else ""


def subgroup_section(ev: Evaluation) -> dict[str, Any] | None:
    """Per attribute a findings x groups AUROC table with the largest gap and its flag."""
    sg = ev.subgroups
    if sg is None:
        return None
    tables = []
    for a in sg.attributes:
        rows: list[list[Any]] = []
        for finding, scores in a.scores.items():
            cells: list[Any] = [finding]
            for s in scores:
                text = estimate_cell(s.auroc, 2)
                cells.append(text if s.compared else Cell(f"{_plain(text)} (n+ {s.n_pos})", "few"))
            gap = a.gaps.get(finding)
            if gap is None:
                cells += [Cell("not compared", "ne"), ""]
            else:
                cells += [f"{gap.high} − {gap.low}: {gap.delta.format(2)}",
                          Cell("flagged", "badge hurts") if gap.flagged else ""]  # fmt: skip
            rows.append(cells)
        counts = [f"{s.group} ({s.n_studies})" for s in next(iter(a.scores.values()))]
        tables.append({"attribute": a.attribute, "columns": counts, "rows": rows})
    flagged = [
        f"{g['finding']}: {g['attribute']} {g['high']} vs {g['low']}, gap {g['delta'].format(2)}"
        for g in sg.flagged()
    ]
    return {
        "tables": tables,
        "flagged": flagged,
        "comparisons": sg.comparisons,
        "adjusted": f"{sg.adjusted_level:.4%}",
        "min_positives": sg.min_positives,
        "skipped": [f"{a}: {why}" for a, why in sg.skipped.items()],
    }


def _plain(text: str | Cell) -> str:
    return text.text if isinstance(text, Cell) else text


def gate_section(gate: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The out-of-distribution section (None: not computed, e.g. ``cxr report``)."""
    if not gate:
        return None
    if not gate.get("fitted"):
        return {"fitted": False, "reason": gate.get("reason", "")}
    auroc = gate["auroc"]
    rows = [
        [k, gate["by_kind"][k]["images"], gate["by_kind"][k]["refused"]] for k in gate["by_kind"]
    ]
    scores = [
        ["Mahalanobis distance of each view's features (the gate)", _auc(auroc["mahalanobis"])],
        ["Energy of the outputs (sum of softplus of the logits)", _auc(auroc["energy"])],
        ["Maximum logit", _auc(auroc["max_logit"])],
    ]
    rate = gate["test_refusal_rate"]
    return {
        "fitted": True,
        "thresholds": ", ".join(f"{v} {t:.0f}" for v, t in gate["thresholds"].items()),
        "fit_refusal": f"{gate['fit_refusal']:.1%}",
        "test": f"{gate['test_refused']} of {gate['test_studies']}"
        + (f" ({rate:.1%})" if rate is not None else ""),
        "reference": f"{gate['reference_refused']} of {gate['reference_images']}",
        "kinds": rows,
        "scores": scores,
        "missing": [f"{n}: {why}" for n, why in gate.get("not_in_reference", {}).items()],
    }


def _auc(value: float | None) -> str | Cell:
    return Cell("n/a", "ne") if value is None else f"{value:.3f}"
