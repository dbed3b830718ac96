"""DICOM headers: quiet reading, text and integer values, the transfer syntax.

pydicom's value-validation warnings and log records quote the offending values, which may be
names, dates or ids (PHI): :func:`quiet` switches them off, and importing this module keeps the
``pydicom`` logger at ERROR. Every header read of the project goes through here.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipelines.dicom.reasons import CORRUPT, Reject

logging.getLogger("pydicom").setLevel(logging.ERROR)

#: The elements the ingest reader and ``cxr predict`` parse (pydicom seeks past the others;
#: SpecificCharacterSet is always read): identity, SOP class, modality, presentation intent,
#: body part, view, image geometry, sex and age.
HEADER_TAGS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "PresentationIntentType",
    "Modality",
    "SeriesDescription",
    "PatientID",
    "BodyPartExamined",
    "ProtocolName",
    "AcquisitionDeviceProcessingDescription",
    "ViewPosition",
    "StudyInstanceUID",
    "ViewCodeSequence",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    # subgroup attributes (pipelines.demographics): the dates only give the age band, then go
    "PatientSex",
    "PatientAge",
    "PatientBirthDate",
    "StudyDate",
)


#: Values that may be echoed in a message: code strings (Modality, ViewPosition ...) and UIDs.
CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")
UID_STRING = re.compile(r"[0-9.]{1,64}")


def shown(value: str, pattern: re.Pattern[str]) -> str:
    """``'value'`` when it matches ``pattern`` in full (safe to echo), else a neutral phrase."""
    return f"'{value}'" if pattern.fullmatch(value) else "an unrecognised value"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No value-quoting validation warnings (they could print PHI) inside the block."""
    settings = pydicom_config.settings
    old = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode = old


def read_header(source: str | Path | BinaryIO, tags: Sequence[str] | None = None) -> Dataset:
    """Parse a DICOM header up to the Pixel Data, quietly.

    pydicom converts (and validates) a value when it is first accessed: access the values
    inside :func:`quiet` too.

    Args:
        source: a path, or a binary handle (left at the first byte of the top-level Pixel Data
            element, or at the end of the file when there is none).
        tags: the only elements to parse (e.g. :data:`HEADER_TAGS`); None: all of them.

    Returns:
        The dataset, without its pixels.

    Raises:
        pydicom.errors.InvalidDicomError: no DICOM file header.
        Exception: whatever pydicom raises for a header it cannot parse (EOFError,
            struct.error, ValueError ...); its message may quote values: report the type only.
    """
    with quiet():
        return pydicom.dcmread(source, stop_before_pixels=True, specific_tags=tags)


def text(ds: Dataset, keyword: str) -> str:
    """A header value as stripped text ('' when absent); multiple values joined by spaces."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return " ".join(str(v) for v in value).strip()
    return str(value).strip()


def integer(
    ds: Dataset, keyword: str, default: int | None = None, *, strict: bool = True
) -> int | None:
    """A header value as an integer.

    Args:
        ds: the dataset.
        keyword: the element's keyword.
        default: returned when the element is absent or empty (and, unless ``strict``, when
            its value is not an integer).
        strict: a value that is not an integer is a corrupt header (the ingest reader's rule);
            ``cxr predict`` passes False and takes the default.

    Returns:
        The value, or ``default``.

    Raises:
        Reject: ``corrupt`` (naming the keyword, never the value) for a bad value when
            ``strict``.
    """
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        if strict:
            raise Reject(CORRUPT, f"{keyword} is not an integer") from None
        return default


def transfer_syntax(ds: Dataset) -> UID | None:
    """The transfer syntax of a dataset read from a file.

    The file meta header's TransferSyntaxUID; for a bare dataset (no file meta, or an empty
    UID) the encoding it was read in; None when neither is known (a dataset built in memory).
    """
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return UID(str(uid).strip())
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        return None
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian
