"""What the DICOM output tests share: sources of several encodings, the validators, SR reading.

Sources carry planted PHI (the identifiers of ``tests/pipelines/predict/test_run.py``) so a test
can check that the SR and SC copy exactly the source's identifiers, and nothing else does.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from pipelines.synthetic import write_dicom
from tests.pipelines.predict.test_run import ACCESSION, PATIENT_ID, PATIENT_NAME, picture

STUDY_UID = "1.2.826.0.1.3680043.8.498.77"
IDENTIFIERS = {
    "PatientName": PATIENT_NAME,
    "PatientID": PATIENT_ID,
    "PatientBirthDate": "19470101",
    "PatientSex": "F",
    "AccessionNumber": ACCESSION,
    "ReferringPhysicianName": "PLANTED^REFERRER",
    "StudyID": "PLANTED-S1",
    "StudyDate": "20240102",
    "StudyTime": "101500",
}
#: name -> (modality, photometric, VOI LUT sequence, transfer syntax or None)
ENCODINGS: dict[str, tuple[str, str, bool, str | None]] = {
    "dx-mono2-window": ("DX", "MONOCHROME2", False, None),
    "dx-mono1": ("DX", "MONOCHROME1", False, None),
    "cr-voi-lut": ("CR", "MONOCHROME2", True, None),
    "dx-rle": ("DX", "MONOCHROME1", False, RLELossless),
    "cr-jpeg2000": ("CR", "MONOCHROME2", False, JPEG2000Lossless),
}


def write_source(
    path: Path, view: str, encoding: str = "dx-mono2-window", seed: int = 1, study: str = STUDY_UID
) -> Path:
    """A synthetic radiograph of ``encoding`` with the planted identifiers."""
    modality, photometric, voi_lut, syntax = ENCODINGS[encoding]
    write_dicom(
        path,
        picture(seed, (48, 40)),
        photometric=photometric,
        bits_stored=12,
        view_position=view,
        modality=modality,
        uids={
            "StudyInstanceUID": study,
            "SeriesInstanceUID": f"{study}.{seed}",
            "SOPInstanceUID": f"{study}.{seed}.1",
        },
        phi=IDENTIFIERS | {"InstitutionName": "PLANTED GENERAL HOSPITAL"},
        voi_lut_sequence=voi_lut,
    )
    if syntax is not None:
        ds = pydicom.dcmread(path)
        ds.compress(syntax, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    return path


def overlay_of(image: np.ndarray) -> np.ndarray:
    """An overlay as the explanation makes one: the grey image in RGB with a red square."""
    rgb = np.repeat(np.asarray(image, dtype=np.uint8)[..., None], 3, axis=2)
    rgb[4:12, 6:14] = (255, 0, 0)
    return rgb


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """dicom3tools' validator on one file: (errors, warnings); skips when it is not installed."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warn")]


def dsrdump(path: Path) -> str:
    """dcmtk's SR dump of one file; skips when it is not installed."""
    exe = shutil.which("dsrdump")
    if exe is None:
        pytest.skip("dsrdump (Debian package dcmtk) is not installed")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _items(node, name: str) -> list:
    return [
        i
        for i in node.get("ContentSequence", [])
        if i.ConceptNameCodeSequence[0].CodeMeaning == name
    ]


def sr_findings(path: Path) -> dict[str, tuple[str, float | None]]:
    """Per finding of an SR written by ``--dicom-out``: (evaluation, probability or None)."""
    ds = pydicom.dcmread(path)
    (measurements,) = _items(ds, "Imaging Measurements")
    found: dict[str, tuple[str, float | None]] = {}
    for group in _items(measurements, "Measurement Group"):
        (tracking,) = _items(group, "Tracking Identifier")
        codes = [i for i in group.ContentSequence if i.ValueType == "CODE"]
        evaluation = codes[-1].ConceptCodeSequence[0].CodeMeaning  # after the finding type
        nums = _items(group, "Probability")
        p = float(nums[0].MeasuredValueSequence[0].NumericValue) if nums else None
        found[tracking.TextValue] = (evaluation, p)
    return found
