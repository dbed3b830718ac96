"""Tests for the study plan of the synthetic dataset (pipelines/synthetic/plan.py)."""

from __future__ import annotations

import itertools

import numpy as np

from pipelines.labels import FINDINGS
from pipelines.synthetic.params import SynthesizeParams
from pipelines.synthetic.plan import plan_studies


def test_shares_converge_over_many_planned_studies():
    jobs = plan_studies(SynthesizeParams(studies=2000, seed=5))
    assert abs(np.mean([not j["has_lateral"] for j in jobs]) - 0.1) < 0.02
    for f in FINDINGS:
        assert abs(np.mean([f in j["findings"] for j in jobs]) - 0.2) < 0.035, f


def test_per_finding_prevalence_and_patient_persistence():
    params = SynthesizeParams(
        studies=1000, prevalence={"Hernia": 0.05, "Edema": 0.5, "default": 0.2}, seed=2
    )
    jobs = plan_studies(params)
    share = {f: np.mean([f in j["findings"] for j in jobs]) for f in FINDINGS}
    assert abs(share["Hernia"] - 0.05) < 0.03
    assert abs(share["Edema"] - 0.5) < 0.05
    assert abs(share["Atelectasis"] - 0.2) < 0.04
    # chronic findings repeat within a patient more often than chance
    same, pairs = 0, 0
    for a, b in itertools.pairwise(jobs):
        if a["patient"] == b["patient"]:
            pairs += 1
            same += ("Cardiomegaly" in a["findings"]) == ("Cardiomegaly" in b["findings"])
    assert same / pairs > 0.68 + 0.1  # independent draws would agree 0.2^2 + 0.8^2 = 0.68
