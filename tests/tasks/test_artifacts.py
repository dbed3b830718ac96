"""Artifact builders on real stage outputs (a toy-scale run, trimmed): values, keys, no PHI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from tasks import artifacts
from tasks.artifacts import (
    ARTIFACT_KEY,
    NOT_ESTIMABLE,
    SWEEP,
    OutputPaths,
    auroc_rows,
    gate_markdown,
    lateral_rows,
    parity_rows,
    read_json,
    subgroup_rows,
    summary_markdown,
)
from tasks.workspace import WORKSPACE_ENV, scoped, workspace
from tests.conftest import git

FIXTURE = Path(__file__).parent / "fixtures" / "artifacts"
FINDINGS = {"Atelectasis", "Cardiomegaly", "Pneumonia", "Hernia"}
PHI = ("Doe^Jane", "MRN1234567", "A987654321", "19620314", "St Elsewhere General")


@pytest.fixture
def outputs() -> OutputPaths:
    return OutputPaths.from_params(FIXTURE)


def test_paths_come_from_params(tmp_path):
    (tmp_path / "params.yaml").write_text(
        "evaluate:\n  out: out/ev\n  metrics: m/e.json\n  findings_metrics: m/f.json\n"
        "export:\n  metrics: m/x.json\n"
    )
    paths = OutputPaths.from_params(tmp_path)
    root = tmp_path.resolve()
    assert paths.evaluate_metrics == root / "m/e.json"
    assert paths.findings_metrics == root / "m/f.json"
    assert paths.report_md == root / "out/ev/report.md"
    assert paths.report_html == root / "out/ev/report.html"
    assert paths.export_metrics == root / "m/x.json"


def test_unset_paths_are_the_stages_defaults_and_a_bad_section_is_refused(tmp_path):
    from pipelines.evaluate import EvaluateParams
    from pipelines.export import ExportParams

    (tmp_path / "params.yaml").write_text("base:\n  seed: 1\n")
    paths = OutputPaths.from_params(tmp_path)
    root = tmp_path.resolve()
    assert paths.evaluate_metrics == root / EvaluateParams().metrics
    assert paths.findings_metrics == root / EvaluateParams().findings_metrics
    assert paths.report_html == root / EvaluateParams().out / "report.html"
    assert paths.export_metrics == root / ExportParams().metrics
    (tmp_path / "params.yaml").write_text("export:\n  metric: m/x.json\n")
    with pytest.raises(ConfigError, match="export.metric"):
        OutputPaths.from_params(tmp_path)


def test_auroc_table(outputs):
    rows = auroc_rows(read_json(outputs.findings_metrics), read_json(outputs.evaluate_metrics))
    by = {r["finding"]: r for r in rows}
    assert list(by) == ["Atelectasis", "Cardiomegaly", "Hernia", "Pneumonia", "macro average"]
    assert by["Cardiomegaly"] == {
        "finding": "Cardiomegaly",
        "auroc": 0.464,
        "ci_low": 0.287,
        "ci_high": 0.678,
        "n_pos": 9,
        "n_neg": 17,
        "status": "ok",
    }
    assert (by["Pneumonia"]["auroc"], by["Pneumonia"]["n_pos"], by["Pneumonia"]["n_neg"]) == (
        0.633,
        6,
        20,
    )
    # one class only in the test split: said so, never a made-up 0.5
    assert by["Hernia"]["auroc"] == NOT_ESTIMABLE
    assert by["Hernia"]["status"] == NOT_ESTIMABLE
    assert (by["Hernia"]["ci_low"], by["Hernia"]["ci_high"]) == (None, None)
    assert (by["Hernia"]["n_pos"], by["Hernia"]["n_neg"]) == (0, 26)
    macro = by["macro average"]
    assert (macro["auroc"], macro["ci_low"], macro["ci_high"]) == (0.492, 0.434, 0.546)
    for row in rows[:-1]:
        if row["auroc"] != NOT_ESTIMABLE:
            assert row["ci_low"] <= row["auroc"] <= row["ci_high"]


def test_auroc_table_lists_the_findings_the_model_was_not_trained_on(outputs):
    headline = read_json(outputs.evaluate_metrics)
    headline["not_trained"] = {
        "Mass": "too few labelled training studies (0 positive, 0 negative)",
        "Hernia": "no validation threshold (no labelled positive validation study)",
    }
    rows = auroc_rows(read_json(outputs.findings_metrics), headline)
    by = {r["finding"]: r for r in rows}
    assert list(by)[-2:] == ["Mass", "macro average"]
    assert by["Mass"]["auroc"] == "not trained" and by["Mass"]["ci_low"] is None
    assert by["Mass"]["status"].startswith("not trained: too few labelled training studies")
    assert by["Hernia"]["status"] == (
        "not estimable; no decision: no validation threshold (no labelled positive validation "
        "study)"
    )


def test_lateral_table(outputs):
    rows = lateral_rows(read_json(outputs.findings_metrics), read_json(outputs.evaluate_metrics))
    by = {r["finding"]: r for r in rows}
    assert by["Atelectasis"] == {
        "finding": "Atelectasis",
        "dual_auroc": 0.474,
        "frontal_only_auroc": 0.421,
        "delta": 0.056,
        "ci_low": 0.0,
        "ci_high": 0.139,
        "verdict": "neutral",
    }
    assert (by["Pneumonia"]["delta"], by["Pneumonia"]["ci_low"]) == (-0.053, -0.194)
    assert by["Hernia"]["delta"] == NOT_ESTIMABLE
    assert by["Hernia"]["verdict"] == NOT_ESTIMABLE
    macro = by["macro average"]
    assert (macro["delta"], macro["ci_low"], macro["ci_high"]) == (0.004, -0.038, 0.049)
    assert macro["verdict"] == "neutral"  # the CI spans 0
    assert (macro["dual_auroc"], macro["frontal_only_auroc"]) == (0.492, 0.492)


@pytest.mark.parametrize(
    ("lo", "hi", "verdict"),
    [(0.01, 0.05, "helps"), (-0.05, -0.01, "hurts"), (-0.1, 0.1, "neutral")],
)
def test_macro_verdict_follows_the_ci(outputs, lo, hi, verdict):
    headline = read_json(outputs.evaluate_metrics)
    headline["lateral_gain"] |= {"macro_delta_lo": lo, "macro_delta_hi": hi}
    rows = lateral_rows(read_json(outputs.findings_metrics), headline)
    assert rows[-1]["verdict"] == verdict


def test_no_lateral_table_for_a_frontal_only_model(outputs):
    headline = read_json(outputs.evaluate_metrics)
    del headline["lateral_gain"]
    assert lateral_rows(read_json(outputs.findings_metrics), headline) is None


def test_summary_markdown_links_the_html_report(outputs):
    md = summary_markdown(outputs.report_md.read_text(), outputs.report_html)
    assert md.startswith("# Evaluation summary")
    assert "**Macro AUROC (dual view): 0.492 (0.434–0.546)**" in md
    html = outputs.report_html.resolve()
    assert f"({html.as_uri()})" in md
    assert html.as_uri().startswith("file:///")
    assert f"`{html}`" in md


def test_subgroup_table_puts_the_flagged_gaps_first(outputs):
    rows = subgroup_rows(read_json(outputs.subgroups_metrics))
    assert rows[0] == {
        "finding": "Atelectasis",
        "attribute": "sex",
        "higher": "M",
        "lower": "F",
        "gap": 0.285,
        "ci_lo": 0.145,
        "ci_hi": 0.425,
        "flagged": "FLAGGED",
    }
    assert [r["flagged"] for r in rows[1:]] == [""] * (len(rows) - 1)
    assert {r["finding"] for r in rows} <= FINDINGS


def test_gate_markdown_says_what_is_refused(outputs):
    text = gate_markdown(read_json(outputs.ood_metrics))
    assert "In-distribution test studies refused: 2 of 175" in text
    assert "Real non-chest images refused: 14 of 14" in text and "CT 3/3" in text
    assert "Mahalanobis 1.0" in text
    assert gate_markdown({"fitted": False, "reason": "no validation studies"}).startswith("No ")


def test_parity_table():
    rows = parity_rows(read_json(FIXTURE / "metrics" / "export.json"))
    by = {r["format"]: r for r in rows}
    assert list(by) == ["int8", "mobile", "onnx", "torchscript", "executorch"]
    assert by["onnx"] == {
        "format": "onnx",
        "max_abs_dprob": 1.31e-06,
        "tol_max_abs_dprob": 0.0001,
        "auroc_drop": -0.00579,
        "tol_auroc_drop": 0.001,
        "macro_auroc": 0.4974,
        "passed": "yes",
    }
    assert (by["int8"]["max_abs_dprob"], by["int8"]["tol_max_abs_dprob"]) == (0.0923, 0.1)
    assert by["torchscript"]["max_abs_dprob"] == 0.0
    assert by["executorch"]["passed"] == "skipped: the executorch package is not installed"


def test_parity_table_flags_a_format_beyond_tolerance():
    metrics = read_json(FIXTURE / "metrics" / "export.json")
    metrics["parity"]["int8"]["max_abs_prob"] = 0.2
    metrics["parity"]["onnx"]["auroc_drop"] = 0.01
    metrics["parity"]["mobile"]["auroc_drop"] = float("nan")  # no estimable finding
    by = {r["format"]: r for r in parity_rows(metrics)}
    assert by["int8"]["passed"] == "NO"
    assert by["onnx"]["passed"] == "NO"
    assert (by["mobile"]["auroc_drop"], by["mobile"]["passed"]) == (NOT_ESTIMABLE, "yes")


@pytest.fixture
def captured(monkeypatch) -> list[dict]:
    """Artifacts the publishers create, captured instead of sent to a Prefect API."""
    calls: list[dict] = []

    def table(table, key=None, description=None):
        calls.append({"type": "table", "key": key, "data": table, "description": description})

    def markdown(markdown, key=None, description=None):
        calls.append({"type": "markdown", "key": key, "data": markdown, "description": description})

    monkeypatch.setattr(artifacts, "create_table_artifact", table)
    monkeypatch.setattr(artifacts, "create_markdown_artifact", markdown)
    monkeypatch.delenv(WORKSPACE_ENV, raising=False)
    return calls


def _repo_with_planted_phi(tmp_path: Path) -> Path:
    """The fixture outputs, plus PHI a careless upstream might leave in them."""
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURE, repo)
    findings_path = repo / "metrics" / "evaluate_findings.json"
    findings = read_json(findings_path)
    findings["findings"]["Atelectasis"] |= {"PatientName": PHI[0], "patient_id": PHI[1]}
    findings["source"] = PHI[2]
    findings_path.write_text(json.dumps(findings))
    headline_path = repo / "metrics" / "evaluate.json"
    headline_path.write_text(
        json.dumps(read_json(headline_path) | {"AccessionNumber": PHI[2], "dob": PHI[3]})
    )
    export_path = repo / "metrics" / "export.json"
    export_path.write_text(
        json.dumps(read_json(export_path) | {"institution": PHI[4], "example_study": PHI[1]})
    )
    return repo


def test_publishers_use_valid_keys_and_carry_no_phi(captured, tmp_path):
    repo = _repo_with_planted_phi(tmp_path)
    keys = artifacts.publish_evaluation(repo) + artifacts.publish_export(repo)
    ns = workspace(repo)
    assert keys == [
        f"cxr-{ns}-evaluate-auroc",
        f"cxr-{ns}-evaluate-summary",
        f"cxr-{ns}-evaluate-lateral-gain",
        f"cxr-{ns}-evaluate-subgroups",
        f"cxr-{ns}-evaluate-ood-gate",
        f"cxr-{ns}-export-parity",
    ]
    assert [c["key"] for c in captured] == keys
    assert all(ARTIFACT_KEY.match(k) for k in keys)
    assert_no_phi(captured)
    tables = [c for c in captured if c["type"] == "table"]
    for table in tables:
        words = {v for row in table["data"] for v in row.values() if isinstance(v, str)} | {
            k for row in table["data"] for k in row
        }
        allowed = FINDINGS | {
            "macro average",
            NOT_ESTIMABLE,
            "ok",
            "few positives",
            "helps",
            "hurts",
            "neutral",
            "yes",
            "NO",
            *("int8", "mobile", "onnx", "torchscript", "executorch"),
            *("F", "M", "FLAGGED", "sex"),
        }
        extra = {w for w in words if w not in allowed and not re.fullmatch(r"[a-z_0-9]*", w)}
        extra -= {"3 findings estimable", "skipped: the executorch package is not installed"}
        assert not extra, f"unexpected text in {table['key']}: {extra}"


def assert_no_phi(captured: list[dict], phi=PHI) -> None:
    """No PHI value anywhere in the artifacts' data or descriptions."""
    text = json.dumps([{k: c[k] for k in ("key", "data", "description")} for c in captured])
    found = [p for p in phi if p.lower() in text.lower()]
    assert not found, f"PHI in artifacts: {found}"


