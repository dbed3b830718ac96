"""Tests for the finding base class and its registration (pipelines/synthetic/findings/base.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.labels import FINDINGS
from pipelines.synthetic.anatomy import next_study, sample_anatomy
from pipelines.synthetic.findings import REGISTRY
from pipelines.synthetic.findings.base import Finding, register


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
