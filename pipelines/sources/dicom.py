"""DICOM folder reader (ingest source ``dicom``): one manifest row per accepted file.

Every regular file under the input folder (any name, with or without ``.dcm``, nested; symlinked
folders are followed once, so a link loop is never walked twice) is an input, and is either
accepted or rejected with a stable reason code, so ``n_inputs == len(manifest) + len(rejected)``.
Entries that are not regular files (a dangling or looping symlink, a FIFO) are inputs too, rejected
unopened (``broken_link``, ``not_a_regular_file``), so nothing in the folder is silently skipped.

How a file is read (headers only, no pixel decoding)
-----------------------------------------------------
Each file is opened once and parsed with ``pydicom.dcmread(fh, stop_before_pixels=True)`` on our
own file handle. pydicom stops with the handle at the first byte of the top-level Pixel Data
element (7FE0,0010); we then read that element's 8-12 byte header ourselves and check it
without reading the pixel values:

* uncompressed syntaxes: the declared length must reach Rows x Columns x SamplesPerPixel x
  BitsAllocated / 8, and the file must hold that many bytes (a file cut short keeps the header's
  length field, so the two are compared separately);
* encapsulated syntaxes: we seek from item header to item header up to the sequence delimiter,
  so every fragment must lie inside the file, at least one non-empty fragment must follow the
  Basic Offset Table, a JPEG / JPEG-LS / JPEG 2000 stream must end with its end-of-image marker
  (FFD9) and an RLE header's segment offsets must fall inside its fragment.

A file with no Pixel Data is told apart from one cut short in its header by checking that its
last element ends exactly at the end of the file.

Decodability without decoding: the transfer syntax needs an installed pydicom decoder
(``pydicom.pixels.get_decoder(uid)``: native, or its plugins' availability); 12-bit JPEG
Extended needs the pylibjpeg plugin (pydicom's Pillow plugin refuses 12-bit); and a baseline /
extended JPEG scan header must select the full spectrum 0..63. DESIGN.md §6 saw pydicom's
``JPEG-lossy.dcm`` (12-bit JPEG Extended) fail with every decoder: its SOS header says 0..0,
whereas ``JPGExtended.dcm``, the same 12-bit stream with 0..63, decodes with pylibjpeg. So the
broken header is rejected (``corrupt``), not every 12-bit JPEG Extended file.

Why not ``defer_size``: a deferred read still walks the whole file, and for undefined-length
(encapsulated) Pixel Data pydicom reads the entire value into memory to find its delimiter (all
the compressed bytes of every file), without saying where the element starts or whether its
declared length fits the file. ``stop_before_pixels`` on our own handle costs the header bytes
plus a few item headers. Deflated files (rare) are the exception: their offsets refer to the
inflated stream, so they are inflated whole and the Pixel Data length is checked in memory.

Views (DESIGN.md §3), first decisive source wins: ``ViewPosition``; then ``ViewCodeSequence``
(code values of DICOM CID 4010, SNOMED CT and legacy SNOMED-RT, then CodeMeaning text); then the
text of SeriesDescription, ProtocolName, StudyDescription, AcquisitionDeviceProcessingDescription
(word-boundary tokens). ``view_raw`` holds the defined term, code meaning or matched token, never
a whole free-text description (which could carry PHI).

PHI: identifying values (PatientID, StudyInstanceUID, SOPInstanceUID) are read only to be hashed
with the salt (:mod:`pipelines.keys`, values prefixed ``dicom:``); names, dates, accession numbers
and institutions are never read. Rejection details name tags, sizes and syntaxes only, and
pydicom's value-validation warnings (which quote values) are switched off while reading.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import math
import os
import re
import struct
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from pipelines.errors import SourceError
from pipelines.io import Rejection
from pipelines.keys import get_salt, make_key
from pipelines.labels import FINDINGS, UncertainPolicy, apply_uncertain_policy
from pipelines.schema import canonical_view, conform_manifest
from pipelines.sources import ReadOptions, SourceResult

SOURCE = "dicom"
logger = logging.getLogger(__name__)

ACCEPTED_MODALITIES: frozenset[str] = frozenset({"CR", "DX", "DR"})
DECODABLE_PHOTOMETRIC: frozenset[str] = frozenset({"MONOCHROME1", "MONOCHROME2", "RGB"})  # + YBR_*

# Stable rejection reason codes.
EMPTY_FILE = "empty_file"
UNREADABLE = "unreadable"
NOT_DICOM = "not_dicom"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
NO_PIXEL_DATA = "no_pixel_data"
UNSUPPORTED_MODALITY = "unsupported_modality"
NOT_CHEST = "not_chest"
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

# ---------------------------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------------------------

# ViewPosition (0018,5101) defined terms, PS3.3 C.8.11.5.1.1; decubitus / oblique are OTHER.
_VIEW_POSITION_TERMS: dict[str, str] = {
    "AP": "AP",
    "PA": "PA",
    "LL": "LATERAL",
    "RL": "LATERAL",
    "RLD": "OTHER",
    "LLD": "OTHER",
    "RLO": "OTHER",
    "LLO": "OTHER",
}

# ViewCodeSequence code values (DICOM CID 4010 "DX View"): SNOMED CT and legacy SNOMED-RT.
# Checked against PixelMed's ProjectionXRayAnatomy (D. Clunie) and DICOM CID 3466: SCT 399348003
# is antero-posterior (not PA); postero-anterior is SCT 272479007 (current) / 399066004 (retired).
VIEW_CODES: dict[str, str] = {
    "272479007": "PA",  # SCT postero-anterior projection
    "399066004": "PA",  # SCT postero-anterior (retired concept, older files)
    "R-10214": "PA",  # SRT postero-anterior
    "399348003": "AP",  # SCT antero-posterior
    "R-10206": "AP",  # SRT antero-posterior
    "399173006": "LATERAL",  # SCT left lateral
    "R-10236": "LATERAL",  # SRT left lateral
    "399198007": "LATERAL",  # SCT right lateral
    "R-10232": "LATERAL",  # SRT right lateral
    "399067008": "LATERAL",  # SCT lateral
    "R-102CD": "LATERAL",  # SRT lateral
}

VIEW_TEXT_FIELDS: tuple[str, ...] = (
    "SeriesDescription",
    "ProtocolName",
    "StudyDescription",
    "AcquisitionDeviceProcessingDescription",
)

_CS_TEXT = re.compile(r"[A-Z0-9_ ]{1,16}")  # code string charset: safe to echo
_UID_TEXT = re.compile(r"[0-9.]{1,64}")
_B, _E = r"(?<![A-Z0-9])", r"(?![A-Z0-9])"
# Qualifiers that make a projection neither plain PA/AP nor lateral: decide OTHER for that field.
_OTHER_TEXT = re.compile(_B + r"(DECUB\w*|OBLIQUE|LORDOTIC|LLD|RLD|LLO|RLO|LAO|RAO|LPO|RPO)" + _E)
_SPECIFIC_TEXT: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("PA", re.compile(_B + r"(P\.?A\.?|POSTERO[-_ ]?ANTERIOR)" + _E)),
    ("AP", re.compile(_B + r"(A\.?P\.?|ANTERO[-_ ]?POSTERIOR)" + _E)),
    (
        "LATERAL",
        re.compile(
            _B + r"(LATERO[-_ ]?LATERAL|(?:LEFT|RIGHT)[-_ ]LATERAL|LAT(?:ERAL)?\.?|LL|RL)" + _E
        ),
    ),
)
_WEAK_TEXT = re.compile(_B + r"(FRONTAL)" + _E)


@dataclass(frozen=True)
class _ViewFinding:
    view: str  # PA, AP, LATERAL, OTHER, or '' when nothing was found
    raw: str
    note: str = ""  # why nothing was found (for the no_view detail)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return " ".join(str(v) for v in value).strip()
    return str(value).strip()


def _views_in_text(text: str) -> tuple[str, str, set[str]]:
    """(decision, token, specific views seen) for one free-text field (decision '' = none)."""
    upper = text.upper()
    if not upper:
        return "", "", set()
    other = _OTHER_TEXT.search(upper)
    if other:
        return "OTHER", text[other.start() : other.end()], set()
    found: dict[str, str] = {}
    for view, pattern in _SPECIFIC_TEXT:
        match = pattern.search(upper)
        if match:
            found[view] = text[match.start() : match.end()]
    if len(found) == 1:
        view, token = next(iter(found.items()))
        return view, token, set(found)
    if len(found) > 1:
        return "", "", set(found)
    weak = _WEAK_TEXT.search(upper)
    if weak:
        return "", text[weak.start() : weak.end()], set()
    return "", "", set()


def _find_view(ds: Dataset) -> _ViewFinding:
    fallback = ""  # a non-decisive hint: gives OTHER if nothing better turns up
    position = _text(ds, "ViewPosition")
    if position:
        upper = position.upper()
        if upper in _VIEW_POSITION_TERMS:
            return _ViewFinding(_VIEW_POSITION_TERMS[upper], position)
        view = canonical_view(position)
        if view != "OTHER":
            return _ViewFinding(view, position)
        fallback = position if _CS_TEXT.fullmatch(upper) else "non-standard ViewPosition"

    for item in ds.get("ViewCodeSequence") or []:
        code = str(item.get("CodeValue", "") or "").strip()
        meaning = str(item.get("CodeMeaning", "") or "").strip()[:64]
        if code in VIEW_CODES:
            scheme = str(item.get("CodingSchemeDesignator", "") or "").strip()
            return _ViewFinding(VIEW_CODES[code], meaning or f"{scheme}:{code}")
        decision, token, _ = _views_in_text(meaning)
        if decision:
            return _ViewFinding(decision, meaning)
        fallback = fallback or meaning or token

    ambiguous: list[str] = []
    for keyword in VIEW_TEXT_FIELDS:
        decision, token, seen = _views_in_text(_text(ds, keyword))
        if decision:
            return _ViewFinding(decision, token)
        if len(seen) > 1:
            ambiguous.append(f"{keyword} names {' and '.join(sorted(seen))}")
        fallback = fallback or token
    if fallback:
        return _ViewFinding("OTHER", fallback)
    if ambiguous:
        return _ViewFinding("", "", "the view is ambiguous: " + "; ".join(ambiguous))
    return _ViewFinding(
        "",
        "",
        "no ViewPosition, no ViewCodeSequence, and no PA/AP/lateral term in "
        + ", ".join(VIEW_TEXT_FIELDS),
    )


def dicom_view(ds: Dataset) -> tuple[str, str]:
    """The canonical view of a DICOM header and the raw value that decided it.

    Order (DESIGN.md §3): ``ViewPosition``; then ``ViewCodeSequence`` (code values for
    postero-anterior, antero-posterior, left/right lateral, then CodeMeaning); then the text of
    SeriesDescription, ProtocolName, StudyDescription, AcquisitionDeviceProcessingDescription.
    Decubitus and oblique projections are ``OTHER``; a text field naming several views (``PA AND
    LAT``) decides nothing.

    Args:
        ds: a header, e.g. from ``pydicom.dcmread(path, stop_before_pixels=True)``.

    Returns:
        ``(view, raw)``: view in ``PA``, ``AP``, ``LATERAL``, ``OTHER``; raw is the defined term,
        code meaning or matched token (never a whole description). ``("", "")`` when the header
        has no view information at all.
    """
    found = _find_view(ds)
    return found.view, found.raw


# ---------------------------------------------------------------------------------------------
# Per-file checks (run in worker processes)
# ---------------------------------------------------------------------------------------------

#: BodyPartExamined fragments that mean a chest (ingest and ``cxr predict`` share them).
CHEST_WORDS = ("CHEST", "THORA", "TORAX", "TORACE", "LUNG", "PULM")
# fmt: off
_NOT_CHEST_WORDS: frozenset[str] = frozenset({
    "ABDOMEN", "ANKLE", "ARM", "BLADDER", "BRAIN", "BREAST", "CALCANEUS", "CLAVICLE", "COCCYX",
    "COLON", "CSPINE", "ELBOW", "ESOPHAGUS", "EXTREMITY", "EYE", "FACE", "FEMUR", "FINGER",
    "FOOT", "FOREARM", "HAND", "HEAD", "HEEL", "HIP", "HUMERUS", "JAW", "KIDNEY", "KNEE", "LEG",
    "LIVER", "LSPINE", "MANDIBLE", "NECK", "NOSE", "ORBIT", "PATELLA", "PELVIS", "SACRUM",
    "SCAPULA", "SHOULDER", "SINUS", "SKULL", "SPINE", "STOMACH", "TIBIA", "TMJ", "TOE",
    "TSPINE", "THUMB", "WRIST", "ZYGOMA",
})
# fmt: on
_END_MARKER_SYNTAXES: frozenset[str] = frozenset(
    [*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes]
)
_SEQUENTIAL_DCT_SYNTAXES: frozenset[str] = frozenset([JPEGBaseline8Bit, JPEGExtended12Bit])
_ITEM, _SEQ_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
_PIXEL_DATA, _FLOAT_PIXEL_TAGS = 0x7FE00010, (0x7FE00008, 0x7FE00009)
_LONG_LENGTH_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT"}


# The only elements parsed (pydicom seeks past the rest; SpecificCharacterSet is always read).
HEADER_TAGS: tuple[str, ...] = (
    "SOPInstanceUID",
    "Modality",
    "StudyDescription",
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
)


class _Reject(Exception):  # internal control flow: never escapes this module
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class _Outcome:
    path: str
    row: dict[str, Any] | None = None
    reason: str = ""
    detail: str = ""


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """No value-quoting validation warnings (they could print PHI) while headers are read."""
    settings = pydicom_config.settings
    old = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode = old


def _safe(value: str, pattern: re.Pattern[str]) -> str:
    return f"'{value}'" if pattern.fullmatch(value) else "an unrecognised value"


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _Reject(CORRUPT, f"{keyword} is not an integer") from None


@lru_cache(maxsize=64)
def _decoder_plugins(uid: str) -> tuple[str, ...]:
    """Names of the installed pydicom decoder plugins for a syntax (empty: none)."""
    try:
        decoder = get_decoder(UID(uid))
    except NotImplementedError:
        return ()
    if not decoder.is_available:
        return ()
    return ("native",) if decoder.is_native else tuple(sorted(decoder.available_plugins))


def _transfer_syntax(ds: Dataset) -> UID:
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid:
        return UID(str(uid).strip())
    implicit, little = getattr(ds, "original_encoding", (False, True))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _check_header_complete(ds: Dataset, size: int) -> None:
    """No Pixel Data was found: make sure the header was not cut short instead."""
    tags = list(ds.keys())
    if not tags:
        raise _Reject(TRUNCATED, "the file ends right after its file meta header")
    elem = ds.get_item(tags[-1])
    tell = getattr(elem, "value_tell", None)
    length = getattr(elem, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF:
        return  # an undefined-length sequence ends the file: cannot tell cheaply, trust it
    if tell + length > size:
        raise _Reject(TRUNCATED, f"the file ends inside element {tags[-1]} of its header")
    if tell + length < size:
        raise _Reject(
            TRUNCATED, f"{size - tell - length} stray bytes follow the last header element"
        )


def _read_element_header(fh: BinaryIO, implicit: bool, little: bool) -> tuple[int, int] | None:
    """(tag, length) of the element at the handle's position, or None at end of file."""
    endian = "<" if little else ">"
    head = fh.read(8)
    if len(head) < 8:
        return None
    group, element = struct.unpack(endian + "HH", head[:4])
    tag = group << 16 | element
    if implicit:
        return tag, struct.unpack(endian + "L", head[4:])[0]
    if head[4:6] in _LONG_LENGTH_VRS:
        more = fh.read(4)
        if len(more) < 4:
            raise _Reject(TRUNCATED, "the file ends inside the Pixel Data element header")
        return tag, struct.unpack(endian + "L", more)[0]
    return tag, struct.unpack(endian + "H", head[6:])[0]


