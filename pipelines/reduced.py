"""Reduced-resolution decoding: skip the detail that the resize to the model's size throws away.

Radiographs are 2000-3000 px; the model sees 224-512 px. Where the codec can, the image is
decoded at ``1 / factor`` of its size (``factor`` a power of two), then resized once by
:func:`pipelines.imaging.to_square`:

- **JPEG** (plain files, and 8-bit JPEG in DICOM: transfer syntaxes .4.50 / .4.51):
  DCT scaling in libjpeg-turbo, through Pillow's ``draft``: each 8 x 8 block is inverse
  transformed at ``8 / factor`` pixels a side, close to a ``factor`` x ``factor`` mean.
- **JPEG 2000 in DICOM** (.4.90 / .4.91): the wavelet's low band ``r`` levels down
  (``factor = 2**r``, at most the codestream's decomposition levels), through Pillow's
  ``reduce`` (openjpeg). pylibjpeg-openjpeg, pydicom's own J2K plugin, has no such option.
  A reversible (5/3, lossless) codestream is reduced one level less than the rule says: its
  low band aliases more than a mean (it passes the new Nyquist frequency at full gain), and
  at the worst ratio its error comes close to the tolerance.
- **Uncompressed DICOM**: ``factor`` x ``factor`` means of the stored values, rounded to
  integers (the codecs' reductions are means too; this saves the LUT and the resize most of
  their pixels).
- Nothing else (PNG, lossless JPEG, JPEG-LS, RLE, colour, multi-sample DICOM): decoded in full.

The reduction acts on **stored values**, as the codec's does, so the modality LUT, VOI LUT or
window, ``MONOCHROME1`` inversion and padding of :mod:`pipelines.dicom.pixels` follow unchanged,
on fewer pixels. Two things can only differ at the reduced scale: padding pixels next to the
image are averaged with it (an edge of about one output pixel), and an image scaled by its own
range (``no_window="minmax"`` without a window) would get a narrower range from the averaged
pixels, so :mod:`pipelines.dicom.pixels` never reduces one.

The rule (:func:`reduction`): the largest ``factor`` <= :data:`MAX_FACTOR` that leaves the
longer side at least :data:`MIN_OVERSAMPLE` (1.5) times the target, so that the final
antialiased resize still does the last >= 1.5x of the reduction. The JPEG draft used 2x before;
1.5x lets a 2,500 px image reach 320 px from 625 px (1/4) rather than 1,250 px, which lossy
JPEG 2000 needs to decode >= 3x faster, at a cost well inside the tolerance.

:class:`Grid` records where the reduced samples lie on the full image, so that the resize maps
the full image's extent. A JPEG 2000 low band sits on the even source pixels, not between them:
uncorrected, the image would move by up to half a source pixel per level, about the whole
tolerance at 1/4.

Tolerance (:data:`TOLERANCE_MEAN`): the final uint8 image differs from the full decode + resize
by a mean of at most 1 grey level, which tests/pipelines/test_reduced.py asserts at the worst
ratio (1.5) with windows, rescale and MONOCHROME1, and on the real radiographs of
../shared/real-cxr. Single pixels on sharp edges (burned-in markers, collimator edges) differ by
more. The measured figures are in benchmarks/README.md (2026-12-06).

Anything the reduced path cannot serve returns None, and the caller decodes in full, which
reports a broken file with its reason: the reduced path never decides that a file is bad.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

#: The longer side of the reduced image is at least this many times the target size.
MIN_OVERSAMPLE = 1.5
#: The largest reduction (JPEG's DCT scaling stops at 1/8).
MAX_FACTOR = 8
#: Mean absolute difference (grey levels of the uint8 output) that the reduced decode + resize
#: may have from the full decode + resize; what the tests assert.
TOLERANCE_MEAN = 1.0

_JPEG_8BIT = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
_JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


@dataclass(frozen=True)
class Grid:
    """Where an image's samples lie on the full-resolution image.

    Attributes:
        shape: the full image's (rows, columns).
        factor: the reduction (1: the full image itself).
        origin: the full image's top-left corner in the reduced image's pixel coordinates
            (pixel ``i`` spans ``[i, i + 1)``): 0 for a mean over ``factor`` x ``factor``
            pixels; ``(factor - 1) / (2 * factor)`` for a JPEG 2000 low band, whose samples
            sit on the source pixels ``0, factor, 2 * factor ...``.
    """

    shape: tuple[int, int]
    factor: int = 1
    origin: float = 0.0

    def box(self) -> tuple[float, float, float, float]:
        """The full image's extent in the reduced image's coordinates (Pillow's resize box)."""
        rows, cols = self.shape
        o = self.origin
        return (o, o, o + cols / self.factor, o + rows / self.factor)


def reduction(side: int, target: int | None) -> int:
    """The reduction factor for an image whose longer side is ``side``, resized to ``target``.

    Returns:
        the largest power of two <= :data:`MAX_FACTOR` with ``side / factor >=``
        :data:`MIN_OVERSAMPLE` ``* target``; 1 without a target.
    """
    if not target or target < 1:
        return 1
    factor = 1
    while factor < MAX_FACTOR and side / (2 * factor) >= MIN_OVERSAMPLE * target:
        factor *= 2
    return factor


def draft_jpeg(im: Image.Image, factor: int) -> Grid:
    """Set a JPEG's DCT scaling to ``factor`` (before ``load``); the grid it gives.

    The draft also asks libjpeg for luminance (mode ``L``) straight from the YCbCr data.

    Args:
        im: a Pillow JPEG image, opened and not loaded.
        factor: from :func:`reduction`; 1 leaves the image as it is.
    """
    cols, rows = im.size
    if factor == 1:
        return Grid((rows, cols))
    result = im.draft("L", (max(1, cols // factor), max(1, rows // factor)))
    scale = round(cols / result[1][2]) if result and result[1] else 1
    return Grid((rows, cols), scale)


def reduced_pixels(ds: Any, target: int | None) -> tuple[np.ndarray, Grid] | None:
    """The stored values of a single-frame, one-sample DICOM decoded at a reduced size.

    Args:
        ds: a pydicom dataset with its pixel data.
        target: the size the caller will resize to.

    Returns:
        the stored values (the dtype pydicom would give) and their :class:`Grid`, or None when
        no reduction applies or the reduced decode failed (decode in full then).
    """
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        factor = reduction(max(rows, cols), target)
        if factor == 1 or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            return None
        syntax = str(ds.file_meta.TransferSyntaxUID)
        if syntax in _JPEG_8BIT:
            return _jpeg_frame(ds, (rows, cols), factor)
        if syntax in _JPEG_2000:
            return _j2k_frame(ds, (rows, cols), factor)
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            return _native(ds, (rows, cols), factor)
    except Exception:  # anything odd: the full decode decides (and names the reason)
        return None
    return None


def _frame(ds: Any) -> bytes:
    from pydicom.encaps import get_frame

    return get_frame(ds.PixelData, 0, number_of_frames=1)


def _jpeg_frame(ds: Any, shape: tuple[int, int], factor: int) -> tuple[np.ndarray, Grid] | None:
    """8-bit greyscale JPEG: DCT scaling (12-bit, signed or colour: None)."""
    if int(ds.get("BitsStored", 8) or 8) != 8 or int(ds.get("PixelRepresentation", 0) or 0):
        return None
    with Image.open(io.BytesIO(_frame(ds)), formats=("JPEG",)) as im:
        if im.mode != "L" or im.size != (shape[1], shape[0]):
            return None
        grid = draft_jpeg(im, factor)
        im.load()
        return np.asarray(im), grid


def j2k_header(codestream: bytes) -> dict[str, int] | None:
    """What the reduced decode needs from a JPEG 2000 codestream's main header.

    Returns:
        ``components``, ``precision`` and ``signed`` (the first component's), ``columns`` /
        ``rows`` (the reference grid's ``Xsiz`` / ``Ysiz``), ``x0`` / ``y0`` (the image
        offset), ``levels`` (decomposition levels of the default coding style) and
        ``reversible`` (1: the 5/3 wavelet), or None when the header is not a plain
        codestream's (SOC, SIZ, then a COD).
    """
    if codestream[:4] != b"\xff\x4f\xff\x51" or len(codestream) < 45:
        return None
    columns, rows, x0, y0 = struct.unpack(">IIII", codestream[8:24])
    components = struct.unpack(">H", codestream[40:42])[0]
    ssiz = codestream[42]
    pos = 4 + struct.unpack(">H", codestream[4:6])[0]
    while pos + 4 <= len(codestream):
        marker, length = struct.unpack(">HH", codestream[pos : pos + 4])
        if marker == 0xFF52 and pos + 13 < len(codestream):  # COD: Scod, SGcod(4), SPcod
            return {
                "components": components,
                "precision": (ssiz & 0x7F) + 1,
                "signed": ssiz >> 7,
                "columns": columns,
                "rows": rows,
                "x0": x0,
                "y0": y0,
                "levels": codestream[pos + 9],
                "reversible": int(codestream[pos + 13] == 1),  # the 5/3 wavelet, not the 9/7
            }
        if marker == 0xFF90 or length < 2:  # the first tile: no COD in the main header
            return None
        pos += 2 + length
    return None


def _j2k_frame(ds: Any, shape: tuple[int, int], factor: int) -> tuple[np.ndarray, Grid] | None:
    """JPEG 2000 at resolution level ``log2(factor)`` (capped by the codestream's levels).

    Only when the codestream agrees with the header (one component, Rows x Columns, BitsStored,
    Pixel Representation, no image offset): pydicom corrects the others, and so does the full
    decode. Rows x Columns were checked against the size limits before (:mod:`pipelines.limits`),
    so the codestream's own size must be theirs: Pillow allocates what the codestream says.
    """
    frame = _frame(ds)
    head = j2k_header(frame)
    bits = int(ds.get("BitsStored", 0) or 0)
    signed = int(ds.get("PixelRepresentation", 0) or 0)
    if (
        head is None
        or head["components"] != 1
        or (head["rows"], head["columns"]) != shape
        or head["x0"] != 0
        or head["y0"] != 0
        or head["precision"] != bits
        or not 1 <= bits <= 16
        or head["signed"] != signed
    ):
        return None
    # The 5/3 low band passes the new Nyquist frequency at full gain ((6 + 2) / 8 at pi / 2)
    # where a mean has 0.71: it aliases more, so it is taken one level less deep.
    level = min(int(math.log2(factor)) - head["reversible"], head["levels"])
    if level == 0:
        return None
    with Image.open(io.BytesIO(frame), formats=("JPEG2000",)) as im:
        im.reduce = level  # type: ignore[assignment,method-assign]
        im.load()
        raw = np.asarray(im)
        container = 8 if im.mode == "L" else 16
    # Pillow level-shifts signed data and widens n bits to the 8- or 16-bit container
    values = raw.astype(np.int32) >> (container - bits)
    if signed:
        values -= 1 << (bits - 1)
    dtype = np.dtype(("i" if signed else "u") + ("1" if bits <= 8 else "2"))
    step = 2**level
    return values.astype(dtype), Grid(shape, step, (step - 1) / (2 * step))


def _native(ds: Any, shape: tuple[int, int], factor: int) -> tuple[np.ndarray, Grid] | None:
    """Uncompressed integer pixels: ``factor`` x ``factor`` means, rounded (edges: partial).

    Not 1-bit images (a mean of 0 / 1 pixels rounded back to 0 / 1 is no mean)."""
    if int(ds.get("BitsAllocated", 16) or 16) < 8:
        return None
    arr = ds.pixel_array
    if arr.ndim != 2 or arr.dtype.kind not in "ui" or arr.shape != shape:
        return None
    return box_mean(arr, factor), Grid(shape, factor)


def box_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Means of ``factor`` x ``factor`` blocks of an integer image, rounded half up, same dtype.

    ``factor`` is a power of two. The last row and column of blocks average the pixels they
    have.
    """
    if arr.dtype.itemsize > 2:
        wide: type[np.integer] = np.int64
    else:
        wide = np.int32 if arr.dtype.kind == "i" else np.uint32
    rows = arr[0::factor].astype(wide)
    for i in range(1, factor):
        part = arr[i::factor]
        rows[: part.shape[0]] += part
    total = rows[:, 0::factor].copy()
    for j in range(1, factor):
        part = rows[:, j::factor]
        total[:, : part.shape[1]] += part
    shift = 2 * (factor.bit_length() - 1)  # a full block: divide by factor**2
    mean = total + (1 << (shift - 1))
    mean >>= shift
    edge_r, edge_c = arr.shape[0] % factor, arr.shape[1] % factor
    if edge_r or edge_c:  # partial blocks: their own counts
        count_r = np.full(total.shape[0], factor)
        count_c = np.full(total.shape[1], factor)
        if edge_r:
            count_r[-1] = edge_r
        if edge_c:
            count_c[-1] = edge_c
        for sl in ((slice(-1, None), slice(None)), (slice(None), slice(-1, None))):
            count = np.outer(count_r[sl[0]], count_c[sl[1]])
            mean[sl] = np.floor_divide(2 * total[sl].astype(np.int64) + count, 2 * count)
    return mean.astype(arr.dtype)
