"""Image decoding: DICOM, PNG and JPEG to display-ready float images, then square uint8 arrays.

One implementation serves the preprocess stage and ``cxr predict``. The convention is the
display one (dense = bright, as DICOM ``MONOCHROME2``), values float32 in [0, 1]. The format is
always sniffed from the content, never the extension.

DICOM goes through :func:`pipelines.dicom.pixels.read_dicom` (modality and VOI LUT, windowing,
``MONOCHROME1`` inverted).

PNG (8/16-bit, L, LA, I;16, P, RGB, RGBA) and JPEG go through Pillow: colour becomes luminance
(ITU-R 601: 0.299 R + 0.587 G + 0.114 B); **alpha is composited onto black** (``value * alpha``),
black being both the background of a radiograph and the padding of :func:`to_square`. EXIF
orientation is applied.

A 16-bit greyscale PNG is scaled by its real bit depth, not by 65535: radiographs exported from
DICOM usually keep their 10, 12 or 14 stored bits in the 16-bit container (PadChest's PNGs hold
12-bit values), and dividing by 65535 would squeeze them into a fraction of the range. The depth
is the caller's ``bits`` (the source's BitsStored) when it holds the image's maximum, else the
smallest of :data:`GRAY16_DEPTHS` that does (:func:`gray16_depth`). ``bits`` of 16 or more says
no more than any 16-bit PNG header does, so it is detected too: a true 16-bit image reaches the
upper bits and keeps its scale; one whose maximum stays below 16384 is scaled by 14 bits or
fewer.

Failures raise :class:`~pipelines.errors.DecodeError` with a stable ``reason`` code
(:data:`REASONS`) and a ``detail`` that never carries header values of identifying tags (PHI).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.dicom.pixels import LUMA, NoWindow, decode_dicom
from pipelines.errors import DecodeError
from pipelines.limits import MAX_IMAGE_PIXELS, open_bounded, too_many_pixels
from pipelines.reduced import Grid, draft_jpeg, reduction

Format = Literal["dicom", "png", "jpeg", "unknown"]

REASONS: tuple[str, ...] = (
    "missing_file",  # the path does not exist or is not a file
    "not_an_image",  # not DICOM, PNG or JPEG (by content)
    "no_pixel_data",  # a DICOM object without an image (SR, RT plan ...)
    "truncated",  # the file ends before its pixel data does
    "multi_frame",  # more than one frame: not a plain radiograph
    "unsupported_transfer_syntax",  # no installed decoder, or 12-bit lossy JPEG that none decodes
    "unsupported_photometric",  # e.g. PALETTE COLOR
    "empty_image",  # zero rows or columns
    "too_large",  # over max_image_pixels (pipelines.limits), or Pillow's decompression-bomb guard
    "decode_failed",  # anything else the decoders raised
)

#: The depths a 16-bit greyscale PNG without a usable ``bits`` is scaled by: the smallest that
#: holds the image's maximum (what detectors store).
GRAY16_DEPTHS: tuple[int, ...] = (10, 12, 14, 16)

#: The EXIF orientation tag; values 5-8 transpose the image.
ORIENTATION = 0x0112

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


# ----------------------------------------------------------------------------------------------
# Format sniffing


def sniff_format(path: str | Path) -> Format:
    """Detect the image format from the first bytes of the file, never from its name.

    DICOM: ``DICM`` at offset 128, or (no preamble) a first tag in group 0002 or 0008.

    Raises:
        FileNotFoundError: no such file.
    """
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    # A bare dataset without the preamble: little-endian (group, element) of a meta or
    # identifying-module tag, followed by an explicit VR or a 4-byte length.
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3] == 0:
        return "dicom"
    return "unknown"


# ----------------------------------------------------------------------------------------------
# Reading


def read_image(
    path: str | Path,
    *,
    draft_size: int | None = None,
    no_window: NoWindow = "bits",
    bits: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Decode an image file to float32 (H, W) in [0, 1], dense = bright.

    Args:
        path: a DICOM, PNG or JPEG file (detected from the content).
        draft_size: the size the caller will shrink the image to; lets the decoder skip detail
            it would throw away (:func:`decode_image`). The image may then come back smaller by
            a power of two, and a JPEG 2000's samples offset: :func:`decode_image` says where.
        no_window: how a DICOM without a VOI LUT or window is scaled: ``bits`` (the range the
            stored bits can hold, after the modality LUT) or ``minmax`` (the image's own range).
        bits: the stored bits of a 16-bit greyscale PNG when the caller knows them (the
            manifest's ``bits``); None, 0 or 16 (what any 16-bit PNG's header says): detected
            (:func:`gray16_depth`). Other images ignore it (a DICOM's own header says).
        max_pixels: rows x columns of the full image (a plain JPEG's: after its DCT scaling)
            above which the image is refused from its header, before decoding (``too_large``;
            :mod:`pipelines.limits`).

    Raises:
        DecodeError: with a reason from :data:`REASONS` naming what went wrong.
    """
    return decode_image(
        path, draft_size=draft_size, no_window=no_window, bits=bits, max_pixels=max_pixels
    )[0]