def test_a_missing_output_raises_for_the_flow_to_warn(captured, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURE, repo)
    (repo / "metrics" / "export.json").unlink()
    with pytest.raises(FileNotFoundError):
        artifacts.publish_export(repo)
    assert captured == []


def _checkout(path: Path, source: Path | None = None, message: str = "outputs") -> Path:
    """The fixture outputs as a committed git repository, or a clone of ``source``."""
    if source is not None:
        git(source.parent, "clone", "-q", str(source), str(path))
        return path
    shutil.copytree(FIXTURE, path)
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "commit", "-qm", message)
    return path


def test_two_workspaces_on_one_server_keep_their_own_histories(captured, tmp_path):
    """Two clones of one repository publish under different keys (one server keeps both
    histories apart); each keeps its keys run after run, and the repository part is shared."""
    first = _checkout(tmp_path / "first")
    second = _checkout(tmp_path / "second", source=first)
    other = _checkout(tmp_path / "other", message="another project")  # the same files
    keys = {r: artifacts.publish_evaluation(r) for r in (first, second, other)}
    assert not set(keys[first]) & set(keys[second])
    assert not set(keys[first]) & set(keys[other])
    assert artifacts.publish_evaluation(first) == keys[first]
    n = len(keys[first])  # the next run: new versions, same keys
    assert [c["key"] for c in captured[-n:]] == keys[first]
    assert workspace(first)[:6] == workspace(second)[:6] != workspace(other)[:6]
    assert artifacts.publish_sweep([], None, "val", repo=first) == [scoped(SWEEP, first)]
    assert all(ARTIFACT_KEY.match(k) for ks in keys.values() for k in ks)
