"""The Comprehensive SR (TID 1500): content read back, identifiers, UIDs, validators."""

from __future__ import annotations

import math

import pydicom
import pytest

from pipelines.dicom_out.identity import Algorithm, read_source
from pipelines.dicom_out.sr import FindingResult, build_sr
from pipelines.labels import FINDINGS
from tests.pipelines.dicom_out.helpers import (
    ENCODINGS,
    IDENTIFIERS,
    STUDY_UID,
    dciodvfy,
    dsrdump,
    sr_findings,
    write_source,
)

ALGORITHM = Algorithm(
    "cxr-dag test model",
    "0.1.0 code aaaa data bbbb model cccc",
    ("model file sha256: cccc",),
    "Not for clinical use.",
)


def results() -> list[FindingResult]:
    """Edema positive, Mass not trained, the rest trained and negative."""
    out = []
    for i, f in enumerate(FINDINGS):
        if f == "Mass":
            out.append(FindingResult(f, False, reason="too few labelled training studies"))
        else:
            p = 0.9 if f == "Edema" else 0.01 * i
            out.append(FindingResult(f, True, p, 0.5, p >= 0.5, policy="youden"))
    return out


@pytest.fixture
def sources(tmp_path):
    return [
        read_source("frontal", write_source(tmp_path / "pa.dcm", "PA", seed=1)),
        read_source("lateral", write_source(tmp_path / "ll.dcm", "LL", seed=2)),
    ]


def test_findings_probabilities_and_not_trained_read_back(sources, tmp_path):
    path = tmp_path / "sr.dcm"
    build_sr(sources, results(), ALGORITHM).save_as(path, enforce_file_format=True)
    found = sr_findings(path)
    assert list(found) == list(FINDINGS)
    assert found["Edema"] == ("Present", 0.9)
    assert found["Mass"] == ("Not Evaluated", None)  # no probability, neither present nor absent
    assert found["Hernia"] == ("Absent", pytest.approx(0.13))
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    referenced = {i.ReferencedSOPInstanceUID for s in evidence for i in s.ReferencedSOPSequence}
    assert referenced == {f"{STUDY_UID}.1.1", f"{STUDY_UID}.2.1"}


def test_identifiers_are_the_sources_and_uids_are_new_and_deterministic(sources):
    sr = build_sr(sources, results(), ALGORITHM)
    for keyword, value in IDENTIFIERS.items():
        assert str(sr.get(keyword)) == value, keyword
    assert sr.StudyInstanceUID == STUDY_UID
    assert sr.SeriesInstanceUID not in {s.header.SeriesInstanceUID for s in sources}
    again = build_sr(sources, results(), ALGORITHM)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (
        sr.SeriesInstanceUID,
        sr.SOPInstanceUID,
    )
    other = Algorithm(ALGORITHM.name, "0.2.0 code dddd data bbbb model eeee", ())
    assert build_sr(sources, results(), other).SOPInstanceUID != sr.SOPInstanceUID


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_dciodvfy_finds_no_error_and_dsrdump_reads_it(tmp_path, encoding):
    srcs = [read_source("frontal", write_source(tmp_path / "pa.dcm", "PA", encoding))]
    path = tmp_path / "sr.dcm"
    build_sr(srcs, results(), ALGORITHM).save_as(path, enforce_file_format=True)
    errors, _warnings = dciodvfy(path)
    assert errors == []
    dump = dsrdump(path)
    assert "Imaging Measurement Report" in dump and '"Probability")="0.9"' in dump
    assert dump.count('(373121007,SCT,"Not Evaluated")') == 1


def test_the_real_cr_validates_and_its_invalid_age_is_not_copied(real_cxr, tmp_path):
    (dcm,) = (real_cxr / "dicom").glob("*.dcm")
    source = read_source("frontal", dcm)
    raw = pydicom.dcmread(dcm, stop_before_pixels=True)
    path = tmp_path / "sr.dcm"
    build_sr([source], results(), ALGORITHM).save_as(path, enforce_file_format=True)
    errors, _warnings = dciodvfy(path)
    assert errors == []
    ds = pydicom.dcmread(path)
    assert "PatientAge" not in ds  # the source's "62" is not a valid AS (062Y)
    for keyword in ("PatientName", "PatientID", "PatientSex", "StudyInstanceUID", "StudyDate"):
        assert ds.get(keyword) == raw.get(keyword), keyword
    assert math.isclose(sr_findings(path)["Edema"][1], 0.9)
    assert "Imaging Measurement Report" in dsrdump(path)