def _expected_bytes(rows: int, cols: int, samples: int, bits_allocated: int, ybr422: bool) -> int:
    """Bytes of one uncompressed frame (YBR_FULL_422 stores 2 values per pixel, PS3.3 C.7.6.3)."""
    values = rows * cols * (2 if ybr422 and samples == 3 else samples)
    if bits_allocated == 1:
        return math.ceil(values / 8)
    return values * math.ceil(bits_allocated / 8)


def _geometry_text(rows: int, cols: int, samples: int, bits_allocated: int) -> str:
    return f"{rows}x{cols}, {samples} sample(s) of {bits_allocated} bits"


def _check_jpeg_scan_header(fh: BinaryIO, offset: int, length: int) -> None:
    """A sequential DCT stream (baseline / extended) must scan spectral range 0..63 (T.81 B.2.3).

    Reads the stream's first few KB up to its SOS marker. pydicom's ``JPEG-lossy.dcm`` has
    ``Se = 0`` there: every decoder fails on it (DESIGN.md §6), while a valid 12-bit JPEG
    Extended stream (pydicom's ``JPGExtended.dcm``) decodes with pylibjpeg-libjpeg.
    """
    fh.seek(offset)
    data = fh.read(min(length, 8192))
    if data[:2] != b"\xff\xd8":
        raise _Reject(CORRUPT, "the JPEG stream does not start with an SOI marker (FFD8)")
    pos, sequential = 2, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return  # entropy-coded data or padding before SOS: leave it to the decoder
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (seg_len,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in (0xC0, 0xC1):
            sequential = True
        if marker == 0xDA:
            n_comp = data[pos + 4] if pos + 4 < len(data) else 0
            tail = data[pos + 5 + 2 * n_comp : pos + 8 + 2 * n_comp]
            if sequential and len(tail) == 3 and (tail[0], tail[1], tail[2]) != (0, 63, 0):
                raise _Reject(
                    CORRUPT,
                    f"the JPEG scan header is invalid for sequential DCT (spectral selection "
                    f"{tail[0]}..{tail[1]}, approximation {tail[2]:#04x}; must be 0..63, 0): "
                    "no decoder reads it",
                )
            return
        pos += 2 + seg_len


def _check_fragments(
    fh: BinaryIO, start: int, size: int, little: bool, syntax: UID, samples: int, bits: int
) -> None:
    """Walk the encapsulated Pixel Data items by their headers (no pixel bytes read)."""
    endian = "<" if little else ">"
    items: list[tuple[int, int]] = []  # (offset of value, length)
    pos = start
    while True:
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            raise _Reject(
                TRUNCATED,
                f"the file ends inside the encapsulated Pixel Data after {len(items)} item(s) "
                "(no sequence delimiter)",
            )
        group, element, length = struct.unpack(endian + "HHL", head)
        tag = group << 16 | element
        if tag == _SEQ_DELIMITER:
            break
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise _Reject(CORRUPT, f"encapsulated Pixel Data has a malformed item at byte {pos}")
        if pos + 8 + length > size:
            raise _Reject(
                TRUNCATED,
                f"Pixel Data fragment {len(items)} runs {pos + 8 + length - size} bytes past "
                "the end of the file",
            )
        items.append((pos + 8, length))
        pos += 8 + length
    fragments = [item for item in items[1:] if item[1] > 0]  # items[0]: Basic Offset Table
    if not fragments:
        raise _Reject(NO_PIXEL_DATA, "the encapsulated Pixel Data holds no compressed fragment")
    if syntax in _SEQUENTIAL_DCT_SYNTAXES:
        _check_jpeg_scan_header(fh, *fragments[0])
    if syntax in _END_MARKER_SYNTAXES:
        offset, length = fragments[-1]
        tail = min(length, 16)
        fh.seek(offset + length - tail)
        if b"\xff\xd9" not in fh.read(tail):
            raise _Reject(
                TRUNCATED,
                f"the {syntax.name} stream has no end-of-image marker (FFD9): it was cut short",
            )
    elif syntax == RLELossless:
        offset, length = fragments[0]
        fh.seek(offset)
        header = fh.read(64)
        if len(header) < 64:
            raise _Reject(TRUNCATED, "the RLE fragment is shorter than its 64-byte header")
        n_segments, *offsets = struct.unpack("<16L", header)
        want = samples * math.ceil(bits / 8)
        used = offsets[:n_segments]
        if (
            n_segments != want
            or not used
            or used[0] != 64
            or any(b <= a for a, b in itertools.pairwise(used))
            or used[-1] >= length
        ):
            raise _Reject(
                TRUNCATED,
                f"the RLE header lists {n_segments} segment(s) (expected {want}) whose offsets "
                f"do not fit its {length}-byte fragment",
            )


def _check_pixel_data(ds: Dataset, fh: BinaryIO, path: str, size: int, syntax: UID) -> None:
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits_allocated = _int(ds, "BitsAllocated")
    samples = _int(ds, "SamplesPerPixel", 1) or 1
    if not rows or not cols or not bits_allocated:
        missing = [
            k
            for k, v in (("Rows", rows), ("Columns", cols), ("BitsAllocated", bits_allocated))
            if not v
        ]
        raise _Reject(CORRUPT, f"the image pixel module lacks {', '.join(missing)}")
    bits_stored = _int(ds, "BitsStored", bits_allocated) or bits_allocated
    if not 1 <= bits_stored <= bits_allocated:
        raise _Reject(
            CORRUPT, f"BitsStored ({bits_stored}) must be 1 to BitsAllocated ({bits_allocated})"
        )
    ybr422 = _text(ds, "PhotometricInterpretation").upper() == "YBR_FULL_422"
    expected = _expected_bytes(rows, cols, samples, bits_allocated, ybr422)
    geometry = _geometry_text(rows, cols, samples, bits_allocated)

    if syntax == DeflatedExplicitVRLittleEndian:  # offsets refer to the inflated stream
        try:
            full = pydicom.dcmread(path)
            n_bytes = len(full.PixelData) if "PixelData" in full else 0
        except (zlib.error, EOFError, OSError, ValueError, struct.error) as exc:
            raise _Reject(
                TRUNCATED, f"the deflated data set cannot be inflated ({type(exc).__name__})"
            ) from None
        if n_bytes < expected:
            raise _Reject(
                TRUNCATED, f"Pixel Data holds {n_bytes} bytes; {geometry} needs {expected}"
            )
        return

    implicit, little = getattr(ds, "original_encoding", (False, True))
    header = _read_element_header(fh, bool(implicit), bool(little))
    if header is None or header[0] != _PIXEL_DATA:
        raise _Reject(NO_PIXEL_DATA, "no Pixel Data element (7FE0,0010)")
    _, length = header
    value_start = fh.tell()
    if syntax.is_compressed:
        if length != 0xFFFFFFFF:
            raise _Reject(
                CORRUPT, f"{syntax.name} needs encapsulated (undefined-length) Pixel Data"
            )
        _check_fragments(fh, value_start, size, bool(little), syntax, samples, bits_allocated)
        return
    if length == 0xFFFFFFFF:
        raise _Reject(CORRUPT, f"encapsulated Pixel Data in uncompressed {syntax.name}")
    if value_start + length > size:
        raise _Reject(
            TRUNCATED,
            f"the file ends {value_start + length - size} bytes before the end of its "
            f"{length}-byte Pixel Data",
        )
    if length < expected:
        raise _Reject(TRUNCATED, f"Pixel Data holds {length} bytes; {geometry} needs {expected}")


def _check_policy(ds: Dataset, syntax: UID) -> None:
    modality = _text(ds, "Modality").upper()
    if not modality:
        raise _Reject(UNSUPPORTED_MODALITY, "no Modality (0008,0060); accepted: CR, DX, DR")
    if modality not in ACCEPTED_MODALITIES:
        raise _Reject(
            UNSUPPORTED_MODALITY,
            f"Modality is {_safe(modality, _CS_TEXT)}; accepted: CR, DX, DR",
        )
    body_part = _text(ds, "BodyPartExamined").upper()
    if body_part and not any(word in body_part for word in CHEST_WORDS):
        words = set(re.split(r"[^A-Z]+", body_part))
        hits = sorted(words & _NOT_CHEST_WORDS)
        if hits:
            raise _Reject(NOT_CHEST, f"BodyPartExamined is {hits[0]}, not chest")
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if frames > 1:
        raise _Reject(MULTI_FRAME, f"{frames} frames; one frame per image is expected")
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if photometric and not (photometric in DECODABLE_PHOTOMETRIC or photometric.startswith("YBR")):
        # the decoder (pipelines.imaging) turns only these into a grey radiograph: rejecting here
        # keeps pair from choosing an undecodable image over a decodable one of the same study
        raise _Reject(
            UNSUPPORTED_PHOTOMETRIC,
            f"PhotometricInterpretation is {_safe(photometric, _CS_TEXT)}; decodable: "
            "MONOCHROME1, MONOCHROME2, RGB, YBR_*",
        )
    if not syntax.is_transfer_syntax:
        raise _Reject(
            UNSUPPORTED_TRANSFER_SYNTAX,
            f"unknown transfer syntax UID {_safe(str(syntax), _UID_TEXT)}",
        )
    plugins = _decoder_plugins(str(syntax))
    if not plugins:
        raise _Reject(
            UNSUPPORTED_TRANSFER_SYNTAX,
            f"no installed pydicom decoder handles {syntax.name} ({syntax})",
        )
    bits_stored = _int(ds, "BitsStored", 8) or 8
    if syntax == JPEGExtended12Bit and bits_stored > 8 and "pylibjpeg" not in plugins:
        # pydicom's Pillow plugin refuses 12-bit JPEG Extended; pylibjpeg-libjpeg decodes it
        raise _Reject(
            UNSUPPORTED_TRANSFER_SYNTAX,
            f"12-bit {syntax.name} ({syntax}) needs pylibjpeg-libjpeg; "
            f"installed decoders: {', '.join(plugins)}",
        )


def _identity(ds: Dataset) -> tuple[str, str, str]:
    patient = _text(ds, "PatientID")
    if not patient:
        raise _Reject(NO_PATIENT_ID, "PatientID (0010,0020) is missing or empty")
    study = _text(ds, "StudyInstanceUID")
    if not study:
        raise _Reject(NO_STUDY_UID, "StudyInstanceUID (0020,000D) is missing or empty")
    sop = _text(ds, "SOPInstanceUID")
    if not sop and hasattr(ds, "file_meta"):
        sop = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
    if not sop:
        raise _Reject(NO_SOP_UID, "SOPInstanceUID (0008,0018) is missing or empty")
    return patient, study, sop


def _read_header(fh: BinaryIO, tags: Sequence[str] | None) -> Dataset:
    try:
        return pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=tags)
    except InvalidDicomError:
        raise _Reject(NOT_DICOM, "no DICOM file header ('DICM' at byte 128)") from None
    except (EOFError, struct.error) as exc:
        raise _Reject(TRUNCATED, f"the header ends mid-element ({type(exc).__name__})") from None
    except Exception as exc:
        raise _Reject(
            NOT_DICOM, f"has a 'DICM' prefix but its header cannot be parsed ({type(exc).__name__})"
        ) from None


