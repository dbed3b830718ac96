"""The report from saved predictions: numbers, self-containment, no PHI, error messages."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import ReportError
from pipelines.evaluation.metrics import auroc_per_finding, youden_threshold
from pipelines.evaluation.provenance import collect_versions, dvc_hashes, git_commit
from pipelines.evaluation.report import (
    ReportParams,
    metrics_dict,
    render_report,
    report_params,
    summarize,
    thresholds_dict,
    write_curves,
)
from pipelines.labels import FINDINGS

LATERAL_SIGNAL = ("Mass", "Consolidation")  # simulated: visible on the lateral view only
PHI = ("DOE^JOHN", "MRN-998877", "19450317", "ACC-123456", "St. Elsewhere Hospital")
PARAMS = {"bootstrap_resamples": 200, "seed": 1}


def fake_predictions(
    n_val: int = 120, n_test: int = 240, seed: int = 0, one_class: str | None = "Hernia"
) -> pd.DataFrame:
    """Dual and frontal-only predictions; lateral-only findings gain from the lateral view."""
    rng = np.random.default_rng(seed)
    frames = []
    for split, n in (("val", n_val), ("test", n_test)):
        patient = rng.integers(0, n // 2, n)
        has_lateral = rng.random(n) < 0.8
        y = (rng.random((n, len(FINDINGS))) < 0.25).astype(float)
        y[rng.random(y.shape) < 0.05] = np.nan
        if one_class:
            y[:, FINDINGS.index(one_class)] = 0.0
        yy = np.nan_to_num(y)
        lateral = np.array([f in LATERAL_SIGNAL for f in FINDINGS], dtype=float)
        noise = rng.normal(size=y.shape)
        frontal_logit = noise + 1.2 * yy * (1 - lateral) - 1.5
        dual_logit = frontal_logit + 1.8 * yy * lateral * has_lateral[:, None]
        for mode, logit in (("dual", dual_logit), ("frontal_only", frontal_logit)):
            df = pd.DataFrame(
                {
                    "split": split,
                    "study_key": [f"{split}-study-{i:04d}" for i in range(n)],
                    "patient_key": [f"{split}-patient-{k:04d}" for k in patient],
                    "has_lateral": has_lateral,
                    "mode": mode,
                }
            )
            for f, name in enumerate(FINDINGS):
                df[f"y_{name}"] = y[:, f]
            for f, name in enumerate(FINDINGS):
                df[f"p_{name}"] = 1 / (1 + np.exp(-logit[:, f]))
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def predictions() -> pd.DataFrame:
    return fake_predictions()


@pytest.fixture(scope="module")
def rendered(predictions, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    planted = predictions.copy()
    planted["PatientName"] = PHI[0]  # columns a careless upstream might leave in
    planted["PatientID"] = PHI[1]
    planted["StudyDate"] = PHI[2]
    planted["AccessionNumber"] = PHI[3]
    planted["InstitutionName"] = PHI[4]
    planted.to_parquet(out / "predictions.parquet")
    result = render_report(
        out / "predictions.parquet",
        out / "report",
        {**PARAMS, "batch_size": 8},
        {"git": {"commit": "a" * 40, "dirty": False}, "dvc": {"models/best.pt": "b" * 32}},
    )
    return out / "report", result


def test_html_is_self_contained_and_embeds_figures(rendered):
    out, _ = rendered
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://", html, re.IGNORECASE)
    assert not re.search(r"<script|<link|<iframe|@import|url\(", html, re.IGNORECASE)
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<style>" in html


def test_no_phi_or_keys_in_any_output(rendered, predictions):
    out, _ = rendered
    keys = set(predictions["study_key"]) | set(predictions["patient_key"])
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            for secret in PHI:
                assert secret not in text, (path.name, secret)
            assert not any(k in text for k in keys), path.name


def test_report_content(rendered):
    out, result = rendered
    html = (out / "report.html").read_text(encoding="utf-8")
    metrics = result["metrics"]
    macro = f"{metrics['macro_auroc']:.3f} ({metrics['macro_auroc_lo']:.3f}–"
    assert macro in html
    hernia_row = re.search(r"<tr><td class=l>Hernia</td>.*?</tr>", html).group(0)
    assert "not estimable" in hernia_row
    assert "patient-level bootstrap" in html and "has_lateral = False" in html
    assert "a" * 40 in html and "b" * 32 in html  # versions
    assert "batch_size" in html  # the run's params, including non-report keys
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Evaluation summary")
    assert macro in md and "| Hernia | 0 |" in md
    assert set(result["files"]) == {
        "html",
        "markdown",
        "metrics",
        "findings_metrics",
        "thresholds",
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
    test = predictions[(predictions["split"] == "test") & (predictions["mode"] == "dual")]
    assert ev.paired_counts["studies"] == int(test["has_lateral"].sum())
    m = metrics_dict(ev)
    assert m["lateral_gain"]["n_helps"] == 2 and m["lateral_gain"]["macro_delta_lo"] > 0
    everyone = summarize(predictions, {**PARAMS, "paired_subset": "all"})
    assert everyone.paired_counts["studies"] == 240


def test_thresholds_are_chosen_on_validation(predictions):
    ev = summarize(predictions, PARAMS)
    t = thresholds_dict(ev)
    val = predictions[(predictions["split"] == "val") & (predictions["mode"] == "dual")]
    val = val.sort_values("study_key")
    assert t["youden"]["Mass"] == youden_threshold(
        val["y_Mass"].to_numpy(), val["p_Mass"].to_numpy()
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
    assert policies == {"youden", "sensitivity_target"}
    for policy in policies:
        assert all(v is None or 0 <= v <= 1 for v in data[policy].values())


def test_without_validation_or_frontal_only_rows(predictions):
    test_dual = predictions[(predictions["split"] == "test") & (predictions["mode"] == "dual")]
    ev = summarize(test_dual, {"bootstrap_resamples": 20})
    assert ev.paired is None and not ev.modes["dual"].operating_points
    assert any("validation" in n for n in ev.notes)
    assert any("frontal-only" in n for n in ev.notes)
    m = metrics_dict(ev)
    assert "lateral_gain" not in m and "youden" not in m["findings"]["Mass"]


def test_write_curves_replaces_stale_files(predictions, tmp_path):
    (tmp_path / "roc").mkdir()
    (tmp_path / "roc" / "Stale.csv").write_text("fpr,tpr\n")
    ev = summarize(predictions, {"bootstrap_resamples": 20})
    write_curves(ev, tmp_path)
    names = sorted(p.stem for p in (tmp_path / "roc").glob("*.csv"))
    assert names == sorted(set(FINDINGS) - {"Hernia"})
    pr = pd.read_csv(tmp_path / "pr" / "Mass.csv")
    assert pr["recall"].is_monotonic_increasing and pr["recall"].iloc[0] == 0


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


def test_bad_files_and_params(tmp_path):
    with pytest.raises(ReportError, match="not found"):
        render_report(tmp_path / "nope.parquet", tmp_path / "out")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ReportError, match="bad.parquet"):
        render_report(tmp_path / "bad.parquet", tmp_path / "out")
    with pytest.raises(ReportError, match="ci_level"):
        report_params({"ci_level": 1.5})
    p = report_params({"seed": 4, "checkpoint": "models/best.pt"})  # unknown keys ignored
    assert p == ReportParams(seed=4)


def test_versions_from_git_and_dvc_lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: python -m pipelines.train\n    outs:\n"
        "    - path: models/best.pt\n      md5: 0123abcd\n      size: 10\n"
        "  preprocess:\n    outs:\n    - path: data/prepared\n      md5: 99ff.dir\n"
    )
    assert dvc_hashes(["models/best.pt", "data/prepared", "other"], lock) == {
        "models/best.pt": "0123abcd",
        "data/prepared": "99ff.dir",
    }
    assert dvc_hashes(["x"], tmp_path / "missing.lock") == {}
    assert git_commit(tmp_path) is None  # not a repository
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
        subprocess.run(
            [
                "git",
                "-c",
                "user.email=a@b",
                "-c",
                "user.name=t",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                "x",
            ],
            cwd=tmp_path,
            check=True,
        )
        versions = collect_versions(["models/best.pt"], cwd=tmp_path)
        assert re.fullmatch(r"[0-9a-f]{40}", versions["git"]["commit"])
        assert versions["dvc"] == {"models/best.pt": "0123abcd"}


CHROMIUM = next(
    (
        p
        for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
        if p and Path(p).exists()
    ),
    None,
)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium_offline(rendered, tmp_path):
    from PIL import Image

    out, _ = rendered
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves: the network is off
        "--proxy-server=127.0.0.1:9",
        "--window-size=1280,4000",
        f"--screenshot={shot}",
        (out / "report.html").resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    image = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert image.std() > 10  # not blank
    # the blue curve colour of the embedded figures is on screen
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    blue = (abs(rgb[..., 0] - 0x1F) < 30) & (abs(rgb[..., 1] - 0x5F) < 30) & (rgb[..., 2] > 140)
    assert blue.sum() > 500
