"""Every coded concept ``cxr predict --dicom-out`` writes, in one table, with where it comes from.

Findings are SNOMED CT where a concept exists, then RadLex, then DICOM (DCM); the one finding
with no concept verified here has a local code (scheme ``99CXRDAG``, DICOM's private-scheme
prefix ``99``), named for what it is rather than a guess that might code a different disease.
Sources, per row:

- *DICOM*: the concept appears in DICOM PS3.16 (the copy pydicom ships, ``pydicom.sr.codes``),
  with the context group it is listed in where there is one.
- *SNOMED CT*: the concept of the SNOMED CT International release (the SNOMED CT browser).
- *RadLex*: the RadLex term (RSNA RadLex, coding scheme ``RADLEX``).
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom.sr import CodedConcept


@dataclass(frozen=True)
class FindingCode:
    """The code of one finding and the source it was taken from."""

    value: str
    scheme: str
    meaning: str
    source: str

    def concept(self) -> CodedConcept:
        """The highdicom coded concept."""
        return CodedConcept(self.value, self.scheme, self.meaning)


#: The 14 findings of :data:`pipelines.labels.FINDINGS`, each with its code and source.
FINDING_CODES: dict[str, FindingCode] = {
    "Atelectasis": FindingCode("46621007", "SCT", "Atelectasis", "SNOMED CT"),
    "Cardiomegaly": FindingCode("287272002", "SCT", "Cardiomegaly", "DICOM CID 12248"),
    "Effusion": FindingCode("60046008", "SCT", "Pleural effusion", "DICOM CID 645"),
    "Infiltration": FindingCode("112121", "DCM", "Infiltrate", "DICOM CID 6102 (chest CAD)"),
    "Mass": FindingCode("4147007", "SCT", "Mass", "DICOM CID 6102 (chest CAD)"),
    "Nodule": FindingCode("27925004", "SCT", "Nodule", "DICOM CID 6102 (chest CAD)"),
    "Pneumonia": FindingCode("233604007", "SCT", "Pneumonia", "SNOMED CT"),
    "Pneumothorax": FindingCode("36118008", "SCT", "Pneumothorax", "DICOM CID 6102 (chest CAD)"),
    "Consolidation": FindingCode("RID43255", "RADLEX", "consolidation", "RadLex"),
    "Edema": FindingCode("19242006", "SCT", "Pulmonary edema", "DICOM CID 3700"),
    "Emphysema": FindingCode("87433001", "SCT", "Pulmonary emphysema", "SNOMED CT"),
    "Fibrosis": FindingCode("51615001", "SCT", "Fibrosis of lung", "SNOMED CT"),
    "Pleural_Thickening": FindingCode(
        "PLEURAL-THICKENING", "99CXRDAG", "Pleural thickening", "local code (none verified)"
    ),
    "Hernia": FindingCode("84089009", "SCT", "Hiatal hernia", "SNOMED CT"),
}

#: The model's output for a finding: a probability (DICOM), unitless (UCUM ``1``, CID 7181).
PROBABILITY = CodedConcept("122157", "DCM", "Probability")
UNITLESS = CodedConcept("1", "UCUM", "no units")
#: The decision at the validation threshold: SNOMED CT qualifier values Present / Absent.
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("272519000", "SCT", "Absent")
#: A finding the model was not trained on: no probability, no decision (DICOM CID 3703).
NOT_EVALUATED = CodedConcept("373121007", "SCT", "Not Evaluated")
#: Procedure reported: SNOMED CT "Plain chest X-ray" (procedure).
CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
#: Algorithm family (TID 4019): DICOM "Artificial Intelligence" (CID 7162).
ARTIFICIAL_INTELLIGENCE = CodedConcept("123110", "DCM", "Artificial Intelligence")
#: Purpose of the SC's source image reference (DICOM CID 7202).
SOURCE_FOR_PROCESSING = CodedConcept("121322", "DCM", "Source image for image processing operation")
