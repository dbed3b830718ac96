"""Stable reason codes of a DICOM file the ingest reader rejects, and the exception carrying one.

:class:`Reject` is internal control flow of the reader (:mod:`pipelines.sources.dicom`): the
checks of this package raise it, the reader turns it into a rejection row; it never escapes.
Its ``detail`` names tags, sizes and syntaxes, never a header value of an identifying tag.
"""

from __future__ import annotations

EMPTY_FILE = "empty_file"
UNREADABLE = "unreadable"
NOT_DICOM = "not_dicom"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
NO_PIXEL_DATA = "no_pixel_data"
UNSUPPORTED_MODALITY = "unsupported_modality"
NOT_CHEST = "not_chest"
FOR_PROCESSING = "for_processing"
MULTI_FRAME = "multi_frame"
UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
NO_PATIENT_ID = "no_patient_id"
NO_STUDY_UID = "no_study_uid"
NO_SOP_UID = "no_sop_uid"
NO_VIEW = "no_view"
DUPLICATE_IMAGE_ID = "duplicate_image_id"
UNSUPPORTED_PHOTOMETRIC = "unsupported_photometric"
BROKEN_LINK = "broken_link"
NOT_A_REGULAR_FILE = "not_a_regular_file"
TOO_LARGE = "too_large"  # over a size limit of pipelines.limits, refused from the header


class Reject(Exception):  # control flow inside the reader, not a pipelines.errors type
    """A file is not accepted: ``reason`` (a code above) and a PHI-free ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail
