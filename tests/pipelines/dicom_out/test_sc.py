"""The Secondary Capture of an overlay: pixels, derived marks, the source reference, validators."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pipelines.dicom_out.identity import read_source
from pipelines.dicom_out.sc import build_sc
from pipelines.imaging import prepare_image
from tests.pipelines.dicom_out.helpers import (
    ENCODINGS,
    IDENTIFIERS,
    STUDY_UID,
    dciodvfy,
    overlay_of,
    write_source,
)
from tests.pipelines.dicom_out.test_sr import ALGORITHM


def written_sc(tmp_path, dcm, size: int | None = None):
    source = read_source("frontal", dcm)
    image = prepare_image(dcm, size or 32)
    path = tmp_path / "sc.dcm"
    overlay = overlay_of(image)
    build_sc(source, overlay, "Edema", ALGORITHM, [source]).save_as(path, enforce_file_format=True)
    return path, overlay, source


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_overlay_sc_of_every_encoding_validates_and_reads_back(tmp_path, encoding):
    dcm = write_source(tmp_path / "pa.dcm", "PA", encoding)
    path, overlay, source = written_sc(tmp_path, dcm)
    errors, _warnings = dciodvfy(path)
    assert errors == []
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(ds.pixel_array, overlay)
    assert ds.PhotometricInterpretation == "RGB"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.BurnedInAnnotation == "YES"
    assert ds.ImageComments.startswith("NOT FOR PRIMARY DIAGNOSIS")
    assert "not for primary diagnosis" in ds.DerivationDescription
    (ref,) = ds.SourceImageSequence
    assert ref.ReferencedSOPInstanceUID == f"{STUDY_UID}.1.1"
    assert ref.ReferencedSOPClassUID == source.header.SOPClassUID
    for keyword, value in IDENTIFIERS.items():
        assert str(ds.get(keyword)) == value, keyword
    assert ds.StudyInstanceUID == STUDY_UID and ds.SOPInstanceUID != f"{STUDY_UID}.1.1"
    assert "PixelSpacing" not in ds  # 32 x 32 overlay of a 48 x 40 source: no spacing claimed


def test_same_size_overlay_keeps_the_spacing_and_orientation(tmp_path):
    dcm = write_source(tmp_path / "pa.dcm", "PA")
    source = read_source("frontal", dcm)
    rgb = np.zeros((48, 40, 3), np.uint8)
    sc = build_sc(source, rgb, "Nodule", ALGORITHM, [source])
    assert [float(v) for v in sc.PixelSpacing] == [
        float(v) for v in source.header.ImagerPixelSpacing
    ]
    assert list(sc.PatientOrientation) == list(source.header.PatientOrientation)
    again = build_sc(source, rgb, "Nodule", ALGORITHM, [source])
    assert again.SOPInstanceUID == sc.SOPInstanceUID  # a rerun rewrites the same instance
    assert build_sc(source, rgb, "Mass", ALGORITHM, [source]).SOPInstanceUID != sc.SOPInstanceUID


def test_bad_overlays_are_refused(tmp_path):
    source = read_source("frontal", write_source(tmp_path / "pa.dcm", "PA"))
    with pytest.raises(ValueError, match=r"RGB uint8 array \(H, W, 3\)"):
        build_sc(source, np.zeros((8, 8), np.uint8), "Edema", ALGORITHM, [source])
    with pytest.raises(ValueError, match="RGB uint8"):
        build_sc(source, np.zeros((8, 8, 3), np.float32), "Edema", ALGORITHM, [source])
    with pytest.raises(ValueError, match="unknown finding"):
        build_sc(source, np.zeros((8, 8, 3), np.uint8), "Cough", ALGORITHM, [source])


def test_the_real_jpeg_cr_gives_a_valid_sc(real_cxr, tmp_path):
    (dcm,) = (real_cxr / "dicom").glob("*.dcm")
    path, overlay, _source = written_sc(tmp_path, dcm, 64)
    errors, _warnings = dciodvfy(path)
    assert errors == []
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(ds.pixel_array, overlay)
    assert ds.LossyImageCompression == "01"  # derived from a lossy JPEG source
    assert ds.PatientID == pydicom.dcmread(dcm, stop_before_pixels=True).PatientID
