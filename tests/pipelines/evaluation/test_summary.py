"""summarize: the numbers of the evaluation, what it notes when it cannot compute, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import ReportError
from pipelines.evaluation.outputs import metrics_dict
from pipelines.evaluation.summary import ReportParams, report_params, summarize
from pipelines.labels import FINDINGS
from tests.pipelines.evaluation.predictions import LATERAL_SIGNAL, PARAMS


def test_lateral_only_findings_gain_with_ci_excluding_zero(predictions):
    ev = summarize(predictions, PARAMS)
    verdicts = {d.finding: d for d in ev.paired}
    for name in LATERAL_SIGNAL:
        assert verdicts[name].verdict == "helps"
        assert verdicts[name].delta.lower > 0
    for name in set(FINDINGS) - set(LATERAL_SIGNAL) - {"Hernia"}:
        assert verdicts[name].verdict == "neutral"
        assert verdicts[name].delta.value == 0  # identical scores without lateral signal
    assert verdicts["Hernia"].verdict == "not estimable"
    assert ev.macro_verdict() == "helps"
    test = predictions[(predictions["split"] == "test") & (predictions["mode"] == "dual")]
    assert ev.paired_counts["studies"] == int(test["has_lateral"].sum())
    m = metrics_dict(ev)
    assert m["lateral_gain"]["n_helps"] == 2 and m["lateral_gain"]["macro_delta_lo"] > 0
    everyone = summarize(predictions, {**PARAMS, "paired_subset": "all"})
    assert everyone.paired_counts["studies"] == 240


def test_without_validation_or_frontal_only_rows(predictions):
    test_dual = predictions[(predictions["split"] == "test") & (predictions["mode"] == "dual")]
    ev = summarize(test_dual, {"bootstrap_resamples": 20})
    assert ev.paired is None and not ev.modes["dual"].operating_points
    assert any("validation" in n for n in ev.notes)
    assert any("frontal-only" in n for n in ev.notes)
    assert ev.macro_verdict() == "not estimable"
    m = metrics_dict(ev)
    assert "lateral_gain" not in m and "youden" not in m["findings"]["Mass"]


def test_no_lateral_view_on_test_means_no_comparison(predictions):
    frontal_only_studies = predictions.assign(has_lateral=False)
    ev = summarize(frontal_only_studies, {"bootstrap_resamples": 20})
    assert set(ev.modes) == {"dual", "frontal_only"} and ev.paired is None
    assert ev.notes == ["No test study has a lateral view: dual vs frontal-only not compared."]
    assert ev.counts["test_studies_with_lateral"] == 0
    everyone = summarize(frontal_only_studies, {"bootstrap_resamples": 20, "paired_subset": "all"})
    assert everyone.paired_counts["studies"] == 240 and not everyone.notes


def with_single_pass(predictions: pd.DataFrame, noise: float, seed: int = 5) -> pd.DataFrame:
    """The table as TTA scores: ``p_`` as given, ``s_`` a noisier single pass of them."""
    rng = np.random.default_rng(seed)
    df = predictions.copy()
    for f in FINDINGS:
        logit = np.log(df[f"p_{f}"] / (1 - df[f"p_{f}"]))
        df[f"s_{f}"] = 1 / (1 + np.exp(-(logit + noise * rng.normal(size=len(df)))))
    df.attrs["tta"] = {"views": 4, "draws": [{"frontal": {}, "lateral": {}}] * 4}
    return df


def test_test_time_augmentation_is_compared_with_the_single_pass(predictions):
    ev = summarize(with_single_pass(predictions, noise=1.5), PARAMS)
    assert len(ev.tta_draws) == 4 and ev.tta_macro.lower > 0
    helps = {d.finding for d in ev.tta if d.verdict == "helps"}
    assert len(helps) >= 8  # of 13 estimable: the noise costs every finding some AUROC
    assert all(d.verdict != "hurts" for d in ev.tta)
    m = metrics_dict(ev)
    assert m["tta"]["views"] == 4 and m["tta"]["macro_delta_lo"] > 0
    assert {f for f, row in m["findings"].items() if row.get("tta_verdict") == "helps"} == helps
    same = summarize(with_single_pass(predictions, noise=0.0), PARAMS)
    assert same.tta_macro.value == 0 and {d.verdict for d in same.tta} <= {
        "neutral",
        "not estimable",
    }
    plain = summarize(predictions, PARAMS)  # no single-pass columns: nothing to compare
    assert plain.tta is None and "tta" not in metrics_dict(plain)


def test_single_pass_probabilities_are_checked(predictions):
    bad = with_single_pass(predictions, noise=0.5).assign(s_Mass=1.5)
    with pytest.raises(ReportError, match=r"within \[0, 1\]"):
        summarize(bad, {"bootstrap_resamples": 5})


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.drop(columns=["patient_key"]), "missing columns"),
        (lambda d: d[d["split"] == "val"], "no dual-mode rows of the test split"),
        (lambda d: pd.concat([d, d.iloc[:1]]), "duplicate"),
        (lambda d: d.assign(p_Mass=d["p_Mass"] + 1), r"within \[0, 1\]"),
        (lambda d: d.assign(y_Mass=2.0), "labels must be 1, 0"),
        (lambda d: d.assign(mode="lateral"), "unknown mode"),
        (lambda d: d.drop(index=d.index[-1]), "dual and frontal_only rows differ"),
        (lambda d: d[[c for c in d.columns if not c.startswith("p_")]], "column pairs"),
    ],
)
def test_bad_predictions_are_rejected_with_a_reason(predictions, mutate, message):
    with pytest.raises(ReportError, match=message):
        summarize(mutate(predictions.copy()), {"bootstrap_resamples": 5}, source="preds.parquet")


def test_bad_params():
    with pytest.raises(ReportError, match="ci_level"):
        report_params({"ci_level": 1.5})
    p = report_params({"seed": 4, "checkpoint": "models/best.pt"})  # unknown keys ignored
    assert p == ReportParams(seed=4)
