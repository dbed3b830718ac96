"""The report's figures: one panel per finding, not-estimable panels, PNG data URIs."""

from __future__ import annotations

import base64

import pytest
from matplotlib.figure import Figure

from pipelines.evaluation.figures import (
    data_uri,
    figure_forest,
    figure_lateral_gain,
    figure_pr,
    figure_reliability,
    figure_roc,
)
from pipelines.evaluation.summary import summarize
from pipelines.labels import FINDINGS


@pytest.fixture(scope="module")
def evaluation(predictions):
    return summarize(predictions, {"bootstrap_resamples": 20})


def _texts(fig: Figure) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in [ax.title, *ax.texts])


@pytest.mark.parametrize("figure", [figure_roc, figure_pr, figure_reliability])
def test_grids_have_one_visible_panel_per_finding(evaluation, figure):
    fig = figure(evaluation)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == len(FINDINGS) and len(fig.axes) == 16  # 4 x 4 grid
    assert [ax.get_title().split("\n")[0] for ax in visible] == list(FINDINGS)


def test_one_class_finding_gets_a_not_estimable_panel(evaluation):
    for figure in (figure_roc, figure_pr):
        hernia = next(ax for ax in figure(evaluation).axes if ax.get_title() == "Hernia")
        assert "not estimable" in hernia.texts[0].get_text()
    assert "not estimable (one class only)" in _texts(figure_forest(evaluation))


def test_lateral_gain_only_when_the_modes_were_compared(evaluation, predictions):
    fig = figure_lateral_gain(evaluation)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["Macro mean", *FINDINGS[::-1]]
    dual = predictions[predictions["mode"] == "dual"]
    assert figure_lateral_gain(summarize(dual, {"bootstrap_resamples": 5})) is None


def test_data_uri_is_a_png():
    fig = Figure(figsize=(2, 1))
    fig.add_subplot(1, 1, 1).plot([0, 1], [0, 1])
    uri = data_uri(fig)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert data_uri(fig) == uri  # the same figure gives the same bytes
