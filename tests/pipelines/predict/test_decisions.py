"""What cxr predict may say per finding: the card's status and thresholds, never 0.5."""

from __future__ import annotations

import math

import pytest

from pipelines.errors import PredictError
from pipelines.notices import NO_SOURCE_NOTICE, SYNTHETIC_NOTICE
from pipelines.predict.decisions import NOT_TRAINED, data_notice, decisions_from_card

FINDINGS = ["Edema", "Mass", "Nodule"]


def card(status=None, thresholds=None, frontal=None, sources=None) -> dict:
    output = {
        "findings": FINDINGS,
        "thresholds": thresholds if thresholds is not None else {"youden": {}},
        "thresholds_frontal_only": frontal or {},
        "default_threshold_policy": "youden",
    }
    if status is not None:
        output["status"] = status
    return {"output": output, "training_data": {"sources": sources} if sources else None}


def test_only_trained_findings_with_a_threshold_get_a_decision():
    c = card(
        status={
            "Edema": "trained",
            "Mass": "not trained: too few labelled training studies (0 positive, 0 negative)",
            "Nodule": "trained",
        },
        thresholds={"youden": {"Edema": 0.4, "Mass": None, "Nodule": 0.2}},
    )
    d = decisions_from_card(c)
    assert d.dual == {"Edema": 0.4, "Nodule": 0.2}
    assert d.not_trained == {"Mass": "too few labelled training studies (0 positive, 0 negative)"}
    edema = d.decide("Edema", 0.41, has_lateral=True)
    assert (edema["status"], edema["threshold"], edema["positive"]) == ("trained", 0.4, True)
    mass = d.decide("Mass", 0.535, has_lateral=True)  # the untrained logit of the issue
    assert mass["status"] == NOT_TRAINED and mass["positive"] is None
    assert math.isnan(mass["probability"]) and math.isnan(mass["threshold"])


def test_a_missing_threshold_never_defaults_to_one_half():
    old_card = card(thresholds={"youden": {"Edema": 0.4, "Mass": None, "Nodule": 0.3}})
    d = decisions_from_card(old_card)  # a card from before statuses: a null threshold decides
    assert d.not_trained == {"Mass": "no validation threshold for policy 'youden'"}
    none = decisions_from_card(card(thresholds={}))
    assert none.dual == {} and set(none.not_trained) == set(FINDINGS)
    assert all("no validation thresholds" in why for why in none.not_trained.values())
    assert all(none.decide(f, 0.9, True)["positive"] is None for f in FINDINGS)


def test_policy_choice_and_frontal_only_thresholds():
    c = card(
        thresholds={"youden": dict.fromkeys(FINDINGS, 0.5), "sens": dict.fromkeys(FINDINGS, 0.1)},
        frontal={"youden": {"Edema": 0.0, "Mass": None, "Nodule": 0.7}},
    )
    d = decisions_from_card(c)
    assert d.frontal == {"Edema": 0.0, "Mass": 0.5, "Nodule": 0.7}  # 0.0 kept; null: dual's
    assert d.decide("Nodule", 0.6, has_lateral=False)["positive"] is False
    assert d.decide("Nodule", 0.6, has_lateral=False)["threshold_policy"] == "youden (frontal-only)"
    assert decisions_from_card(c, "sens").frontal == dict.fromkeys(FINDINGS, 0.1)
    with pytest.raises(PredictError, match="policy 'nope' not in the model card"):
        decisions_from_card(c, "nope")


def test_data_notice_for_synthetic_or_unnamed_training_data():
    assert data_notice(card()) == NO_SOURCE_NOTICE
    synthetic = {"demo": {"reader": "dicom", "synthetic": True, "studies": 10}}
    assert data_notice(card(sources=synthetic)) == SYNTHETIC_NOTICE
    assert "Not for clinical use" in SYNTHETIC_NOTICE
    real = {"nih": {"reader": "nih", "synthetic": False, "studies": 10}}
    assert data_notice(card(sources=real)) is None
    assert data_notice({**card(sources=real), "notice": "written by export"}) == "written by export"
