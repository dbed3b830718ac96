"""export.card: the threshold reader, the card's pieces, the training data summary."""

from __future__ import annotations

import json

import pytest

from pipelines.augment import AugmentParams
from pipelines.errors import ExportError
from pipelines.export.card import (
    input_spec,
    model_card,
    output_spec,
    read_test_metrics,
    read_thresholds,
    training_data_summary,
)
from pipelines.labels import FINDINGS
from pipelines.model import PIXEL_MEAN
from pipelines.notices import NO_SOURCE_NOTICE, SYNTHETIC_NOTICE
from pipelines.tta import draws_to_json, tta_draws
from tests.pipelines.export.helpers import SIZE, make_prepared


@pytest.mark.parametrize(
    "payload",
    [
        {  # what evaluate writes
            "chosen_on": "val",
            "frontal_only": {"youden": {"Atelectasis": 0.25}},
            "rule": "positive when probability >= threshold",
            "sensitivity_target": {"Atelectasis": 0.1},
            "target_sensitivity": 0.9,
            "validation": {"studies": 35, "n_pos": {"Atelectasis": 4}},
            "youden": {"Atelectasis": 0.3, "Hernia": None, "Unknown": 0.2},
        },
        {
            "thresholds": {"youden": {"Atelectasis": 0.3, "Hernia": None}},
            "frontal_only": {"youden": {"Atelectasis": 0.25}},
        },
    ],
)
def test_read_thresholds_accepts_evaluates_layout(tmp_path, payload):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(payload))
    got = read_thresholds(path)
    assert got["thresholds"]["youden"] == {"Atelectasis": 0.3, "Hernia": None}
    assert "validation" not in got["thresholds"] and "frontal_only" not in got["thresholds"]
    assert got["thresholds_frontal_only"] == {"youden": {"Atelectasis": 0.25}}
    if "rule" in payload:
        assert got["thresholds"]["sensitivity_target"] == {"Atelectasis": 0.1}
        assert got["notes"]["target_sensitivity"] == 0.9 and got["notes"]["chosen_on"] == "val"
    assert read_thresholds(tmp_path / "absent.json")["thresholds"] == {}


def test_unreadable_evaluate_outputs_are_export_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        read_thresholds(bad)
    with pytest.raises(ExportError, match="not valid JSON"):
        read_test_metrics(bad)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ExportError, match="expected a JSON object"):
        read_thresholds(tmp_path / "list.json")
    assert read_test_metrics(tmp_path / "absent.json") is None


def test_test_time_augmentation_reaches_the_card_checked(tmp_path):
    draws = draws_to_json(tta_draws(AugmentParams(), 3, 2))
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"youden": {"Edema": 0.3}, "tta": {"views": 2, "draws": draws}}))
    got = read_thresholds(path)
    assert got["tta"] == draws and "tta" not in got["thresholds"]
    out = output_spec(list(FINDINGS), got, "youden")
    assert out["tta"] == draws and "mean over" in out["tta_rule"]
    plain = output_spec(list(FINDINGS), {"thresholds": {"youden": {"Edema": 0.3}}}, "youden")
    assert "tta" not in plain
    broken = [dict(draws[0], lateral={"angle": 1.0})]
    path.write_text(json.dumps({"youden": {"Edema": 0.3}, "tta": {"views": 1, "draws": broken}}))
    with pytest.raises(ExportError, match="thresholds.json: test-time augmentation: draw 0"):
        read_thresholds(path)


def test_card_pieces_describe_inputs_and_outputs():
    spec = input_spec(48, no_window="minmax")
    assert spec["shape"]["frontal"] == spec["shape"]["lateral"] == ["batch", 1, 48, 48]
    assert (
        spec["photometric"]["no_window"] == "minmax" and "48 x 48" in spec["photometric"]["resize"]
    )
    assert spec["normalisation"]["mean"] == PIXEL_MEAN
    thresholds = {"thresholds": {"youden": {"Edema": 0.3}}, "notes": {"chosen_on": "val"}}
    out = output_spec(list(FINDINGS), thresholds, "youden")
    assert out["shape"] == ["batch", len(FINDINGS)] and out["thresholds"]["youden"] == {
        "Edema": 0.3
    }
    assert out["thresholds_frontal_only"] == {} and out["threshold_notes"] == {"chosen_on": "val"}


def test_model_card_assembles_the_pieces():
    meta = {"findings": list(FINDINGS), "size": SIZE, "epoch": 3, "model_params": {"a": 1}}
    card = model_card(
        meta=meta,
        input_size=SIZE,
        files={},
        parity={},
        parity_summary={"studies": 0},
        thresholds={},
        default_policy="youden",
        test_metrics=None,
        data_summary=None,
        n_params=7,
    )
    assert card["schema"] == "cxr-dag-model-card/1" and card["input"] == input_spec(SIZE)
    assert card["output"] == output_spec(list(FINDINGS), {}, "youden") | {"ood_gate": None}
    assert card["model"]["parameters"] == 7 and card["model"]["epoch"] == 3
    assert card["parity"] == {"test": {}, "studies": 0}
    assert card["notice"] == NO_SOURCE_NOTICE  # no data summary: nothing says what it learned
    json.dumps(card)  # plain JSON types


@pytest.mark.parametrize(
    ("synthetic", "notice"), [(True, SYNTHETIC_NOTICE), (False, None), (None, None)]
)
def test_the_card_says_when_the_model_learned_from_synthetic_data(synthetic, notice):
    sources = {"a": {"reader": "nih", "synthetic": False}, "b": {"synthetic": synthetic}}
    card = model_card(
        meta={"findings": list(FINDINGS)},
        input_size=SIZE,
        files={},
        parity={},
        parity_summary={},
        thresholds={},
        default_policy="youden",
        test_metrics=None,
        data_summary={"sources": sources},
        n_params=0,
    )
    assert card["notice"] == notice


def test_training_data_summary_counts_only(tmp_path):
    make_prepared(tmp_path, counts={"train": 6, "test": 3})
    summary = training_data_summary(tmp_path)
    assert summary["prepared_size"] == SIZE
    assert summary["splits"]["train"]["studies"] == 6
    assert summary["splits"]["train"]["with_lateral"] == 4
    coverage = summary["splits"]["train"]["label_coverage"]
    assert set(coverage) == set(FINDINGS)
    for c in coverage.values():  # every study is a positive, a negative or unannotated
        assert c["positives"] + c["negatives"] + c["unannotated"] == 6
    assert sum(c["unannotated"] for c in coverage.values()) > 0  # the helper blanks 10 %
    chosen = training_data_summary(tmp_path, ["Edema", "Mass"])
    assert set(chosen["splits"]["test"]["label_coverage"]) == {"Edema", "Mass"}