def decode_image(
    path: str | Path,
    *,
    draft_size: int | None = None,
    no_window: NoWindow = "bits",
    bits: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[np.ndarray, Grid]:
    """:func:`read_image` and the :class:`~pipelines.reduced.Grid` of its samples.

    With ``draft_size``, JPEG files and JPEG, JPEG 2000 and uncompressed DICOM are decoded at
    the reduction :func:`pipelines.reduced.reduction` picks (the longer side still at least
    1.5 times ``draft_size``); :func:`to_square` given the grid resizes the full image's extent.
    The size limits (``max_pixels``) are checked from the header first, whichever path decodes.

    Raises:
        DecodeError: as :func:`read_image`.
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError(path, "missing_file", "no such file")
    fmt = sniff_format(path)
    if fmt == "dicom":
        img, grid = decode_dicom(path, no_window, draft_size, max_pixels)
    elif fmt in ("png", "jpeg"):
        img, grid = _read_pillow(path, draft_size, bits, max_pixels)
    else:
        raise DecodeError(path, "not_an_image", "content is not DICOM, PNG or JPEG")
    if img.size == 0:
        raise DecodeError(path, "empty_image", f"image has shape {img.shape}")
    return img, grid


def _read_pillow(
    path: Path, draft_size: int | None, bits: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[np.ndarray, Grid]:
    try:
        with open_bounded(path) as fh, Image.open(fh) as im:
            grid = Grid((im.size[1], im.size[0]))
            if im.format == "JPEG" and draft_size:
                grid = draft_jpeg(im, reduction(max(im.size), draft_size))
            too_large = too_many_pixels(im.size[1], im.size[0], max_pixels)
            if too_large:  # from the header (and the draft scale): nothing decoded yet
                raise DecodeError(path, "too_large", too_large)
            im.load()
            if im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):  # exif_transpose swaps axes
                grid = replace(grid, shape=grid.shape[::-1])
            im = ImageOps.exif_transpose(im)
            return _pil_to_unit(im, bits), grid
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(path, "too_large", str(exc)[:300]) from None
    except UnidentifiedImageError:
        raise DecodeError(path, "not_an_image", "Pillow cannot identify the image") from None
    except MemoryError:
        raise
    except Exception as exc:  # OSError, SyntaxError, ValueError ... (Pillow's plugins raise many)
        reason = "truncated" if "truncated" in str(exc).lower() else "decode_failed"
        raise DecodeError(path, reason, f"{type(exc).__name__}: {exc}"[:300]) from None


def gray16_depth(peak: float, bits: int | None = None) -> int:
    """The bit depth a 16-bit greyscale image with maximum ``peak`` is scaled by.

    Args:
        peak: the image's largest value.
        bits: the stored bits the caller knows; used when 0 < ``bits`` < 16 and ``peak`` fits
            (a maximum above it means the value is wrong). None, 0 or >= 16: unknown.

    Returns:
        ``bits``, else the smallest of :data:`GRAY16_DEPTHS` whose range holds ``peak`` (16 when
        none does).
    """
    if bits is not None and 0 < bits < 16 and peak <= 2**bits - 1:
        return int(bits)
    return next((d for d in GRAY16_DEPTHS if peak <= 2**d - 1), 16)


def _gray16_to_unit(im: Image.Image, bits: int | None) -> np.ndarray:
    """A 16-bit greyscale image (``I;16*`` or ``I``) -> float32 in [0, 1] by its real depth."""
    arr = np.asarray(im, dtype=np.float32)
    peak = float(arr.max()) if arr.size else 0.0
    scaled = arr / float(2 ** gray16_depth(peak, bits) - 1)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def _pil_to_unit(im: Image.Image, bits: int | None = None) -> np.ndarray:
    """A Pillow image -> float32 luminance in [0, 1]; alpha composited onto black.

    ``bits``: the stored bits of a 16-bit greyscale image (:func:`gray16_depth`); other modes
    ignore it.
    """
    mode = im.mode
    if mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("L" if mode == "1" else "RGB")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA")
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":  # "I": 16-bit PNGs on older Pillow
        return _gray16_to_unit(im, bits)
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    arr = np.asarray(im)
    if mode == "L":
        return arr.astype(np.float32) / 255.0
    if mode == "LA":
        return arr[..., 0].astype(np.float32) * (arr[..., 1].astype(np.float32) / 255.0**2)
    if mode in ("RGB", "RGBA"):
        luma = arr[..., :3].astype(np.float32) @ LUMA
        if mode == "RGBA":
            luma *= arr[..., 3].astype(np.float32) / 255.0
        luma /= 255.0
        return np.clip(luma, 0.0, 1.0, out=luma)
    raise DecodeError(getattr(im, "filename", "") or "image", "decode_failed", f"mode {mode}")


# ----------------------------------------------------------------------------------------------
# Square, fixed-size arrays


def to_square(img: np.ndarray, size: int, grid: Grid | None = None) -> np.ndarray:
    """Resize to fit ``size`` x ``size`` keeping the aspect ratio, pad with black, centred.

    Padding rather than centre-cropping keeps the whole chest: lateral views and portable AP
    films are often far from square, and a crop would cut apices, costophrenic angles or the
    anterior / posterior chest wall. The resize is Pillow's antialiased bicubic on float32
    (``reducing_gap=2``: a reduction by 4x or more first box-averages by an integer factor, then
    resamples the last >= 2x; 1.7x faster than without, visually the same), rounded to uint8.

    Args:
        img: float (H, W) in [0, 1].
        size: output side in pixels.
        grid: where ``img``'s samples lie on the full image when it was decoded at a reduced
            size (:func:`decode_image`): the output's size and placement are the full image's,
            and the resize reads the full image's extent. None: ``img`` is the full image.

    Raises:
        ValueError: ``img`` is not 2-D or is empty, or ``size`` < 1.
    """
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"to_square needs a non-empty 2-D image, got shape {img.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    h, w = img.shape if grid is None or grid.factor == 1 else grid.shape
    scale = size / max(h, w)
    nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
    small = np.ascontiguousarray(img, dtype=np.float32)
    if grid is not None and grid.factor > 1:
        small = _resize_reduced(small, (nw, nh), grid)
    elif (nh, nw) != (h, w):
        pil = Image.fromarray(small).resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=2.0)
        small = np.asarray(pil)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.clip(np.rint(small * 255.0), 0, 255)
    return out


def _resize_reduced(img: np.ndarray, out: tuple[int, int], grid: Grid) -> np.ndarray:
    """Resize a reduced decode to ``out`` (width, height) over the full image's extent.

    The extent may end a fraction of a pixel past the last sample (a JPEG 2000 low band, a
    side that is not a multiple of the factor): the last row and column are repeated.
    """
    box = grid.box()
    extra_c = max(0, int(np.ceil(box[2])) - img.shape[1])
    extra_r = max(0, int(np.ceil(box[3])) - img.shape[0])
    if extra_r or extra_c:
        img = np.pad(img, ((0, extra_r), (0, extra_c)), mode="edge")
    pil = Image.fromarray(img).resize(out, Image.Resampling.BICUBIC, box=box, reducing_gap=2.0)
    return np.asarray(pil)


def prepare_image(
    path: str | Path,
    size: int,
    *,
    no_window: NoWindow = "bits",
    bits: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """The uint8 (size, size) array a model sees: :func:`decode_image` then :func:`to_square`.

    The image is decoded at a reduced resolution where its codec allows it
    (:mod:`pipelines.reduced`) and resized once. ``no_window``, ``bits`` and ``max_pixels``
    are those of :func:`read_image`.

    Raises:
        DecodeError: the file cannot be decoded (see :func:`read_image`).
    """
    img, grid = decode_image(
        path, draft_size=size, no_window=no_window, bits=bits, max_pixels=max_pixels
    )
    return to_square(img, size, grid)


def try_prepare(
    path: str | Path,
    size: int,
    *,
    no_window: NoWindow = "bits",
    bits: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[np.ndarray | None, DecodeError | None]:
    """:func:`prepare_image` that returns the error instead of raising (for worker pools).

    Anything unexpected becomes a ``decode_failed`` error naming the exception type.
    """
    try:
        image = prepare_image(path, size, no_window=no_window, bits=bits, max_pixels=max_pixels)
        return image, None
    except DecodeError as exc:
        return None, exc
    except Exception as exc:  # a decoder bug must not kill a whole stage
        return None, DecodeError(path, "decode_failed", f"{type(exc).__name__}: {exc}"[:300])


def prepare_many(
    paths: Sequence[str],
    size: int,
    no_window: NoWindow = "bits",
    bits: Sequence[int | None] | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> list[tuple[np.ndarray | None, DecodeError | None]]:
    """:func:`try_prepare` over several paths (one worker task); ``''`` gives ``(None, None)``.

    Args:
        paths: image paths (``''`` for a missing view).
        size: output side.
        no_window: see :func:`read_image`.
        bits: one ``bits`` per path (see :func:`read_image`; None or 0 = detect), or None for
            all detected.
        max_pixels: see :func:`read_image`.

    Raises:
        ValueError: ``bits`` is not as long as ``paths``.
    """
    if bits is None:
        bits = [None] * len(paths)
    elif len(bits) != len(paths):
        raise ValueError(f"prepare_many: {len(bits)} bits for {len(paths)} paths")
    return [
        try_prepare(p, size, no_window=no_window, bits=b, max_pixels=max_pixels)
        if p
        else (None, None)
        for p, b in zip(paths, bits, strict=True)
    ]


def cpu_count() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
