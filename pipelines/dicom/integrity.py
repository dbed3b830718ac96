"""Is a DICOM file whole? Byte-level checks of its header and Pixel Data, without decoding.

The ingest reader (:mod:`pipelines.sources.dicom`) opens each file once and parses its header
with :func:`parse_header` (``pydicom.dcmread(fh, stop_before_pixels=True)`` on its own handle),
which leaves the handle at the first byte of the top-level Pixel Data element (7FE0,0010). The
checks here then read that element's 8-12 byte header and check it without reading the pixel
values:

* uncompressed syntaxes: the declared length must reach Rows x Columns x SamplesPerPixel x
  BitsAllocated / 8, and the file must hold that many bytes (a file cut short keeps the header's
  length field, so the two are compared separately);
* encapsulated syntaxes: we seek from item header to item header up to the sequence delimiter,
  so every fragment must lie inside the file, at least one non-empty fragment must follow the
  Basic Offset Table, a JPEG / JPEG-LS / JPEG 2000 stream must end with its end-of-image marker
  (FFD9) and an RLE header's segment offsets must fall inside its fragment;
* a baseline / extended JPEG scan header must select the full spectrum 0..63: pydicom's
  ``JPEG-lossy.dcm`` (12-bit JPEG Extended) says 0..0 there and fails with every decoder,
  whereas ``JPGExtended.dcm``, the same 12-bit stream with 0..63, decodes with pylibjpeg. So the
  broken header is rejected (``corrupt``), not every 12-bit JPEG Extended file.

A file with no Pixel Data is told apart from one cut short in its header by checking that its
last element ends exactly at the end of the file.

Why not ``defer_size``: a deferred read still walks the whole file, and for undefined-length
(encapsulated) Pixel Data pydicom reads the entire value into memory to find its delimiter (all
the compressed bytes of every file), without saying where the element starts or whether its
declared length fits the file. ``stop_before_pixels`` on our own handle costs the header bytes
plus a few item headers. Deflated files (rare) are the exception: their offsets refer to the
inflated stream, so they are inflated whole and the Pixel Data length is checked in memory.

Every check raises :class:`~pipelines.dicom.reasons.Reject` (``not_dicom``, ``truncated``,
``corrupt``, ``no_pixel_data``) with a detail naming tags, sizes and syntaxes only.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from pipelines.dicom.header import integer, open_dicom, read_header, text
from pipelines.dicom.reasons import CORRUPT, NO_PIXEL_DATA, NOT_DICOM, TRUNCATED, Reject

_END_MARKER_SYNTAXES: frozenset[str] = frozenset(
    [*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes]
)
_SEQUENTIAL_DCT_SYNTAXES: frozenset[str] = frozenset([JPEGBaseline8Bit, JPEGExtended12Bit])
_ITEM, _SEQ_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
_PIXEL_DATA, _FLOAT_PIXEL_TAGS = 0x7FE00010, (0x7FE00008, 0x7FE00009)
_LONG_LENGTH_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT"}


def parse_header(fh: BinaryIO, tags: Sequence[str] | None, max_bytes: int | None = None) -> Dataset:
    """:func:`pipelines.dicom.header.read_header` on an open file, failures as rejections.

    Args:
        fh: the file, best opened with :func:`pipelines.dicom.header.open_dicom`.
        tags: the elements to parse (None: all).
        max_bytes: the most a deflated data set may inflate to (None: the default limit).

    Raises:
        Reject: ``not_dicom`` (no 'DICM' prefix, or a header that cannot be parsed),
            ``truncated`` (the header ends mid-element; the detail names the exception type) or
            ``too_large`` (a deflated data set inflating past ``max_bytes``).
    """
    try:
        return read_header(fh, tags, max_bytes=max_bytes)
    except Reject:
        raise
    except InvalidDicomError:
        raise Reject(NOT_DICOM, "no DICOM file header ('DICM' at byte 128)") from None
    except (EOFError, struct.error) as exc:
        raise Reject(TRUNCATED, f"the header ends mid-element ({type(exc).__name__})") from None
    except Exception as exc:
        raise Reject(
            NOT_DICOM, f"has a 'DICM' prefix but its header cannot be parsed ({type(exc).__name__})"
        ) from None


def _encoding(ds: Dataset) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the data set as read."""
    implicit, little = getattr(ds, "original_encoding", (False, True))
    return bool(implicit), bool(little)


