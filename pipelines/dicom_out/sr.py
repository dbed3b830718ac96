"""The Comprehensive SR of one study's predictions: a TID 1500 Measurement Report (highdicom).

The tree (PS3.16 TID 1500, 1501, 4019):

- the observer is the device: the algorithm's UID, name and manufacturer (TID 1004);
- procedure reported: SNOMED CT *Plain chest X-ray*; the image library lists the source images;
- one **measurement group** (TID 1501) per finding of the model, in its output order: a tracking
  identifier (the finding's name and a deterministic UID), the finding type (its code,
  :mod:`pipelines.dicom_out.codes`), the algorithm identification (TID 4019: name, version,
  parameters: the threshold policy and the hashes, the data notice, and this finding's decision
  threshold), references to the source images, and
  - a **trained** finding: the probability as a numeric measurement (DCM *Probability*, UCUM
    ``1``) and a qualitative evaluation *Present* or *Absent* (SNOMED CT) at the validation
    threshold (present when probability >= threshold, as in the table);
  - a **not trained** finding: no measurement, and the qualitative evaluation *Not Evaluated*
    (SNOMED CT 373121007, CID 3703); the reason is an algorithm parameter of the group. A viewer
    shows "Not Evaluated", never present or absent.

The document is COMPLETE, UNVERIFIED and PRELIMINARY: no person has checked it. It is in the
source study: highdicom copies the Patient and Study modules of the frontal image's header (the
evidence) into it; the series and instance are new, with deterministic UIDs
(:func:`pipelines.dicom_out.identity.derived_uid`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from highdicom.sr import (
    AlgorithmIdentification,
    ComprehensiveSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines.dicom_out.codes import (
    ABSENT,
    ARTIFICIAL_INTELLIGENCE,
    CHEST_XRAY,
    FINDING_CODES,
    NOT_EVALUATED,
    PRESENT,
    PROBABILITY,
    UNITLESS,
)
from pipelines.dicom_out.identity import (
    MANUFACTURER,
    SR_SERIES_NUMBER,
    Algorithm,
    Source,
    derived_uid,
    values_unshown,
)


@dataclass(frozen=True)
class FindingResult:
    """What ``cxr predict`` says about one finding (a row of its table)."""

    finding: str
    trained: bool
    probability: float = math.nan
    threshold: float = math.nan
    positive: bool | None = None
    reason: str = ""
    policy: str = ""


def library_view(header: Dataset) -> Dataset:
    """The header as the image library reads it (TID 1601 entry descriptors).

    highdicom describes a projection radiograph (CR, DX ...) by its patient orientation and
    imager pixel spacing, and fails on a header without them, as many real CR headers are
    (PixelSpacing only, an empty PatientOrientation). Such a header is given with a blank
    Modality, so its entry has the modality (from the SOP class), rows and columns, and leaves
    out what the header does not say.
    """
    orientation = header.get("PatientOrientation") or []
    described = len(orientation) == 2 and len(header.get("ImagerPixelSpacing") or []) == 2
    if described:
        return header
    view = Dataset(header)
    view.Modality = ""
    return view


def _algorithm_id(algorithm: Algorithm, *extra: str) -> AlgorithmIdentification:
    notice = (f"notice: {algorithm.notice}",) if algorithm.notice else ()
    return AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[*algorithm.parameters, *notice, *extra],
        family=ARTIFICIAL_INTELLIGENCE,
        manufacturer=MANUFACTURER,
    )


def _group(
    result: FindingResult, sources: Sequence[Source], algorithm: Algorithm
) -> MeasurementsAndQualitativeEvaluations:
    """The TID 1501 group of one finding (module docstring)."""
    code = FINDING_CODES[result.finding].concept()
    tracking = TrackingIdentifier(
        uid=derived_uid(list(sources), algorithm, "finding", result.finding),
        identifier=result.finding,
    )
    if result.trained:
        value = PRESENT if result.positive else ABSENT
        detail = f"decision threshold: {result.threshold:.6f} ({result.policy})"
        measurements = [Measurement(PROBABILITY, round(float(result.probability), 6), UNITLESS)]
    else:
        value, detail, measurements = NOT_EVALUATED, f"not trained: {result.reason}", []
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=code,
        algorithm_id=_algorithm_id(algorithm, detail),
        measurements=measurements or None,
        qualitative_evaluations=[QualitativeEvaluation(code, value)],
        source_images=[SourceImageForMeasurementGroup.from_source_image(s.header) for s in sources],
    )


def build_sr(
    sources: Sequence[Source], results: Sequence[FindingResult], algorithm: Algorithm
) -> ComprehensiveSR:
    """The Comprehensive SR of one study (module docstring).

    Args:
        sources: the images the model read, the frontal first (its header gives the patient
            and study modules).
        results: one per finding of the model, in output order.
        algorithm: :func:`pipelines.dicom_out.identity.algorithm_from_card`.
    """
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=algorithm.uid,
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=algorithm.name,
        ),
    )
    headers = [s.header for s in sources]
    with values_unshown():
        return _document(headers, sources, results, algorithm, observer)


def _document(
    headers: list[Dataset],
    sources: Sequence[Source],
    results: Sequence[FindingResult],
    algorithm: Algorithm,
    observer: ObserverContext,
) -> ComprehensiveSR:
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=CHEST_XRAY,
        imaging_measurements=[_group(r, sources, algorithm) for r in results],
        referenced_images=[library_view(h) for h in headers],
    )
    return ComprehensiveSR(
        evidence=headers,
        content=report[0],
        series_instance_uid=derived_uid(list(sources), algorithm, "sr", "series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid(list(sources), algorithm, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="cxr-dag findings (AI, unverified)",
        software_versions=algorithm.version[:64],
    )
