"""What the DICOM decoder checks before it reads a pixel: the hostile-input guards.

:func:`pipelines.dicom.pixels.decode_dicom` runs these first, whichever path then decodes (the
full one through pydicom, or the reduced one of :mod:`pipelines.reduced`):

- :func:`check_size`: the file's size, one frame, rows x columns within the limits of
  :mod:`pipelines.limits`, read from the header alone (a bounded read), so that ``too_large``
  and ``multi_frame`` come before any allocation the pixels would cause;
- :func:`check_jp2_boxes`: a JPEG 2000 frame in JP2 boxes with a box of length 0 (pydicom's
  parameter reader loops forever on it; a fuzzing finding);
- :func:`header_int` / :func:`header_error`: header values and parse errors reported by keyword
  and exception type, never by value (PHI).

Failures raise :class:`~pipelines.errors.DecodeError` with a reason of
:data:`pipelines.imaging.REASONS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.errors import DecodeError


def header_int(ds: Any, keyword: str, default: int, path: Path) -> int:
    """A header value as an integer (``default`` when absent, empty or 0).

    Raises:
        DecodeError: ``decode_failed`` for a value that is not an integer (names the keyword).
    """
    from pipelines.dicom.header import integer
    from pipelines.dicom.reasons import Reject

    try:
        return integer(ds, keyword, default) or default
    except Reject:
        raise DecodeError(path, "decode_failed", f"{keyword} is not an integer") from None


_SIZE_TAGS = ("NumberOfFrames", "Rows", "Columns")


def header_error(path: Path, exc: Exception) -> DecodeError:
    """A header pydicom cannot parse (its messages quote values: report the type)."""
    reason = "truncated" if isinstance(exc, EOFError) else "decode_failed"
    return DecodeError(path, reason, f"DICOM header unreadable ({type(exc).__name__})")


def check_size(path: Path, max_pixels: int) -> None:
    """Refuse from the header alone what would take more memory than the limits allow.

    Raises:
        DecodeError: ``too_large``, ``multi_frame``, ``truncated`` or ``decode_failed`` (a
            header that cannot be parsed).

    The decoder reads the file whole (:mod:`pipelines.dicom.pixels`): it must be within
    :func:`pipelines.limits.dataset_bytes_limit` (a deflated one once inflated); one frame
    only (a 10,000-frame object is refused before its pixels are read); rows x columns within
    ``max_pixels`` (the decoders allocate the whole image first).
    """
    from pipelines.dicom.header import read_header
    from pipelines.dicom.reasons import Reject
    from pipelines.limits import dataset_bytes_limit, too_many_pixels

    limit = dataset_bytes_limit(max_pixels)
    size = path.stat().st_size
    if size > limit:
        raise DecodeError(
            path,
            "too_large",
            f"the file holds {size:,} bytes, more than one image within the limit of "
            f"{max_pixels:,} pixels can ({limit:,}); refused before reading it",
        )
    try:
        head = read_header(path, _SIZE_TAGS, force=True, max_bytes=limit)
    except Reject as rej:
        raise DecodeError(path, "too_large", rej.detail) from None
    except Exception as exc:
        raise header_error(path, exc) from None
    check_frames(head, path)
    rows, columns = header_int(head, "Rows", 0, path), header_int(head, "Columns", 0, path)
    too_large = too_many_pixels(rows, columns, max_pixels)
    if too_large:
        raise DecodeError(path, "too_large", too_large)


def check_frames(ds: Any, path: Path) -> None:
    """One frame (a policy rule, :mod:`pipelines.dicom.policy`), from the header alone.

    Raises:
        DecodeError: ``multi_frame``, or ``decode_failed`` for a NumberOfFrames that is not an
            integer.
    """
    from pipelines.dicom.policy import is_single_frame

    frames = header_int(ds, "NumberOfFrames", 1, path)
    if not is_single_frame(frames):
        raise DecodeError(path, "multi_frame", f"{frames} frames; expected one radiograph")


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "


def check_jp2_boxes(ds: Any, path: Path, tsyntax: Any) -> None:
    """A JPEG 2000 frame wrapped in JP2 boxes must not hold a box of length 0 before its
    codestream: pydicom's parameter reader walks the boxes by their lengths, and one of length 0
    stops it advancing (it loops forever; a fuzzing finding)."""
    from pydicom.encaps import generate_frames
    from pydicom.uid import JPEG2000TransferSyntaxes

    if str(tsyntax) not in JPEG2000TransferSyntaxes or "PixelData" not in ds:
        return
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception:  # not encapsulated, or no frame: pydicom reports it when it decodes
        return
    if not frame.startswith(_JP2_SIGNATURE):
        return
    offset = 12
    while offset + 8 <= len(frame):
        length = int.from_bytes(frame[offset : offset + 4], "big")
        if frame[offset + 4 : offset + 8] == b"jp2c":
            return
        if length == 0:
            raise DecodeError(
                path, "decode_failed", f"a JP2 box of length 0 at byte {offset} of the frame"
            )
        offset += length
