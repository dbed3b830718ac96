"""The code table: one code per finding of the label space, each with its source."""

from __future__ import annotations

from pipelines.dicom_out.codes import ABSENT, FINDING_CODES, NOT_EVALUATED, PRESENT
from pipelines.labels import FINDINGS


def test_every_finding_has_one_distinct_code_with_a_source():
    assert tuple(FINDING_CODES) == FINDINGS
    values = [(c.scheme, c.value) for c in FINDING_CODES.values()]
    assert len(set(values)) == len(FINDINGS)
    assert {c.scheme for c in FINDING_CODES.values()} <= {"SCT", "DCM", "RADLEX", "99CXRDAG"}
    assert all(c.source and c.meaning for c in FINDING_CODES.values())
    assert FINDING_CODES["Pneumothorax"].concept().value == "36118008"
    assert FINDING_CODES["Effusion"].meaning == "Pleural effusion"


def test_the_three_evaluations_differ():
    assert len({PRESENT.value, ABSENT.value, NOT_EVALUATED.value}) == 3
    assert (PRESENT.meaning, ABSENT.meaning) == ("Present", "Absent")
