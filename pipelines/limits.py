"""Size limits on untrusted inputs, checked from headers before anything large is allocated.

Real archives hold files nobody meant to make: a header claiming 60000 x 60000 pixels, a PNG
that inflates a thousandfold, a CSV whose "line" is 2 GB, a multi-frame object of 10,000 frames,
a "study" folder of 100,000 files. Each is refused with a reason before the allocation it would
cause, or read within a stated bound. The defaults live here (``cxr predict`` uses them); the
stages take theirs from params:

- ``ingest.max_image_pixels`` / ``preprocess.max_image_pixels`` (:data:`MAX_IMAGE_PIXELS`): rows
  x columns of one image. Ingest rejects a DICOM over it from its header, and a PNG / JPEG from
  its header when it verifies files (reason ``too_large``); the decoder refuses one before
  decoding (``too_large``), and ingest refuses a deflated DICOM whose data set would inflate past
  :func:`dataset_bytes_limit`. Raise the two together: an image ingest accepts but preprocess
  refuses is a ``too_large`` rejection there. One decode's peak memory grows with the pixels
  (measured on 3000 x 3000 images: 8 bytes per pixel for an 8-bit grey PNG, 14 for a 16-bit
  DICOM, 26 for an RGB PNG: at most 1.3 GB at the default), plus, for DICOM, the file itself
  (at most :func:`dataset_bytes_limit`).
- ``ingest.max_csv_line_bytes`` (:data:`MAX_CSV_LINE_BYTES`): one line of a metadata CSV, and one
  quoted value spanning lines, checked while reading a line at a time (memory: one line) before
  any parser buffers it. A value within a line is further bounded by the ``csv`` module's field
  limit (131,072 characters).
- :data:`MAX_STUDY_FILES`: the files ``cxr predict`` looks at in one study folder; the walk stops
  at the first file over it (memory: that many paths).

Frames need no limit of their own: one radiograph is one frame, and a multi-frame object is
rejected (``multi_frame``) from its header, before its pixels are read.

Every image file is opened with :func:`open_bounded` for the parsers (pydicom, Pillow): a
length field never makes them allocate more than the file holds.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

#: Rows x columns of one image: above any chest detector (43 x 43 cm at 0.1 mm is 4300 x 4300,
#: 18.5 million) with room for 50 micron CR plates; under Pillow's own guard (89 million).
MAX_IMAGE_PIXELS = 50_000_000
#: One line of a metadata CSV (bytes, line end included); real lines are under 10 KB.
MAX_CSV_LINE_BYTES = 1_048_576
#: Files ``cxr predict`` reads in one study folder (a study holds a handful of images).
MAX_STUDY_FILES = 1_000
#: Bytes of one pixel in a DICOM file at most (three samples of 16 bits).
MAX_BYTES_PER_PIXEL = 6
#: What a DICOM data set may hold besides its pixels (overlays, icons, private elements).
DICOM_HEADER_ALLOWANCE = 64 * 1024 * 1024


def dataset_bytes_limit(max_pixels: int = MAX_IMAGE_PIXELS) -> int:
    """The most bytes of one DICOM data set read into memory (file or inflated data set).

    :data:`MAX_BYTES_PER_PIXEL` per pixel of ``max_pixels`` plus :data:`DICOM_HEADER_ALLOWANCE`
    (364 MiB at the default).
    """
    return MAX_BYTES_PER_PIXEL * max_pixels + DICOM_HEADER_ALLOWANCE


def too_many_pixels(rows: int, columns: int, max_pixels: int, where: str = "") -> str:
    """Why an image of ``rows`` x ``columns`` is refused ('' when it is within ``max_pixels``).

    Args:
        rows: the image's height from its header.
        columns: its width.
        max_pixels: the limit.
        where: the param that sets the limit, named in the reason (e.g. ``ingest``).
    """
    if rows * columns <= max_pixels:
        return ""
    param = f" ({where}.max_image_pixels)" if where else ""
    return (
        f"{columns} x {rows} = {rows * columns:,} pixels, over the limit of {max_pixels:,}"
        f"{param}; refused before decoding"
    )


_SMALL_READ = 1 << 16


class BoundedFile(io.BufferedReader):
    """A file opened for reading whose ``read(n)`` never asks for more bytes than are left.

    Parsers read a value with ``read(length)`` of its length field, and CPython's ``read(n)``
    allocates ``n`` bytes before reading: a 1 KB file whose DICOM element or PNG chunk claims
    4 GB would allocate 4 GB (fuzzing findings in pydicom's reader and Pillow's PNG plugin).
    Here ``n`` is first cut to what the file still holds.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self.size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        """At most ``size`` bytes, and never more than the file has left."""
        if size is not None and size > _SMALL_READ:  # small reads cost nothing to allocate
            size = min(size, max(0, self.size - self.tell()))
        return io.BufferedReader.read(self, size)


def open_bounded(path: str | Path) -> BoundedFile:
    """Open a file for a parser (:class:`BoundedFile`)."""
    return BoundedFile(path)