def _inspect_open(fh: BinaryIO, path: str, rel: str, size: int, salt: bytes) -> dict[str, Any]:
    ds = _read_header(fh, HEADER_TAGS)  # other elements are skipped by seeking, not parsed
    position = fh.tell()
    implicit, little = getattr(ds, "original_encoding", (False, True))
    peek = _read_element_header(fh, bool(implicit), bool(little))
    fh.seek(position)
    syntax = _transfer_syntax(ds)
    if syntax != DeflatedExplicitVRLittleEndian:
        if peek is None:
            fh.seek(0)  # rare path: parse every element to tell a cut header from no pixels
            _check_header_complete(_read_header(fh, None), size)
            raise _Reject(NO_PIXEL_DATA, "no Pixel Data element (7FE0,0010)")
        if peek[0] in _FLOAT_PIXEL_TAGS:
            raise _Reject(NO_PIXEL_DATA, "float pixel data only, no integer Pixel Data (7FE0,0010)")

    _check_policy(ds, syntax)
    _check_pixel_data(ds, fh, path, size, syntax)
    patient, study, sop = _identity(ds)
    found = _find_view(ds)
    if not found.view:
        raise _Reject(NO_VIEW, found.note)

    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    return {
        "image_id": make_key("image", f"dicom:{sop}", salt),
        "patient_key": make_key("patient", f"dicom:{patient}", salt),
        "study_key": make_key("study", f"dicom:{study}", salt),
        "path": rel,
        "view": found.view,
        "view_raw": found.raw,
        "width": cols,
        "height": rows,
        "bits": _int(ds, "BitsStored") or _int(ds, "BitsAllocated") or 0,
        "photometric": _text(ds, "PhotometricInterpretation").upper(),
    }


