"""The evaluation's files: metrics and thresholds JSONs, curve CSVs, no PHI, unreadable inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import ReportError
from pipelines.evaluation.metrics import auroc_per_finding
from pipelines.evaluation.operating_points import youden_threshold
from pipelines.evaluation.outputs import metrics_dict, render_report, thresholds_dict, write_curves
from pipelines.evaluation.summary import summarize
from pipelines.export.card import read_thresholds
from pipelines.labels import FINDINGS
from tests.pipelines.evaluation.predictions import PARAMS, PHI


def test_no_phi_or_keys_in_any_output(rendered, predictions):
    out, _ = rendered
    keys = set(predictions["study_key"]) | set(predictions["patient_key"])
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            for secret in PHI:
                assert secret not in text, (path.name, secret)
            assert not any(k in text for k in keys), path.name


def test_render_report_files_and_metrics(rendered):
    out, result = rendered
    metrics = result["metrics"]
    assert set(result["files"]) == {
        "html",
        "markdown",
        "metrics",
        "findings_metrics",
        "thresholds",
        "subgroups",
        "plots",
    }
    headline = json.loads((out / "metrics.json").read_text())
    assert headline["auroc"]["Hernia"] == "not estimable"
    assert headline["auroc"]["Mass"] == metrics["findings"]["Mass"]["auroc"]
    assert headline["lateral_delta"]["Mass"] == metrics["findings"]["Mass"]["lateral_delta"]
    assert "findings" not in headline and len(headline) < 20  # readable `dvc metrics show`
    details = json.loads((out / "metrics_findings.json").read_text())
    assert details["findings"] == metrics["findings"]


def test_metrics_numbers_and_not_estimable(predictions):
    ev = summarize(predictions, PARAMS)
    m = metrics_dict(ev)
    test = predictions[(predictions["split"] == "test") & (predictions["mode"] == "dual")]
    test = test.sort_values("study_key")
    y = test[[f"y_{f}" for f in FINDINGS]].to_numpy()
    p = test[[f"p_{f}" for f in FINDINGS]].to_numpy()
    auc = auroc_per_finding(y, p)
    for f, name in enumerate(FINDINGS):
        if name == "Hernia":
            assert m["findings"][name]["status"] == "not estimable"
            assert not any(k.startswith("auroc") for k in m["findings"][name])
        else:
            assert m["findings"][name]["auroc"] == pytest.approx(auc[f], abs=1e-6)
    assert m["macro_auroc"] == pytest.approx(np.nanmean(auc), abs=1e-6)
    assert m["findings_estimable"] == 13
    assert m["test_studies"] == 240 and m["test_patients"] == test["patient_key"].nunique()
    json.dumps(m, allow_nan=False)  # no NaN anywhere


def test_thresholds_are_chosen_on_validation(predictions):
    ev = summarize(predictions, PARAMS)
    t = thresholds_dict(ev)
    val = predictions[(predictions["split"] == "val") & (predictions["mode"] == "dual")]
    val = val.sort_values("study_key")
    mass = ev.modes["dual"].calibration.maps["Mass"]  # thresholds are on the calibrated scale
    assert t["youden"]["Mass"] == youden_threshold(
        val["y_Mass"].to_numpy(), mass.apply(val["p_Mass"].to_numpy())
    )
    assert t["youden"]["Hernia"] is None  # one class on validation too
    assert t["validation"]["n_pos"]["Hernia"] == 0
    assert set(t["frontal_only"]["youden"]) == set(FINDINGS)
    ops = {o.finding: o for o in ev.modes["dual"].operating_points["sensitivity_target"]}
    assert ops["Mass"].threshold == t["sensitivity_target"]["Mass"]


def test_thresholds_file_reads_as_policies_for_the_model_card(predictions, tmp_path):
    """The export stage reads every top-level {finding: number} mapping as one policy."""
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(thresholds_dict(summarize(predictions, PARAMS))))
    data = json.loads(path.read_text())
    policies = {k for k, v in data.items() if isinstance(v, dict) and set(v) & set(FINDINGS)}
    assert policies == {"youden", "sensitivity_target", "not_trained"}
    assert data["not_trained"] == {
        "Hernia": "no validation threshold (no labelled positive validation study)"
    }
    policies -= {"not_trained"}  # reasons, which read_thresholds keeps apart
    assert set(read_thresholds(path)["thresholds"]) == policies
    assert read_thresholds(path)["not_trained"] == data["not_trained"]
    for policy in policies:
        assert all(v is None or 0 <= v <= 1 for v in data[policy].values())


def test_write_curves_replaces_stale_files(predictions, tmp_path):
    (tmp_path / "roc").mkdir()
    (tmp_path / "roc" / "Stale.csv").write_text("fpr,tpr\n")
    ev = summarize(predictions, {"bootstrap_resamples": 20})
    write_curves(ev, tmp_path)
    names = sorted(p.stem for p in (tmp_path / "roc").glob("*.csv"))
    assert names == sorted(set(FINDINGS) - {"Hernia"})
    pr = pd.read_csv(tmp_path / "pr" / "Mass.csv")
    assert pr["recall"].is_monotonic_increasing and pr["recall"].iloc[0] == 0


def test_missing_or_unreadable_predictions_file(tmp_path):
    with pytest.raises(ReportError, match="not found"):
        render_report(tmp_path / "nope.parquet", tmp_path / "out")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ReportError, match="bad.parquet"):
        render_report(tmp_path / "bad.parquet", tmp_path / "out")
