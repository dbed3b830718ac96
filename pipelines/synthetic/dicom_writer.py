"""A display image as a DX or CR DICOM file: :func:`stored_values`, :func:`write_dicom`.

Files are uncompressed (explicit VR little endian), 16 bits allocated, with a modality LUT
(rescale) and a VOI transform (a linear window or a VOI LUT Sequence) that map the stored
values back to the display image exactly, for both photometric interpretations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom import datadict
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from pipelines.io import atomic_path
from pipelines.keys import SYNTHETIC_MANUFACTURER

SOP_CLASS = {
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
}
# CID 4010 (DX View): SNOMED CT codes.
_VIEW_CODES = {
    "PA": ("399348003", "postero-anterior"),
    "AP": ("399182009", "antero-posterior"),
    "LL": ("399173006", "left lateral"),
    "RL": ("399198007", "right lateral"),
}
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
UID_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def stored_values(
    image01: np.ndarray,
    photometric: str,
    bits_stored: int,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Stored pixel values (uint16) of a display image, as :func:`write_dicom` writes them.

    MONOCHROME2: ``lo + round(image01 * (hi - lo))`` with ``lo, hi`` the ``value_range``
    fractions of ``2**bits_stored - 1``; MONOCHROME1 stores the inversion
    ``2**bits_stored - 1 - that``.

    Args:
        image01: float (H, W) display image in [0, 1].
        photometric: ``MONOCHROME1`` or ``MONOCHROME2``.
        bits_stored: 8..16.
        value_range: the fractions of the stored range that display black and white.

    Returns:
        The stored values, uint16 (H, W).

    Raises:
        ValueError: a bad photometric, bit depth, range or image.
    """
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric must be one of {PHOTOMETRICS}, got {photometric!r}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 8..16 (16 allocated), got {bits_stored}")
    lo_f, hi_f = value_range
    if not 0.0 <= lo_f < hi_f <= 1.0:
        raise ValueError(f"value_range must satisfy 0 <= lo < hi <= 1, got {value_range}")
    img = np.asarray(image01, dtype=np.float64)
    if img.ndim != 2 or not np.isfinite(img).all():
        raise ValueError(f"image must be a finite 2-D array, got shape {img.shape}")
    if img.min() < -1e-6 or img.max() > 1 + 1e-6:
        raise ValueError(f"image values must lie in [0, 1], got [{img.min():.3g}, {img.max():.3g}]")
    top = 2**bits_stored - 1
    lo, hi = round(lo_f * top), round(hi_f * top)
    values = lo + np.rint(np.clip(img, 0.0, 1.0) * (hi - lo))
    if photometric == "MONOCHROME1":
        values = top - values
    return values.astype(np.uint16)