def _inspect_file(root: str | Path, rel: str, salt: bytes) -> _Outcome:
    """Check one file and build its manifest row (no finding columns), or say why not.

    Never raises for a bad file: every failure becomes a reason code and a PHI-free detail.
    """
    path = os.path.join(root, rel)
    try:
        size = os.path.getsize(path)
        if size == 0:
            return _Outcome(rel, reason=EMPTY_FILE, detail="the file is empty (0 bytes)")
        with _quiet_pydicom(), open(path, "rb") as fh:
            return _Outcome(rel, row=_inspect_open(fh, path, rel, size, salt))
    except _Reject as rej:
        return _Outcome(rel, reason=rej.reason, detail=rej.detail)
    except OSError as exc:
        return _Outcome(rel, reason=UNREADABLE, detail=f"cannot be read ({type(exc).__name__})")
    except Exception as exc:  # a header value pydicom cannot convert, etc.
        return _Outcome(
            rel,
            reason=CORRUPT,
            detail=f"a header value cannot be decoded ({type(exc).__name__})",
        )


def _inspect_chunk(root: str, rels: Sequence[str], salt: bytes) -> list[_Outcome]:
    return [_inspect_file(root, rel, salt) for rel in rels]


# ---------------------------------------------------------------------------------------------
# Folder walk, parallel map, labels, assembly
# ---------------------------------------------------------------------------------------------