def check_pixel_element(ds: Dataset, fh: BinaryIO, size: int, syntax: UID) -> None:
    """There is an integer Pixel Data element where the header ends (the handle is kept).

    Args:
        ds: the header, parsed from ``fh`` by :func:`parse_header`.
        fh: the handle, at the end of the parsed header.
        size: the file's size in bytes.
        syntax: the transfer syntax (deflated files are checked by :func:`check_pixel_data`).

    Raises:
        Reject: ``no_pixel_data`` (none, or float pixels only), or ``truncated`` when the
            header itself was cut short.
    """
    position = fh.tell()
    peek = _read_element_header(fh, *_encoding(ds))
    fh.seek(position)
    if syntax == DeflatedExplicitVRLittleEndian:
        return
    if peek is None:
        fh.seek(0)  # rare path: parse every element to tell a cut header from no pixels
        _check_header_complete(parse_header(fh, None), size)
        raise Reject(NO_PIXEL_DATA, "no Pixel Data element (7FE0,0010)")
    if peek[0] in _FLOAT_PIXEL_TAGS:
        raise Reject(NO_PIXEL_DATA, "float pixel data only, no integer Pixel Data (7FE0,0010)")


def _check_header_complete(ds: Dataset, size: int) -> None:
    """No Pixel Data was found: make sure the header was not cut short instead."""
    tags = list(ds.keys())
    if not tags:
        raise Reject(TRUNCATED, "the file ends right after its file meta header")
    elem = ds.get_item(tags[-1])
    tell = getattr(elem, "value_tell", None)
    length = getattr(elem, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF:
        return  # an undefined-length sequence ends the file: cannot tell cheaply, trust it
    if tell + length > size:
        raise Reject(TRUNCATED, f"the file ends inside element {tags[-1]} of its header")
    if tell + length < size:
        raise Reject(
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
            raise Reject(TRUNCATED, "the file ends inside the Pixel Data element header")
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
    ``Se = 0`` there: every decoder fails on it, while a valid 12-bit JPEG Extended stream
    (pydicom's ``JPGExtended.dcm``) decodes with pylibjpeg-libjpeg.
    """
    fh.seek(offset)
    data = fh.read(min(length, 8192))
    if data[:2] != b"\xff\xd8":
        raise Reject(CORRUPT, "the JPEG stream does not start with an SOI marker (FFD8)")
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
                raise Reject(
                    CORRUPT,
                    f"the JPEG scan header is invalid for sequential DCT (spectral selection "
                    f"{tail[0]}..{tail[1]}, approximation {tail[2]:#04x}; must be 0..63, 0): "
                    "no decoder reads it",
                )
            return
        pos += 2 + seg_len


def _fragments(fh: BinaryIO, start: int, size: int, little: bool) -> list[tuple[int, int]]:
    """(offset, length) of every non-empty fragment, walking item headers (no pixel bytes read).

    The first item, the Basic Offset Table, is not a fragment.
    """
    endian = "<" if little else ">"
    items: list[tuple[int, int]] = []  # (offset of value, length)
    pos = start
    while True:
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            raise Reject(
                TRUNCATED,
                f"the file ends inside the encapsulated Pixel Data after {len(items)} item(s) "
                "(no sequence delimiter)",
            )
        group, element, length = struct.unpack(endian + "HHL", head)
        tag = group << 16 | element
        if tag == _SEQ_DELIMITER:
            break
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise Reject(CORRUPT, f"encapsulated Pixel Data has a malformed item at byte {pos}")
        if pos + 8 + length > size:
            raise Reject(
                TRUNCATED,
                f"Pixel Data fragment {len(items)} runs {pos + 8 + length - size} bytes past "
                "the end of the file",
            )
        items.append((pos + 8, length))
        pos += 8 + length
    fragments = [item for item in items[1:] if item[1] > 0]
    if not fragments:
        raise Reject(NO_PIXEL_DATA, "the encapsulated Pixel Data holds no compressed fragment")
    return fragments


def _check_rle_header(fh: BinaryIO, offset: int, length: int, samples: int, bits: int) -> None:
    """An RLE fragment's header lists one segment per byte plane, each inside the fragment."""
    fh.seek(offset)
    header = fh.read(64)
    if len(header) < 64:
        raise Reject(TRUNCATED, "the RLE fragment is shorter than its 64-byte header")
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
        raise Reject(
            TRUNCATED,
            f"the RLE header lists {n_segments} segment(s) (expected {want}) whose offsets "
            f"do not fit its {length}-byte fragment",
        )


def _check_fragments(
    fh: BinaryIO, start: int, size: int, little: bool, syntax: UID, samples: int, bits: int
) -> None:
    """The encapsulated Pixel Data's fragments fit the file and their streams look whole."""
    fragments = _fragments(fh, start, size, little)
    if syntax in _SEQUENTIAL_DCT_SYNTAXES:
        _check_jpeg_scan_header(fh, *fragments[0])
    if syntax in _END_MARKER_SYNTAXES:
        offset, length = fragments[-1]
        tail = min(length, 16)
        fh.seek(offset + length - tail)
        if b"\xff\xd9" not in fh.read(tail):
            raise Reject(
                TRUNCATED,
                f"the {syntax.name} stream has no end-of-image marker (FFD9): it was cut short",
            )
    elif syntax == RLELossless:
        _check_rle_header(fh, *fragments[0], samples, bits)


@dataclass(frozen=True)
class _Geometry:
    samples: int
    bits_allocated: int
    expected: int  # bytes of one uncompressed frame
    text: str  # for details


def _geometry(ds: Dataset) -> _Geometry:
    """The image pixel module's geometry, checked; the bytes one frame needs."""
    rows, cols = integer(ds, "Rows"), integer(ds, "Columns")
    bits_allocated = integer(ds, "BitsAllocated")
    samples = integer(ds, "SamplesPerPixel", 1) or 1
    if not rows or not cols or not bits_allocated:
        missing = [
            k
            for k, v in (("Rows", rows), ("Columns", cols), ("BitsAllocated", bits_allocated))
            if not v
        ]
        raise Reject(CORRUPT, f"the image pixel module lacks {', '.join(missing)}")
    bits_stored = integer(ds, "BitsStored", bits_allocated) or bits_allocated
    if not 1 <= bits_stored <= bits_allocated:
        raise Reject(
            CORRUPT, f"BitsStored ({bits_stored}) must be 1 to BitsAllocated ({bits_allocated})"
        )
    ybr422 = text(ds, "PhotometricInterpretation").upper() == "YBR_FULL_422"
    expected = _expected_bytes(rows, cols, samples, bits_allocated, ybr422)
    return _Geometry(
        samples, bits_allocated, expected, _geometry_text(rows, cols, samples, bits_allocated)
    )


def _check_deflated(path: str, geometry: _Geometry) -> None:
    """A deflated file's offsets refer to the inflated stream: inflate it whole and count."""
    try:
        with open_dicom(path) as fh:
            full = pydicom.dcmread(fh)
        n_bytes = len(full.PixelData) if "PixelData" in full else 0
    except (zlib.error, EOFError, OSError, ValueError, struct.error) as exc:
        raise Reject(
            TRUNCATED, f"the deflated data set cannot be inflated ({type(exc).__name__})"
        ) from None
    if n_bytes < geometry.expected:
        raise Reject(
            TRUNCATED,
            f"Pixel Data holds {n_bytes} bytes; {geometry.text} needs {geometry.expected}",
        )


def check_pixel_data(ds: Dataset, fh: BinaryIO, path: str, size: int, syntax: UID) -> None:
    """The Pixel Data holds the bytes the image needs, and its stream is whole.

    Args:
        ds: the header (parsed by :func:`parse_header`).
        fh: the handle, at the Pixel Data element.
        path: the file (a deflated file is read again, whole).
        size: the file's size in bytes.
        syntax: the transfer syntax.

    Raises:
        Reject: ``corrupt``, ``truncated`` or ``no_pixel_data`` (see the module docstring).
    """
    geometry = _geometry(ds)
    if syntax == DeflatedExplicitVRLittleEndian:
        _check_deflated(path, geometry)
        return
    implicit, little = _encoding(ds)
    header = _read_element_header(fh, implicit, little)
    if header is None or header[0] != _PIXEL_DATA:
        raise Reject(NO_PIXEL_DATA, "no Pixel Data element (7FE0,0010)")
    _, length = header
    value_start = fh.tell()
    if syntax.is_compressed:
        if length != 0xFFFFFFFF:
            raise Reject(CORRUPT, f"{syntax.name} needs encapsulated (undefined-length) Pixel Data")
        _check_fragments(
            fh, value_start, size, little, syntax, geometry.samples, geometry.bits_allocated
        )
        return
    if length == 0xFFFFFFFF:
        raise Reject(CORRUPT, f"encapsulated Pixel Data in uncompressed {syntax.name}")
    if value_start + length > size:
        raise Reject(
            TRUNCATED,
            f"the file ends {value_start + length - size} bytes before the end of its "
            f"{length}-byte Pixel Data",
        )
    if length < geometry.expected:
        raise Reject(
            TRUNCATED,
            f"Pixel Data holds {length} bytes; {geometry.text} needs {geometry.expected}",
        )
