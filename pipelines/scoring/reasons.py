"""Why a study cannot be scored: a stable reason code per refusal of ``cxr predict``.

The refusals are predict's own (:mod:`pipelines.predict.studies`, :func:`pipelines.predict.run`):
their one-line messages are mapped to codes here, so the run summary counts studies by reason
and a study refused once is not fetched again for the same model version.
"""

from __future__ import annotations

from pipelines.errors import PredictError, UserError


class PacsError(UserError):
    """The DICOMweb server (or the watched folder) of ``cxr score`` cannot be used: a wrong URL,
    refused credentials, or a server still failing after the retries (one line, no PHI).

    It lives here rather than in :mod:`pipelines.errors` because that module is a dependency of
    every DVC stage, and no stage uses this one.
    """


#: reason code -> a phrase of predict's message that identifies it (first match wins)
REASONS: dict[str, str] = {
    "not_radiograph": "not a chest radiograph study",
    "for_processing": "FOR PROCESSING",
    "not_chest": "not a chest study",
    "no_frontal": "no usable frontal view",
    "mixed_patients": "different patients",
    "mixed_studies": "different studies",
    "no_images": "no DICOM images found",
    "decode_failure": "cannot read the image",
}
UNTRAINED_MODEL = "untrained_model"
UNGATED_MODEL = "ungated_model"  # exported without the out-of-distribution gate: nothing scored
OUT_OF_DISTRIBUTION = "out_of_distribution"  # the gate refused the study (pipelines.ood)
OTHER = "unscorable"


class Unscorable(Exception):
    """A study the model cannot score; ``reason`` is a code of :data:`REASONS`,
    :data:`UNTRAINED_MODEL`, :data:`UNGATED_MODEL` or :data:`OUT_OF_DISTRIBUTION`."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def reason_of(error: PredictError) -> str:
    """The reason code of one of predict's refusals (:data:`OTHER` when none matches)."""
    message = str(error)
    return next((code for code, phrase in REASONS.items() if phrase in message), OTHER)