def list_files(
    root: Path,
    exclude: Sequence[Path] = (),
    unreadable: list[str] | None = None,
    not_files: list[tuple[str, str, str]] | None = None,
) -> list[str]:
    """Every regular file under ``root``, as sorted POSIX paths relative to it.

    Symlinked folders are followed, but each real folder is walked once (no loops). Entries that
    are neither folders nor regular files (a dangling or looping symlink, a FIFO, a socket, a
    device) are never opened: a FIFO would block the reader.

    Args:
        root: the folder.
        exclude: files that are not inputs (the labels CSV when it sits inside ``root``).
        unreadable: if given, receives the relative paths (ending in ``/``) of folders that
            could not be listed.
        not_files: if given, receives ``(relative path, reason, detail)`` for every entry that is
            neither a folder nor a regular file (reasons ``broken_link``, ``not_a_regular_file``),
            so that the caller can list them as rejected inputs instead of losing them.
    """
    skip = {os.path.realpath(p) for p in exclude}
    seen: set[tuple[int, int]] = set()
    out: list[str] = []

    def on_error(exc: OSError) -> None:
        if unreadable is not None and exc.filename is not None:
            unreadable.append(Path(os.path.relpath(exc.filename, root)).as_posix() + "/")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full):
                if os.path.realpath(full) not in skip:
                    out.append(Path(os.path.relpath(full, root)).as_posix())
            elif not_files is not None:
                not_files.append(_not_a_file(full, root))
    if unreadable is not None:
        unreadable.sort()
    if not_files is not None:
        not_files.sort()
    return sorted(out)


