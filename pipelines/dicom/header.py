"""DICOM headers: quiet reading, text and integer values, the transfer syntax, bounded reads.

pydicom's value-validation warnings and log records quote the offending values, which may be
names, dates or ids (PHI): :func:`quiet` switches them off, and importing this module keeps the
``pydicom`` logger at ERROR. Every header read of the project goes through here.

Every DICOM file the project parses is opened with :func:`open_dicom`
(:class:`pipelines.limits.BoundedFile`), so that a length field never allocates more than the
file holds, and a deflated data set is
refused before pydicom inflates it when it would exceed the limit
(:func:`check_inflated_size`): pydicom inflates the whole data set in memory before reading its
first element, and deflate reaches ratios of 1000:1.
"""

from __future__ import annotations

import contextlib
import logging
import re
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pipelines.dicom.reasons import CORRUPT, TOO_LARGE, Reject
from pipelines.limits import BoundedFile, dataset_bytes_limit, open_bounded

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


_DEFLATED = DeflatedExplicitVRLittleEndian.encode()
_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) UL, 4 bytes: the meta's length
_META_HEAD = 8192


def open_dicom(path: str | Path) -> BoundedFile:
    """Open a DICOM file for pydicom (:class:`pipelines.limits.BoundedFile`)."""
    return open_bounded(path)


def check_inflated_size(fh: BinaryIO, max_bytes: int) -> None:
    """Refuse a deflated data set that would inflate past ``max_bytes``; the handle is kept.

    Other files pass after their file meta header is read. A file whose meta header cannot be
    read passes too: pydicom reports it when it reads the header.

    Raises:
        Reject: ``too_large`` (the inflated size is counted 1 MiB at a time, nothing is kept).
    """
    from pydicom.filereader import _read_file_meta_info, read_preamble

    start = fh.tell()
    try:
        if _not_deflated(fh.read(_META_HEAD)):
            return
        fh.seek(start)
        read_preamble(fh, True)
        meta = _read_file_meta_info(fh)
        deflated = (
            str(meta.get("TransferSyntaxUID", "") or "").strip() == DeflatedExplicitVRLittleEndian
        )
        if deflated:
            _count_inflated(fh, max_bytes)
    except Reject:
        raise
    except Exception:  # pydicom's own read reports a broken header
        pass
    finally:
        fh.seek(start)


def _not_deflated(head: bytes) -> bool:
    """Whether the first bytes of a file show that it is not deflated (False: cannot tell).

    The file meta header (group 0002, after the 'DICM' prefix or at the start of a bare data
    set) declares the transfer syntax: a file whose meta group lies whole in ``head`` and does
    not hold the deflated syntax's UID is not deflated, nor is a data set without a meta group.
    """
    start = 132 if head[128:132] == b"DICM" else 0
    if head[start : start + 2] != b"\x02\x00":
        return True
    if _DEFLATED in head:
        return False
    if head[start : start + 8] != _GROUP_LENGTH:
        return False
    (length,) = struct.unpack("<I", head[start + 8 : start + 12])
    return start + 12 + length <= len(head)


def _count_inflated(fh: BinaryIO, max_bytes: int) -> None:
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    while chunk := fh.read(1 << 20):
        while chunk:
            total += len(inflater.decompress(chunk, 1 << 20))
            if total > max_bytes:
                raise Reject(
                    TOO_LARGE,
                    f"the deflated data set inflates to more than {max_bytes:,} bytes (the limit "
                    "for one data set, from max_image_pixels); refused before inflating it",
                )
            chunk = inflater.unconsumed_tail


def read_header(
    source: str | Path | BinaryIO,
    tags: Sequence[str] | None = None,
    *,
    force: bool = False,
    max_bytes: int | None = None,
) -> Dataset:
    """Parse a DICOM header up to the Pixel Data, quietly, within a memory bound.

    pydicom converts (and validates) a value when it is first accessed: access the values
    inside :func:`quiet` too.

    Args:
        source: a path (opened with :func:`open_dicom`), or a binary handle, best a
            :class:`~pipelines.limits.BoundedFile` (left at the first byte of the top-level
            Pixel Data element, or at the end of the file when there is none).
        tags: the only elements to parse (e.g. :data:`HEADER_TAGS`); None: all of them.
        force: read a data set without the 'DICM' prefix too (pydicom's ``force``).
        max_bytes: the most a deflated data set may inflate to (default:
            :func:`pipelines.limits.dataset_bytes_limit`).

    Returns:
        The dataset, without its pixels.

    Raises:
        Reject: ``too_large``: a deflated data set inflating past ``max_bytes``.
        pydicom.errors.InvalidDicomError: no DICOM file header.
        Exception: whatever pydicom raises for a header it cannot parse (EOFError,
            struct.error, ValueError ...); its message may quote values: report the type only.
    """
    limit = dataset_bytes_limit() if max_bytes is None else max_bytes
    with contextlib.ExitStack() as stack:
        if isinstance(source, str | Path):
            source = stack.enter_context(open_dicom(source))
        with quiet():
            check_inflated_size(source, limit)
            return pydicom.dcmread(source, stop_before_pixels=True, specific_tags=tags, force=force)


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
