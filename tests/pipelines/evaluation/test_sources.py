"""AUROC per source (external validation) and the not-trained findings in the evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import ReportError
from pipelines.evaluation.metrics import auroc_per_finding
from pipelines.evaluation.outputs import metrics_dict, split_metrics
from pipelines.evaluation.report import render_html, render_markdown
from pipelines.evaluation.summary import summarize
from pipelines.labels import FINDINGS
from tests.pipelines.evaluation.predictions import fake_predictions

PARAMS = {"bootstrap_resamples": 50}


def two_sources():
    """Val from 'nih' only; test from 'nih' (the first 100 studies) and 'padchest' (the rest)."""
    preds = fake_predictions(n_val=120, n_test=240, seed=4, one_class=None)
    number = preds["study_key"].str[-4:].astype(int)
    held_out = (preds["split"] == "test") & (number >= 100)
    preds["source"] = np.where(held_out, "padchest", "nih")
    return preds


def test_auroc_is_broken_down_per_split_and_source():
    preds = two_sources()
    ev = summarize(preds, PARAMS)
    cells = [(r.split, r.source) for r in ev.sources]
    assert cells == [("test", "nih"), ("test", "padchest"), ("val", "nih")]
    padchest = next(r for r in ev.sources if r.source == "padchest").discrimination
    rows = preds[(preds["split"] == "test") & (preds["mode"] == "dual")]
    rows = rows[rows["source"] == "padchest"].sort_values("study_key")
    y = rows[[f"y_{f}" for f in FINDINGS]].to_numpy()
    p = rows[[f"p_{f}" for f in FINDINGS]].to_numpy()
    expected = auroc_per_finding(y, p)
    got = np.array([f.auroc.value for f in padchest.findings], dtype=float)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert padchest.n_studies == 140 and padchest.n_patients == rows["patient_key"].nunique()
    lo, hi = padchest.macro_auroc.lower, padchest.macro_auroc.upper
    assert lo < padchest.macro_auroc.value < hi  # its own bootstrap: an interval
    headline, details = split_metrics(metrics_dict(ev))
    assert set(headline["by_source_macro_auroc"]["test"]) == {"nih", "padchest"}
    block = details["by_source"]["test"]["padchest"]
    assert block["studies"] == 140 and block["findings"]["Mass"]["auroc"] == pytest.approx(
        expected[FINDINGS.index("Mass")], abs=1e-6
    )
    html = render_html(ev)
    assert "AUROC by source" in html and "test: padchest" in html and "val: nih" in html
    assert "test, padchest: macro" in render_markdown(ev).replace(" split,", ",")


def test_one_source_gives_no_breakdown():
    preds = fake_predictions(n_val=60, n_test=120, seed=1)
    preds["source"] = "nih"
    ev = summarize(preds, PARAMS)
    assert ev.sources == [] and "by_source" not in metrics_dict(ev)
    assert "AUROC by source" not in render_html(ev)


def test_untrained_findings_are_left_out_and_listed():
    preds = fake_predictions(n_val=80, n_test=160, seed=2)
    reason = "too few labelled training studies (0 positive, 0 negative; at least 10 and 10 needed)"
    preds.attrs["untrained"] = {"Mass": reason}
    preds.attrs["label_coverage"] = {
        "train": {"Mass": {"positives": 0, "negatives": 0, "unannotated": 700}}
    }
    ev = summarize(preds, PARAMS)
    assert "Mass" not in ev.findings and len(ev.findings) == len(FINDINGS) - 1
    assert ev.not_trained["Mass"] == reason
    assert ev.not_trained["Hernia"].startswith("no validation threshold")  # one class in val
    assert "Hernia" in ev.findings  # scored: AUROC needs no threshold
    metrics = metrics_dict(ev)
    scored = [
        metrics["findings"][f]["auroc"] for f in ev.findings if "auroc" in metrics["findings"][f]
    ]
    assert metrics["macro_auroc"] == pytest.approx(np.mean(scored), abs=1e-6)
    headline, _ = split_metrics(metrics)
    assert headline["auroc"]["Mass"] == "not trained"
    html = render_html(ev)
    assert "Findings the model was not trained on" in html and reason in html
    assert "<td>0</td><td>0</td><td>700</td>" in html  # the training label counts
    assert "**Not trained**" in render_markdown(ev)
    preds.attrs["untrained"] = dict.fromkeys(FINDINGS, reason)
    with pytest.raises(ReportError, match="no trained finding to evaluate"):
        summarize(preds, PARAMS)
