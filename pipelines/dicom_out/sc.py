"""A Secondary Capture image per (finding, view): the overlay burned into a derived image.

The overlay is an RGB ``uint8`` array ``(H, W, 3)`` (what the explanation's ``overlay()``
returns): the source image with the saliency of one finding drawn on it. The SC (highdicom
:class:`~highdicom.sc.SCImage`) is:

- in the source study, patient and study modules copied from the source header, in a new series
  shared by the study's overlays, with deterministic UIDs
  (:func:`pipelines.dicom_out.identity.derived_uid`);
- **derived**: ImageType ``DERIVED\\SECONDARY\\OTHER``, a SourceImageSequence referencing the
  source image (purpose: *Source image for image processing operation*, DICOM CID 7202),
  DerivationDescription saying what was drawn and by which algorithm version;
- **burned-in**: BurnedInAnnotation ``YES`` (the colours are in the pixels);
- **not for primary diagnosis**, said in ImageComments and DerivationDescription, and in the
  SeriesDescription a PACS lists;
- geometric where it can be honest: PatientOrientation is the source's (its rows and columns
  point the same way after a resize or a pad; empty when the source's is empty), PixelSpacing
  only when the overlay has the source's rows and columns, Laterality the source's (empty for a
  chest); LossyImageCompression ``01`` when the source was lossy compressed.
"""

from __future__ import annotations

import numpy as np
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.dicom_out.codes import FINDING_CODES, SOURCE_FOR_PROCESSING
from pipelines.dicom_out.identity import (
    MANUFACTURER,
    SC_SERIES_NUMBER,
    Algorithm,
    Source,
    derived_uid,
    values_unshown,
)

NOT_FOR_DIAGNOSIS = "NOT FOR PRIMARY DIAGNOSIS"
NOT_FOR_DIAGNOSIS_TEXT = (
    f"{NOT_FOR_DIAGNOSIS}: an AI explanation overlay, derived from the source image"
)
_PLACEHOLDER_ORIENTATION = ("L", "F")  # replaced by the source's value after construction


def _check_overlay(overlay: np.ndarray, finding: str, view: str) -> np.ndarray:
    array = np.asarray(overlay)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"overlay of {finding} ({view}): an RGB uint8 array (H, W, 3) is needed, "
            f"got {array.dtype} {array.shape}"
        )
    return np.ascontiguousarray(array)


def _spacing(header: Dataset, shape: tuple[int, ...]) -> tuple[float, float] | None:
    same = (int(header.get("Rows", 0)), int(header.get("Columns", 0))) == tuple(shape[:2])
    spacing = header.get("PixelSpacing") or header.get("ImagerPixelSpacing")
    if not same or not spacing or len(spacing) != 2:
        return None
    return float(spacing[0]), float(spacing[1])


def _source_reference(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [SOURCE_FOR_PROCESSING]
    return item


def _sc_image(
    source: Source,
    pixels: np.ndarray,
    finding: str,
    algorithm: Algorithm,
    sources: list[Source],
    instance_number: int,
) -> SCImage:
    """highdicom's SC with the source's patient and study modules, before the derived marks."""
    sc = SCImage.from_ref_dataset(
        ref_dataset=source.header,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=derived_uid(sources, algorithm, "sc", "series"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=derived_uid(sources, algorithm, "sc", finding, source.view),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        pixel_spacing=_spacing(source.header, pixels.shape),
        patient_orientation=_PLACEHOLDER_ORIENTATION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=f"cxr-dag overlays (AI, {NOT_FOR_DIAGNOSIS.lower()})",
        software_versions=algorithm.version[:64],
    )
    sc.copy_patient_and_study_information(source.header)
    return sc


def build_sc(
    source: Source,
    overlay: np.ndarray,
    finding: str,
    algorithm: Algorithm,
    sources: list[Source],
    instance_number: int = 1,
) -> SCImage:
    """The Secondary Capture of one finding's overlay on one source image (module docstring).

    Args:
        source: the image the overlay was drawn on.
        overlay: RGB uint8 (H, W, 3).
        finding: the finding whose saliency the overlay shows.
        algorithm: the model's identification.
        sources: all the study's sources (they seed the UIDs, as for the SR).
        instance_number: the SC's number in its series.

    Raises:
        ValueError: the overlay is not an RGB uint8 image, or the finding has no code.
    """
    if finding not in FINDING_CODES:
        raise ValueError(f"overlay of an unknown finding {finding!r}")
    pixels = _check_overlay(overlay, finding, source.view)
    header = source.header
    with values_unshown():
        sc = _sc_image(source, pixels, finding, algorithm, sources, instance_number)
    orientation = list(header.get("PatientOrientation") or [])
    sc.PatientOrientation = orientation if len(orientation) == 2 else ""
    if header.get("BodyPartExamined"):
        sc.BodyPartExamined = header.BodyPartExamined  # CHEST: unpaired, so no Laterality
    if header.get("Laterality"):
        sc.Laterality = header.Laterality
    what = (
        f"Saliency of {finding} ({FINDING_CODES[finding].meaning}) by {algorithm.name} "
        f"{algorithm.version}, drawn on the {source.view} image"
    )
    sc.ImageComments = f"{NOT_FOR_DIAGNOSIS_TEXT}. {what}."[:10240]
    sc.DerivationDescription = f"{what}; {NOT_FOR_DIAGNOSIS.lower()}"[:1024]
    sc.BurnedInAnnotation = "YES"
    sc.SourceImageSequence = [_source_reference(header)]
    if str(header.get("LossyImageCompression", "")) == "01":
        sc.LossyImageCompression = "01"
    return sc
