"""Tests for the registry of findings and the tables derived from it (findings/__init__.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.labels import FINDINGS
from pipelines.synthetic.anatomy import sample_anatomy
from pipelines.synthetic.findings import (
    CHRONIC_FINDINGS,
    FRONTAL_ONLY_FINDINGS,
    LATERAL_ONLY_FINDINGS,
    REGISTRY,
    VISIBILITY,
)
from pipelines.synthetic.findings.base import Finding
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