def _not_a_file(full: str, root: Path) -> tuple[str, str, str]:
    """Why a folder entry that is not a regular file is not read (no target path is quoted)."""
    rel = Path(os.path.relpath(full, root)).as_posix()
    if os.path.islink(full):
        try:
            os.stat(full)
        except OSError as exc:
            why = "loops" if exc.errno == errno.ELOOP else "points to nothing"
            return rel, BROKEN_LINK, f"a symbolic link that {why} ({exc.strerror})"
    return rel, NOT_A_REGULAR_FILE, "not a regular file (a FIFO, socket or device): not opened"


def _resolve_workers(workers: int) -> int:
    if workers < 0:
        raise SourceError(f"workers must be 0 (all cores) or positive, got {workers}")
    if workers == 0:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    return workers


def _inspect_all(root: Path, rels: list[str], salt: bytes, workers: int) -> list[_Outcome]:
    if workers == 1 or len(rels) < 2:
        return _inspect_chunk(str(root), rels, salt)
    size = max(1, min(128, math.ceil(len(rels) / (workers * 4))))
    chunks = [rels[i : i + size] for i in range(0, len(rels), size)]
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
            futures = [pool.submit(_inspect_chunk, str(root), chunk, salt) for chunk in chunks]
            return [outcome for future in futures for outcome in future.result()]
    except BrokenProcessPool as exc:
        raise SourceError(
            f"{root}: a worker process died while reading DICOM headers (out of memory?); "
            "retry with fewer workers"
        ) from exc


