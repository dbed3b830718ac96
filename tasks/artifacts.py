"""Prefect artifacts: what the UI shows after the evaluate and export stages, and after a sweep.

Presentation glue only. The builders read what the stages already wrote (paths from the
``evaluate`` and ``export`` sections of the repository's ``params.yaml``, read with the stages'
own params classes) and return plain rows or Markdown; the ``publish_*`` functions hand them to
Prefect. No ML happens here and the stages never import Prefect.

Artifacts carry finding names, numbers, export format names, experiment names and the path of
the HTML report: never a patient, study or image identifier (the stages' outputs hold none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipelines.config import load_params, parse_section
from tasks.workspace import NAME, scoped

#: The kinds of artifact; a key is ``cxr-<workspace>-<kind>`` (:func:`tasks.workspace.scoped`:
#: keys are global on a server that serves several workspaces). Each run adds a new version.
EVALUATE_AUROC = "evaluate-auroc"
EVALUATE_SUMMARY = "evaluate-summary"
LATERAL_GAIN = "evaluate-lateral-gain"
EVALUATE_SUBGROUPS = "evaluate-subgroups"
EVALUATE_GATE = "evaluate-ood-gate"
EXPORT_PARITY = "export-parity"
SWEEP = "sweep"
#: What Prefect accepts as an artifact key.
ARTIFACT_KEY = NAME

NOT_ESTIMABLE = "not estimable"
NOT_TRAINED = "not trained"


@dataclass(frozen=True)
class OutputPaths:
    """Where the evaluate and export stages write what the artifacts show (absolute)."""

    evaluate_metrics: Path
    findings_metrics: Path
    report_md: Path
    report_html: Path
    export_metrics: Path
    subgroups_metrics: Path | None = None
    ood_metrics: Path | None = None

    @classmethod
    def from_params(cls, repo: str | Path = ".") -> OutputPaths:
        """Read the paths from ``<repo>/params.yaml`` as the stages do (their defaults when unset).

        Raises:
            ConfigError: the params file, or its ``evaluate`` or ``export`` section, is invalid.
        """
        from pipelines.evaluate import EvaluateParams  # the stages' params pull in torch
        from pipelines.export import ExportParams

        root = Path(repo).resolve()
        source = root / "params.yaml"
        params = load_params(source)
        evaluate = parse_section(EvaluateParams, "evaluate", params, source=str(source))
        export = parse_section(ExportParams, "export", params, source=str(source))
        out = root / evaluate.out
        return cls(
            evaluate_metrics=root / evaluate.metrics,
            findings_metrics=root / evaluate.findings_metrics,
            report_md=out / "report.md",
            report_html=out / "report.html",
            export_metrics=root / export.metrics,
            subgroups_metrics=root / evaluate.subgroups_metrics,
            ood_metrics=root / evaluate.ood_metrics,
        )


def read_json(path: Path) -> dict[str, Any]:
    """A stage's JSON output (``NaN`` allowed, as Python's json writes it)."""
    return json.loads(path.read_text(encoding="utf-8"))


def _r(value: Any, digits: int = 3) -> float | None:
    """A finite number rounded for display; None for missing or NaN."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _sig(value: Any, digits: int = 3) -> float | None:
    """A finite number to ``digits`` significant figures (keeps 3e-7 readable); None otherwise."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(f"{float(value):.{digits}g}")


def _level(findings_metrics: Mapping[str, Any]) -> str:
    level = (findings_metrics.get("bootstrap") or {}).get("ci_level", 0.95)
    return f"{level:.0%}"


# ------------------------------------------------------------------------------ evaluate


def auroc_rows(findings_metrics: Mapping[str, Any], headline: Mapping[str, Any]) -> list[dict]:
    """Per-finding test AUROC with its CI and counts, then the macro average.

    A finding whose AUROC could not be estimated (one class only in the test split) shows
    ``not estimable`` in the ``auroc`` column and no CI, never 0.5. A finding the model was not
    trained on (the headline's ``not_trained``) shows ``not trained`` and its reason: no AUROC
    when training could not teach it, its AUROC but no decision when validation gave it no
    threshold.
    """
    not_trained = dict(headline.get("not_trained") or {})
    rows = []
    for name, f in (findings_metrics.get("findings") or {}).items():
        estimable = f.get("auroc") is not None
        status = f.get("status", "ok") if estimable else NOT_ESTIMABLE
        if name in not_trained:
            status = f"{status}; no decision: {not_trained.pop(name)}"
        rows.append(
            {
                "finding": name,
                "auroc": _r(f["auroc"]) if estimable else NOT_ESTIMABLE,
                "ci_low": _r(f.get("auroc_lo")),
                "ci_high": _r(f.get("auroc_hi")),
                "n_pos": f.get("n_pos"),
                "n_neg": f.get("n_neg"),
                "status": status,
            }
        )
    for name, why in not_trained.items():  # left out of every metric
        rows.append(
            {
                "finding": name,
                "auroc": NOT_TRAINED,
                "ci_low": None,
                "ci_high": None,
                "n_pos": None,
                "n_neg": None,
                "status": f"{NOT_TRAINED}: {why}",
            }
        )
    if headline.get("macro_auroc") is not None:
        rows.append(
            {
                "finding": "macro average",
                "auroc": _r(headline["macro_auroc"]),
                "ci_low": _r(headline.get("macro_auroc_lo")),
                "ci_high": _r(headline.get("macro_auroc_hi")),
                "n_pos": None,
                "n_neg": None,
                "status": f"{headline.get('findings_estimable', '?')} findings estimable",
            }
        )
    return rows


def lateral_rows(
    findings_metrics: Mapping[str, Any], headline: Mapping[str, Any]
) -> list[dict] | None:
    """Dual view vs frontal only (lateral view masked): per-finding AUROC difference and verdict.

    ``delta`` = AUROC(dual) - AUROC(lateral masked) on the paired subset, with its paired
    bootstrap CI; the verdict is ``helps`` / ``hurts`` when the CI excludes 0, else ``neutral``.
    None when the model was not scored with the lateral view masked (a frontal-only model).
    """
    gain = headline.get("lateral_gain")
    if not gain:
        return None
    rows = []
    for name, f in (findings_metrics.get("findings") or {}).items():
        delta = f.get("lateral_delta")
        rows.append(
            {
                "finding": name,
                "dual_auroc": _r(f.get("auroc")),
                "frontal_only_auroc": _r(f.get("frontal_only_auroc")),
                "delta": _r(delta) if delta is not None else NOT_ESTIMABLE,
                "ci_low": _r(f.get("lateral_delta_lo")),
                "ci_high": _r(f.get("lateral_delta_hi")),
                "verdict": f.get("lateral_verdict", NOT_ESTIMABLE),
            }
        )
    macro = gain.get("macro_delta")
    lo, hi = gain.get("macro_delta_lo"), gain.get("macro_delta_hi")
    verdict = NOT_ESTIMABLE
    if macro is not None and lo is not None and hi is not None:
        verdict = "helps" if lo > 0 else "hurts" if hi < 0 else "neutral"
    rows.append(
        {
            "finding": "macro average",
            "dual_auroc": _r(headline.get("macro_auroc")),
            "frontal_only_auroc": _r((headline.get("frontal_only") or {}).get("macro_auroc")),
            "delta": _r(macro) if macro is not None else NOT_ESTIMABLE,
            "ci_low": _r(lo),
            "ci_high": _r(hi),
            "verdict": verdict,
        }
    )
    return rows


def summary_markdown(report_md: str, report_html: Path) -> str:
    """The evaluate stage's Markdown summary followed by where its full HTML report is."""
    html = Path(report_html).resolve()
    return (
        report_md.rstrip()
        + "\n\n---\n\n"
        + f"**Full report** (self-contained HTML): [{html.name}]({html.as_uri()})\n\n"
        + f"Path: `{html}`\n\n"
        + "Browsers do not follow `file://` links from a web page: copy the path, or open it "
        + "from a shell on the machine that ran the flow.\n"
    )


def publish_evaluation(repo: str | Path = ".") -> list[str]:
    """Publish the AUROC table, the summary and the dual vs frontal-only table of evaluate.

    Returns:
        The keys published (``cxr-<workspace>-<kind>``: the workspace of ``repo``).

    Raises:
        FileNotFoundError: an evaluate output is missing.
    """
    paths = OutputPaths.from_params(repo)
    auroc_key, summary_key = scoped(EVALUATE_AUROC, repo), scoped(EVALUATE_SUMMARY, repo)
    findings = read_json(paths.findings_metrics)
    headline = read_json(paths.evaluate_metrics)
    level = _level(findings)
    resamples = (findings.get("bootstrap") or {}).get("resamples", "?")
    create_table_artifact(
        auroc_rows(findings, headline),
        key=auroc_key,
        description=(
            f"Test AUROC per finding (dual view) with {level} CIs from {resamples} patient-level "
            f"bootstrap resamples; {headline.get('test_studies', '?')} test studies, "
            f"{headline.get('test_patients', '?')} patients."
        ),
    )
    published = [auroc_key]
    create_markdown_artifact(
        summary_markdown(paths.report_md.read_text(encoding="utf-8"), paths.report_html),
        key=summary_key,
        description="Evaluation summary and the path of the HTML report",
    )
    published.append(summary_key)
    lateral = lateral_rows(findings, headline)
    if lateral is not None:
        gain = headline["lateral_gain"]
        lateral_key = scoped(LATERAL_GAIN, repo)
        create_table_artifact(
            lateral,
            key=lateral_key,
            description=(
                "What the lateral view adds: AUROC(dual) - AUROC(lateral view masked) per finding, "
                f"paired {level} bootstrap CI on the '{gain.get('subset', '?')}' subset "
                f"({gain.get('studies', '?')} studies, {gain.get('patients', '?')} patients); "
                "verdict helps / hurts when the CI excludes 0. The two AUROC columns are on "
                "all test studies."
            ),
        )
        published.append(lateral_key)
    published += _publish_subgroups(paths, repo) + _publish_gate(paths, repo)
    return published


def subgroup_rows(subgroups: Mapping[str, Any]) -> list[dict]:
    """Per finding and attribute with a gap: the groups at each end, the gap, its CI, the flag
    (flagged first)."""
    rows = []
    for attribute, block in (subgroups.get("attributes") or {}).items():
        for finding, entry in block.get("findings", {}).items():
            gap = entry.get("gap")
            if gap is None:
                continue
            rows.append(
                {
                    "finding": finding,
                    "attribute": attribute,
                    "higher": gap["high"],
                    "lower": gap["low"],
                    "gap": _r(gap.get("delta")),
                    "ci_lo": _r(gap.get("delta_lo")),
                    "ci_hi": _r(gap.get("delta_hi")),
                    "flagged": "FLAGGED" if gap.get("flagged") else "",
                }
            )
    return sorted(rows, key=lambda r: (r["flagged"] == "", r["finding"], r["attribute"]))


def gate_markdown(gate: Mapping[str, Any]) -> str:
    """The out-of-distribution gate in a few lines: thresholds, refusals, AUROCs."""
    if not gate.get("fitted"):
        return f"No out-of-distribution gate was fitted: {gate.get('reason', '?')}."
    auroc = gate.get("auroc") or {}
    kinds = ", ".join(f"{k} {v['refused']}/{v['images']}" for k, v in gate["by_kind"].items())
    return "\n".join(
        [
            "# Out-of-distribution gate",
            "",
            f"- In-distribution test studies refused: {gate['test_refused']} of "
            f"{gate['test_studies']}",
            f"- Real non-chest images refused: {gate['reference_refused']} of "
            f"{gate['reference_images']} ({kinds})",
            f"- AUROC, test studies vs those images: Mahalanobis {auroc.get('mahalanobis')}, "
            f"energy {auroc.get('energy')}, max logit {auroc.get('max_logit')}",
            f"- Thresholds (squared distance): {gate['thresholds']}",
        ]
    )


def _publish_subgroups(paths: OutputPaths, repo: str | Path) -> list[str]:
    if paths.subgroups_metrics is None or not paths.subgroups_metrics.is_file():
        return []
    data = read_json(paths.subgroups_metrics)
    rows = subgroup_rows(data)
    if not rows:
        return []
    key = scoped(EVALUATE_SUBGROUPS, repo)
    create_table_artifact(
        rows,
        key=key,
        description=(
            f"Largest AUROC gap per finding between subgroups (sex, age band, view, source), "
            f"paired CI adjusted for the {data.get('comparisons', '?')} comparisons; "
            f"{len(data.get('flagged', []))} flagged (CI excludes 0)."
        ),
    )
    return [key]


def _publish_gate(paths: OutputPaths, repo: str | Path) -> list[str]:
    if paths.ood_metrics is None or not paths.ood_metrics.is_file():
        return []
    key = scoped(EVALUATE_GATE, repo)
    create_markdown_artifact(
        gate_markdown(read_json(paths.ood_metrics)),
        key=key,
        description="What cxr predict refuses: the out-of-distribution gate, measured",
    )
    return [key]


# ------------------------------------------------------------------------------ export


def parity_rows(export_metrics: Mapping[str, Any]) -> list[dict]:
    """Per export format: max |Δprobability| and AUROC drop vs the eager model, tolerances, pass.

    Formats the stage skipped (e.g. ExecuTorch not installed) show with ``passed`` = ``skipped``.
    """
    tolerances = export_metrics.get("tolerances") or {}
    rows = []
    for fmt, fig in (export_metrics.get("parity") or {}).items():
        tol = tolerances.get(fmt) or {}
        max_abs, drop = _sig(fig.get("max_abs_prob")), _sig(fig.get("auroc_drop"))
        tol_abs, tol_drop = _sig(tol.get("max_abs_prob")), _sig(tol.get("max_auroc_drop"))
        ok_abs = None not in (max_abs, tol_abs) and fig["max_abs_prob"] <= tol["max_abs_prob"]
        # no AUROC drop when no finding is estimable (NaN): only |Δprobability| decides
        ok_drop = None in (drop, tol_drop) or fig["auroc_drop"] <= tol["max_auroc_drop"]
        rows.append(
            {
                "format": fmt,
                "max_abs_dprob": max_abs,
                "tol_max_abs_dprob": tol_abs,
                "auroc_drop": NOT_ESTIMABLE if drop is None else drop,
                "tol_auroc_drop": tol_drop,
                "macro_auroc": _r(fig.get("macro_auroc"), 4),
                "passed": "yes" if ok_abs and ok_drop else "NO",
            }
        )
    skipped = export_metrics.get("skipped") or {}
    items = skipped.items() if isinstance(skipped, Mapping) else ((s, "") for s in skipped)
    for fmt, why in items:
        rows.append(
            {
                "format": fmt,
                "max_abs_dprob": None,
                "tol_max_abs_dprob": None,
                "auroc_drop": None,
                "tol_auroc_drop": None,
                "macro_auroc": None,
                "passed": f"skipped: {why}" if why else "skipped",
            }
        )
    return rows


def publish_export(repo: str | Path = ".") -> list[str]:
    """Publish the parity table of the export stage; returns its key.

    Raises:
        FileNotFoundError: the export metrics are missing.
    """
    metrics = read_json(OutputPaths.from_params(repo).export_metrics)
    key = scoped(EXPORT_PARITY, repo)
    create_table_artifact(
        parity_rows(metrics),
        key=key,
        description=(
            f"Exported models vs the eager model on {metrics.get('studies', '?')} test studies: "
            "max |Δprobability| over every study and finding, test macro AUROC drop "
            f"(eager - exported). All within tolerance: {metrics.get('passed', '?')}."
        ),
    )
    return [key]


#: stage name -> what to publish once it has run or was found up to date
PUBLISHERS: dict[str, Callable[[str | Path], list[str]]] = {
    "evaluate": publish_evaluation,
    "export": publish_export,
}


# ------------------------------------------------------------------------------ sweeps


def sweep_rows(experiments: list[Mapping[str, Any]], best: str | None = None) -> list[dict]:
    """One display row per experiment: name, overrides, validation / test macro AUROC, status."""
    return [
        {
            "experiment": e["experiment"],
            "best": "yes" if best is not None and e["experiment"] == best else "",
            "overrides": ", ".join(f"{k}={v}" for k, v in (e.get("overrides") or {}).items()),
            "val_macro_auroc": _r(e.get("val_macro_auroc"), 4),
            "test_macro_auroc": (
                _r(e.get("test_macro_auroc"), 4)
                if e.get("test_macro_auroc") is not None
                else "not evaluated"
            ),
            "status": e.get("status", "ok"),
            "rev": e.get("rev"),
        }
        for e in experiments
    ]


def publish_sweep(
    rows: list[dict], best: str | None, metric: str, repo: str | Path = "."
) -> list[str]:
    """Publish a sweep's comparison table (rows from :func:`sweep_rows`); returns its key."""
    key = scoped(SWEEP, repo)
    create_table_artifact(
        rows,
        key=key,
        description=(
            f"DVC experiments of the sweep; best by {metric}: {best or 'none'}. Nothing was "
            f"applied: adopt it with `dvc exp apply {best or '<name>'}`, then commit."
        ),
    )
    return [key]
