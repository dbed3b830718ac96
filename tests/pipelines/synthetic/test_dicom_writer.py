"""Tests for the DICOM writer of the synthetic dataset (pipelines/synthetic/dicom_writer.py)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from pipelines.synthetic.anatomy import sample_anatomy
from pipelines.synthetic.dicom_writer import write_dicom
from pipelines.synthetic.render import render_view


def display(ds: pydicom.Dataset) -> np.ndarray:
    """Display image in [0, 1] by the DICOM rules, computed here independently of the writer."""
    ov = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        n, first, bits = item.LUTDescriptor
        n = n or 65536
        lut = (
            np.frombuffer(item.LUTData, dtype="<u2")
            if isinstance(item.LUTData, bytes)
            else (np.asarray(item.LUTData))
        )
        y = lut[np.clip(np.rint(ov - first).astype(int), 0, n - 1)] / (2**bits - 1)
    else:
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        y = np.clip((ov - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    return 1.0 - y if ds.PhotometricInterpretation == "MONOCHROME1" else y


def pydicom_display(ds: pydicom.Dataset) -> np.ndarray:
    """The same through pydicom's own modality + VOI LUT functions (what a reader may use)."""
    ov = apply_modality_lut(ds.pixel_array, ds)
    if "VOILUTSequence" in ds:
        y = apply_voi_lut(np.rint(ov).astype(np.int64), ds) / (
            2 ** ds.VOILUTSequence[0].LUTDescriptor[2] - 1
        )
    else:  # pydicom scales the window output to the modality output range
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        y_min, y_max = intercept, (2**ds.BitsStored - 1) * slope + intercept
        y = (apply_voi_lut(ov, ds) - y_min) / (y_max - y_min)
    return 1.0 - y if ds.PhotometricInterpretation == "MONOCHROME1" else y


@pytest.mark.parametrize(
    ("bits", "rescale", "lut"),
    [(12, (1.0, 0.0), False), (16, (1.0, -1024.0), False), (14, (2.0, 0.0), True)],
)
def test_monochrome1_stores_the_inversion_and_displays_the_same(tmp_path, bits, rescale, lut):
    rng = np.random.default_rng(0)
    image = render_view(rng, 48, "PA", frozenset({"Nodule"}), sample_anatomy(rng))
    uids = {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "SOPInstanceUID": "1.2.5"}
    common = dict(
        bits_stored=bits,
        view_position="PA",
        modality="DX",
        uids=uids,
        phi={"PatientID": "X"},
        voi_lut_sequence=lut,
        rescale=rescale,
        value_range=(0.05, 0.9),
    )
    write_dicom(tmp_path / "m2.dcm", image, photometric="MONOCHROME2", **common)
    write_dicom(tmp_path / "m1.dcm", image, photometric="MONOCHROME1", **common)
    m2, m1 = pydicom.dcmread(tmp_path / "m2.dcm"), pydicom.dcmread(tmp_path / "m1.dcm")
    top = 2**bits - 1
    np.testing.assert_array_equal(m1.pixel_array.astype(int), top - m2.pixel_array.astype(int))
    lo, hi = round(0.05 * top), round(0.9 * top)
    expected = lo + np.rint(image.astype(np.float64) * (hi - lo))
    np.testing.assert_array_equal(m2.pixel_array, expected)
    step = 1.0 / (hi - lo)
    for ds in (m1, m2):
        assert ("VOILUTSequence" in ds) == lut
        np.testing.assert_allclose(display(ds), image, atol=step / 2 + 2 / 65535)
        np.testing.assert_allclose(pydicom_display(ds), image, atol=step / 2 + 2 / 65535)


def test_write_dicom_rejects_bad_arguments(tmp_path):
    image = np.zeros((8, 8), np.float32)
    uids = {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3", "SOPInstanceUID": "1.4"}
    kw = dict(bits_stored=12, view_position="PA", modality="DX", uids=uids, phi={})
    with pytest.raises(ValueError, match="photometric"):
        write_dicom(tmp_path / "a.dcm", image, photometric="RGB", **kw)
    with pytest.raises(ValueError, match="values must lie"):
        write_dicom(tmp_path / "a.dcm", image + 2, photometric="MONOCHROME2", **kw)
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        write_dicom(tmp_path / "a.dcm", image, photometric="MONOCHROME2", **kw | {"phi": {"X": 1}})
    assert not list(tmp_path.iterdir())