def read_study_labels(path: Path, uncertain: UncertainPolicy) -> pd.DataFrame:
    """Read a DICOM labels CSV: ``study_uid`` plus finding columns coded 1 / 0 / -1 / blank.

    Columns that are not findings are ignored (logged); findings it lacks are NaN.

    Args:
        path: the CSV.
        uncertain: policy for -1 (:func:`pipelines.labels.apply_uncertain_policy`).

    Returns:
        float32 frame indexed by ``study_uid`` with the finding columns it has.

    Raises:
        SourceError: unreadable file, no ``study_uid`` or no finding column, a blank study_uid,
            a value outside 1 / 0 / -1 / blank (names the line, column and value), or one study
            with two different label rows.
    """
    if not path.is_file():
        raise SourceError(f"{path}: labels file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except UnicodeDecodeError:
        from pipelines.sources.common import utf8_error_message

        raise SourceError(utf8_error_message(path, "labels CSV")) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SourceError(f"{path}: not a readable CSV ({type(exc).__name__})") from None
    table.columns = [str(c).strip() for c in table.columns]
    if "study_uid" not in table.columns:
        raise SourceError(f"{path}: missing required column 'study_uid'")
    findings = [f for f in FINDINGS if f in table.columns]
    if not findings:
        raise SourceError(f"{path}: no finding column (expected some of {', '.join(FINDINGS)})")
    extra = [c for c in table.columns if c != "study_uid" and c not in FINDINGS]
    if extra:
        logger.warning("%s: ignoring non-finding columns %s", path, extra)

    uids = table["study_uid"].str.strip()
    blank_uid = np.flatnonzero(uids == "")
    if blank_uid.size:
        raise SourceError(f"{path}: line {blank_uid[0] + 2}: study_uid is blank")
    cells = table[findings].apply(lambda col: col.str.strip())
    codes = cells.apply(pd.to_numeric, errors="coerce")
    bad = (cells != "") & ~codes.isin([1, 0, -1])
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        value = str(cells.iat[row, col])[:20]
        raise SourceError(
            f"{path}: line {row + 2}, column '{findings[col]}': value '{value}' is not "
            f"1, 0, -1 or blank ({int(bad.to_numpy().sum())} such cell(s))"
        )
    values = apply_uncertain_policy(codes.to_numpy(dtype=np.float32), uncertain)
    labels = pd.DataFrame(values, columns=findings, index=pd.Index(uids, name="study_uid"))
    labels = labels.astype("float32")
    dup = labels.index.duplicated(keep=False)
    if dup.any():
        groups = labels[dup].groupby(level=0, sort=False)
        for _, group in groups:
            if len(group.drop_duplicates()) != 1:
                lines = [int(i) + 2 for i in np.flatnonzero(labels.index == group.index[0])]
                raise SourceError(
                    f"{path}: lines {', '.join(map(str, lines))} give different labels for "
                    "the same study_uid"
                )
        labels = labels[~labels.index.duplicated(keep="first")]
    return labels


def read(input: Path, options: ReadOptions) -> SourceResult:
    """Read a folder of DICOM files into manifest rows (headers only, in parallel).

    Args:
        input: the folder; every regular file below it is an input.
        options: ``labels`` (CSV keyed by ``study_uid``; not an input even inside the folder),
            ``uncertain``, ``workers`` (0 = all cores, 1 = in this process), ``salt`` (empty:
            :func:`pipelines.keys.get_salt`). ``images`` and ``verify_files`` do not apply:
            headers are always read.

    Returns:
        Manifest sorted by path (conformed to ``MANIFEST_COLUMNS``), rejections sorted by path,
        ``n_inputs`` and ``data_root = str(input)``.

    Raises:
        SourceError: the folder does not exist or is not a folder, a bad labels CSV
            (:func:`read_study_labels`), or a worker process died.
    """
    input = Path(input)
    if not input.exists():
        raise SourceError(f"{input}: DICOM folder not found")
    if not input.is_dir():
        raise SourceError(f"{input}: expected a folder of DICOM files, got a file")
    labels = (
        read_study_labels(Path(options.labels), options.uncertain)
        if options.labels is not None
        else None
    )
    if options.labels is None and (input / "labels.csv").is_file():
        logger.warning(
            "%s: labels.csv found but no labels file was given: it is read as an input (and "
            "rejected); set the labels option to use it",
            input,
        )
    workers = _resolve_workers(options.workers)
    salt = options.salt or get_salt()
    unlisted: list[str] = []
    not_files: list[tuple[str, str, str]] = []
    exclude = [Path(options.labels)] if options.labels else []
    rels = list_files(input, exclude, unlisted, not_files)
    outcomes = _inspect_all(input, rels, salt, workers)

    rows: list[dict[str, Any]] = []
    rejected = [
        Rejection(SOURCE, rel, UNREADABLE, "the folder cannot be listed (permission denied?)")
        for rel in unlisted
    ]
    rejected += [Rejection(SOURCE, *entry) for entry in not_files]
    first_by_id: dict[str, str] = {}
    for outcome in outcomes:  # sorted by path: the first of a duplicate pair is kept
        if outcome.row is None:
            rejected.append(Rejection(SOURCE, outcome.path, outcome.reason, outcome.detail))
            continue
        image_id = outcome.row["image_id"]
        if image_id in first_by_id:
            rejected.append(
                Rejection(
                    SOURCE,
                    outcome.path,
                    DUPLICATE_IMAGE_ID,
                    f"same SOPInstanceUID as {first_by_id[image_id]} (kept)",
                )
            )
            continue
        first_by_id[image_id] = outcome.path
        rows.append(outcome.row)

    manifest = _assemble(rows, labels, salt)
    manifest.attrs["data_root"] = str(input)
    counts = Counter(r.reason for r in rejected)
    logger.info(
        "dicom: %d file(s), %d accepted, %d rejected %s",
        len(rels) + len(unlisted) + len(not_files),
        len(manifest),
        len(rejected),
        dict(sorted(counts.items())),
    )
    return SourceResult(
        manifest=manifest,
        rejected=sorted(rejected, key=lambda r: r.path),
        n_inputs=len(rels) + len(unlisted) + len(not_files),
        data_root=str(input),
    )


def _assemble(rows: list[dict[str, Any]], labels: pd.DataFrame | None, salt: bytes) -> pd.DataFrame:
    columns = ["image_id", "patient_key", "study_key", "path", "view", "view_raw"]
    frame = pd.DataFrame(rows, columns=[*columns, "width", "height", "bits", "photometric"]).assign(
        source=SOURCE
    )
    if labels is not None and len(labels):
        keyed = labels.set_axis(
            [make_key("study", f"dicom:{uid}", salt) for uid in labels.index], axis=0
        )
        matched = frame["study_key"].isin(keyed.index)
        n_studies = frame["study_key"].nunique()
        logger.info(
            "dicom labels: %d of %d studies have a labels row; %d labels row(s) match no study",
            frame.loc[matched, "study_key"].nunique(),
            n_studies,
            int((~keyed.index.isin(frame["study_key"])).sum()),
        )
        frame = frame.join(keyed, on="study_key")
    return conform_manifest(frame)
