"""The HTML report and the Markdown summary: content, self-containment, escaping, rendering."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipelines.evaluation.report import render_html, render_markdown
from pipelines.evaluation.summary import summarize
from tests.pipelines.evaluation.predictions import fake_predictions

ODD = "Odd <b>&\"name'"  # a finding name with every character HTML must escape


def test_html_is_self_contained_and_embeds_figures(rendered):
    out, _ = rendered
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://", html, re.IGNORECASE)
    assert not re.search(r"<script|<link|<iframe|@import|url\(", html, re.IGNORECASE)
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<style>" in html


def test_report_content(rendered):
    out, result = rendered
    html = (out / "report.html").read_text(encoding="utf-8")
    metrics = result["metrics"]
    macro = f"{metrics['macro_auroc']:.3f} ({metrics['macro_auroc_lo']:.3f}–"
    assert macro in html
    hernia_rows = re.findall(r"<tr><td class=l>Hernia</td>.*?</tr>", html)
    assert "not estimable" in hernia_rows[0]  # no test positive: no AUROC
    assert "no validation threshold" in hernia_rows[1]  # no val positive: listed, no decision
    assert "patient-level bootstrap" in html and "has_lateral = False" in html
    assert "a" * 16 in html and "b" * 32 in html  # versions
    assert "batch_size" in html  # the run's params, including non-report keys
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Evaluation summary")
    assert macro in md and "| Hernia | 0 |" in md


def test_names_notes_and_versions_are_escaped():
    preds = fake_predictions(n_val=60, n_test=120, seed=2)
    rng = np.random.default_rng(0)
    preds[f"y_{ODD}"] = (rng.random(len(preds)) < 0.3).astype(float)
    preds[f"p_{ODD}"] = rng.random(len(preds))
    dual = preds[preds["mode"] == "dual"].copy()
    dual.attrs = {"frontal_only": "<script>alert(1)</script>", "model": {"arch": "<resnet>"}}
    for table in (preds, dual):
        ev = summarize(table, {"bootstrap_resamples": 20})
        html = render_html(ev, {"note": "a<b & 'c'"}, {"code": {"sources_sha256": 'x"y'}})
        assert ODD not in html and "<b>&" not in html
        assert "<td class=l>Odd &lt;b&gt;&amp;&quot;name&#x27;</td>" in html
        assert "<script" not in html
        assert "a&lt;b &amp; &#x27;c&#x27;" in html and "x&quot;y" in html
        assert f"| {ODD} |" in render_markdown(ev)  # Markdown is plain text: not escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;resnet&gt;" in html


def test_html_layout_one_line_per_block(rendered):
    out, _ = rendered
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html><html lang=en>") and html.endswith("</html>")
    lines = html.split("\n")
    tables = [line for line in lines if "<table>" in line]
    # findings, not trained, lateral view, two operating points, calibration, versions, params
    assert len(tables) == 8
    assert all(line.startswith("<table>") and line.endswith("</table>") for line in tables)
    assert not any(line.strip() == "" for line in lines)


def test_sections_say_what_is_missing(predictions):
    test_dual = predictions[(predictions["split"] == "test") & (predictions["mode"] == "dual")]
    html = render_html(summarize(test_dual, {"bootstrap_resamples": 5}))
    assert "<p>Not compared (see the notes above).</p>" in html
    assert "<p>Not available: no validation predictions.</p>" in html
    assert "<p>No version information available.</p>" in html
    assert "AUROC frontal only" not in html and "Lateral view: macro gain" not in html
    assert html.count('<div class="warn">') == 2


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