def write_dicom(
    path: str | Path,
    image01: np.ndarray,
    *,
    photometric: str,
    bits_stored: int,
    view_position: str,
    modality: str,
    uids: dict[str, str],
    phi: dict[str, Any],
    window: bool = True,
    voi_lut_sequence: bool = False,
    rescale: tuple[float, float] = (1.0, 0.0),
    value_range: tuple[float, float] = (0.0, 1.0),
    view_code: str | None = None,
    series_description: str | None = None,
) -> None:
    """Write a display image as an uncompressed DX or CR DICOM file (explicit VR little endian).

    Stored values are :func:`stored_values` (MONOCHROME1 is the inversion of MONOCHROME2).
    The modality LUT is ``RescaleSlope * stored + RescaleIntercept``; the VOI transform maps the
    used range back to the display image exactly: either a linear window (``WindowCenter`` /
    ``WindowWidth``, DICOM PS3.3 C.11.2.1.2 formula) or, with ``voi_lut_sequence``, a linear
    16-bit ``VOILUTSequence`` item instead. After it, MONOCHROME1 displays inverted, so both
    photometrics of one image display the same.

    Args:
        path: the file to write (parents are created; written atomically).
        image01: float (H, W) display image in [0, 1], bright = dense.
        photometric: ``MONOCHROME1`` or ``MONOCHROME2``.
        bits_stored: 8..16 (16 bits allocated, unsigned).
        view_position: ``ViewPosition`` value (``PA``, ``LL`` ...; may be empty).
        modality: ``DX`` (Digital X-Ray For Presentation) or ``CR``.
        uids: ``StudyInstanceUID``, ``SeriesInstanceUID``, ``SOPInstanceUID``.
        phi: other header values by DICOM keyword (``PatientName``, ``PatientID`` ...).
        window: write ``WindowCenter`` / ``WindowWidth`` (ignored with ``voi_lut_sequence``).
        voi_lut_sequence: write a VOI LUT Sequence instead of the window.
        rescale: ``(RescaleSlope, RescaleIntercept)``; slope > 0, and with a VOI LUT both must
            be whole numbers and the smallest output value non-negative.
        value_range: the fractions of the stored range that display black and white.
        view_code: add a ``ViewCodeSequence`` for this view (``PA``, ``AP``, ``LL``, ``RL``).
        series_description: ``SeriesDescription`` (default: from the view position).

    Raises:
        ValueError: a bad argument (named in the message).
    """
    if modality not in SOP_CLASS:
        raise ValueError(f"modality must be one of {tuple(SOP_CLASS)}, got {modality!r}")
    missing = [k for k in UID_KEYS if not uids.get(k)]
    if missing:
        raise ValueError(f"uids lacks {missing}")
    if view_code is not None and view_code not in _VIEW_CODES:
        raise ValueError(f"view_code must be one of {tuple(_VIEW_CODES)}, got {view_code!r}")
    slope, intercept = float(rescale[0]), float(rescale[1])
    if slope <= 0:
        raise ValueError(f"rescale slope must be positive, got {slope}")
    pixels = stored_values(image01, photometric, bits_stored, value_range)
    top = 2**bits_stored - 1
    lo, hi = round(value_range[0] * top), round(value_range[1] * top)
    if photometric == "MONOCHROME1":
        lo, hi = top - hi, top - lo

    ds = _header(modality, uids, view_position, view_code, series_description)
    for keyword, value in phi.items():
        if datadict.tag_for_keyword(keyword) is None:
            raise ValueError(f"phi: {keyword!r} is not a DICOM keyword")
        setattr(ds, keyword, value)
    _set_pixel_module(ds, pixels, photometric, bits_stored, slope, intercept)
    if voi_lut_sequence:
        _set_voi_lut(ds, slope, intercept, slope * lo + intercept, slope * hi + intercept)
    elif window:
        _set_window(ds, slope * lo + intercept, slope * hi + intercept)
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = pixels.astype("<u2").tobytes()

    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _header(
    modality: str,
    uids: dict[str, str],
    view_position: str,
    view_code: str | None,
    series_description: str | None,
) -> Dataset:
    """File meta, SOP, study / series, equipment and view attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
    ds.file_meta.MediaStorageSOPInstanceUID = uids["SOPInstanceUID"]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "CXR_DAG_SYN_1"

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = SOP_CLASS[modality]
    ds.SOPInstanceUID = uids["SOPInstanceUID"]
    ds.StudyInstanceUID = uids["StudyInstanceUID"]
    ds.SeriesInstanceUID = uids["SeriesInstanceUID"]
    ds.Modality = modality
    ds.Manufacturer = SYNTHETIC_MANUFACTURER
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    lateral = view_position.upper() in ("LL", "RL", "LAT", "LATERAL")
    ds.PatientOrientation = ["P", "F"] if lateral else ["L", "F"]
    ds.SeriesDescription = series_description or ("CHEST LAT" if lateral else "CHEST PA")
    ds.SeriesNumber = 2 if lateral else 1
    ds.InstanceNumber = 1
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    if view_code is not None:
        code = Dataset()
        code.CodeValue, code.CodeMeaning = _VIEW_CODES[view_code]
        code.CodingSchemeDesignator = "SCT"
        ds.ViewCodeSequence = Sequence([code])
    return ds


def _set_pixel_module(
    ds: Dataset,
    pixels: np.ndarray,
    photometric: str,
    bits_stored: int,
    slope: float,
    intercept: float,
) -> None:
    """Image pixel description (not the data), pixel spacing and the modality LUT."""
    rows, cols = pixels.shape
    ds.ImagerPixelSpacing = [f"{430.0 / rows:.6g}", f"{430.0 / cols:.6g}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{slope:.10g}"
    ds.RescaleIntercept = f"{intercept:.10g}"
    ds.RescaleType = "US"


def _set_voi_lut(ds: Dataset, slope: float, intercept: float, ov_lo: float, ov_hi: float) -> None:
    """A linear 16-bit VOI LUT from the modality output range ``ov_lo..ov_hi`` to 0..65535.

    Raises:
        ValueError: non-integer rescale values, a negative output, or over 65536 entries.
    """
    if slope != int(slope) or intercept != int(intercept) or ov_lo < 0:
        raise ValueError("a VOI LUT needs whole-number rescale values and output >= 0")
    n = int(ov_hi - ov_lo) + 1
    if n > 65536:
        raise ValueError(f"a VOI LUT of {n} entries exceeds 65536; use a smaller range")
    ramp = np.rint(np.arange(n) / max(n - 1, 1) * 65535).astype("<u2")
    item = Dataset()
    item.add_new(0x00283002, "US", [n % 65536, int(ov_lo), 16])  # LUTDescriptor
    item.LUTExplanation = "LINEAR"
    item.add_new(0x00283006, "OW", ramp.tobytes())  # LUTData
    ds.VOILUTSequence = Sequence([item])


def _set_window(ds: Dataset, ov_lo: float, ov_hi: float) -> None:
    """A linear window displaying the modality output range ``ov_lo..ov_hi`` as 0..1."""
    ds.WindowCenter = f"{(ov_lo + ov_hi) / 2 + 0.5:.10g}"
    ds.WindowWidth = f"{ov_hi - ov_lo + 1:.10g}"
    ds.VOILUTFunction = "LINEAR"
