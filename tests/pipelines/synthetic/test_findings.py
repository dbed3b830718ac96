"""Tests for the findings of the synthetic chest (pipelines/synthetic/findings/)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.labels import FINDINGS
from pipelines.synthetic.anatomy import next_study, sample_anatomy
from pipelines.synthetic.findings import (
    CHRONIC_FINDINGS,
    FRONTAL_ONLY_FINDINGS,
    LATERAL_ONLY_FINDINGS,
    REGISTRY,
    VISIBILITY,
)
from pipelines.synthetic.findings.base import Finding, register
from pipelines.synthetic.render import render_view


def test_visibility_table():
    assert set(VISIBILITY) == set(FINDINGS)
    assert len(LATERAL_ONLY_FINDINGS) >= 3
    for f in LATERAL_ONLY_FINDINGS:
        assert VISIBILITY[f] == {"frontal": False, "lateral": True}
    for f in FRONTAL_ONLY_FINDINGS:
        assert VISIBILITY[f] == {"frontal": True, "lateral": False}
    assert all(any(v.values()) for v in VISIBILITY.values())


def test_registry_holds_one_class_per_finding_in_label_order():
    assert list(REGISTRY) == list(FINDINGS)
    assert all(isinstance(f, Finding) and f.name == name for name, f in REGISTRY.items())
    assert len({type(f) for f in REGISTRY.values()}) == len(FINDINGS)
    assert {
        n: {"frontal": f.frontal, "lateral": f.lateral} for n, f in REGISTRY.items()
    } == VISIBILITY


def test_chronic_findings_come_from_the_classes_in_their_state_draw_order():
    assert set(CHRONIC_FINDINGS) == {n for n, f in REGISTRY.items() if f.chronic}
    # the patient state is drawn in this order: part of what a seed gives
    assert CHRONIC_FINDINGS == (
        "Cardiomegaly",
        "Emphysema",
        "Fibrosis",
        "Pleural_Thickening",
        "Hernia",
        "Nodule",
    )


@pytest.mark.parametrize("name", FINDINGS)
def test_each_finding_class_draws_on_the_views_its_visibility_says(name):
    finding = REGISTRY[name]
    anatomy = sample_anatomy(np.random.default_rng(7))
    for view in ("PA", "LATERAL"):
        base = render_view(np.random.default_rng(8), 48, view, frozenset(), anatomy)
        with_it = render_view(np.random.default_rng(8), 48, view, frozenset({name}), anatomy)
        assert (not np.array_equal(with_it, base)) == finding.shows_on(view), view
    # the hooks of a view a finding does not show on are the base class's (they never run)
    if not finding.frontal:
        assert type(finding).draw_pa is Finding.draw_pa
        assert type(finding).prepare_pa is Finding.prepare_pa
    if not finding.lateral:
        assert type(finding).draw_lateral is Finding.draw_lateral


@pytest.mark.parametrize("name", FINDINGS)
def test_params_follow_the_study_or_for_chronic_findings_the_patient(name):
    finding = REGISTRY[name]
    anatomy = sample_anatomy(np.random.default_rng(3))
    assert finding.params(anatomy) == finding.params(anatomy)
    later = next_study(anatomy, np.random.default_rng(4))
    assert (finding.params(later) == finding.params(anatomy)) == finding.chronic


def test_register_refuses_a_bad_finding_class():
    class Unknown(Finding):
        name = "Fracture"

    class Twice(Finding):
        name = "Hernia"

    class Nowhere(Finding):
        name = "Hernia"
        frontal = lateral = False

    class Hidden(Finding):
        name = "Hernia"
        frontal = False

        def draw_pa(self, A, fr, p):
            pass

    with pytest.raises(ValueError, match="not in pipelines.labels.FINDINGS"):
        register(Unknown)
    with pytest.raises(ValueError, match="registered twice"):
        register(Twice)
    with pytest.raises(ValueError, match="no view"):
        register(Nowhere)
    with pytest.raises(ValueError, match="not visible"):
        register(Hidden)
    assert list(REGISTRY) == list(FINDINGS)
