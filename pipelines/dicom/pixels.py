"""DICOM pixels to a display-ready float image (dense = bright, float32 in [0, 1]).

pydicom 3 decodes, with the pylibjpeg / pyjpegls plugins for JPEG baseline, extended, lossless,
JPEG 2000 and JPEG-LS (RLE natively). Then:

1. the modality LUT (Modality LUT Sequence, or Rescale Slope / Intercept:
   :func:`pydicom.pixels.apply_modality_lut`);
2. the VOI LUT: the first VOI LUT Sequence item if present (looked up here: pydicom's
   ``apply_voi`` indexes an 8-bit LUT with 8-bit indices, so a LUT of more than 256 entries
   wraps), else the first Window Center / Width with its VOI LUT Function (LINEAR,
   LINEAR_EXACT, SIGMOID: :func:`pydicom.pixels.apply_windowing`);
3. scaled to [0, 1] by the VOI output range: the window's ``y_min .. y_max``; for a LUT,
   ``0 .. 2**depth - 1`` where ``depth`` is the smallest of 8..16 bits that holds the LUT's
   largest entry. PS3.3 C.11.2.1.1 lets the descriptor's third value be 8 to 16 bits, and
   vendors over-state it (16 bits holding 12-bit entries, values up to 4095, is common): taken
   at its word, such a LUT would use 1/16 of the range. The depth equals the descriptor's when
   the data fill it, and is wider when the data exceed it. With no VOI: the range the stored
   bits can hold after the modality LUT (``no_window="bits"``) or the image's own min / max
   (``no_window="minmax"``);
4. ``MONOCHROME1`` inverted (``1 - x``). A Presentation LUT Shape is not applied on top: in
   DX/CR objects it restates the photometric interpretation (INVERSE with MONOCHROME1);
5. padding pixels rendered black (0, after the inversion). PixelPaddingValue (0028,0120) marks
   the area outside the collimated exposure (PS3.3 C.7.5.1.1.2): one stored value, or with
   PixelPaddingRangeLimit (0028,0121) the inclusive range between the two, given before the
   modality LUT. Those pixels are left out of the ``minmax`` scaling too, so that neither a
   window nor an inversion shows the background white, nor does it set the image's range.

For integer pixels of up to 16 bits, steps 1-4 are computed once over every possible stored
value (at most 65,536 entries) and applied as one table look-up, which is exact (the steps are
pointwise) and much faster than transforming every pixel in float64.

Given the size the caller will shrink to, :func:`decode_dicom` decodes the stored values at a
reduced resolution where the codec allows it (:mod:`pipelines.reduced`: JPEG DCT scaling,
JPEG 2000 resolution levels, block means of uncompressed pixels), and then runs steps 1-5 on
them unchanged.

Colour (RGB; YBR, which pydicom converts to RGB) becomes luminance (ITU-R 601, :data:`LUMA`).
The photometric and frame rules are :mod:`pipelines.dicom.policy`'s, which ingest applies too.

Before the data set is read, its header alone is checked against the size limits of
:mod:`pipelines.limits` (the file's size, one frame, rows x columns; a deflated data set's
inflated size), and a JPEG 2000 frame's JP2 boxes are checked, by :mod:`pipelines.dicom.guards`:
``too_large`` and ``multi_frame`` come before any pixel is read, by the full or the reduced
decode.

Failures raise :class:`~pipelines.errors.DecodeError` with a reason of
:data:`pipelines.imaging.REASONS` and a detail that never carries header values of identifying
tags (PHI). pydicom is imported on the first DICOM read, so that importing
:mod:`pipelines.imaging` for PNG / JPEG needs none.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipelines.dicom.guards import (
    check_frames,
    check_jp2_boxes,
    check_size,
    header_error,
    header_int,
)
from pipelines.errors import DecodeError
from pipelines.limits import MAX_IMAGE_PIXELS
from pipelines.reduced import Grid, reduced_pixels

NoWindow = Literal["bits", "minmax"]

#: ITU-R 601 luma weights of R, G, B.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MONO = ("MONOCHROME1", "MONOCHROME2")
_JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"  # JPEG Extended (Process 2 & 4): 12-bit lossy


def read_dicom(
    path: Path, no_window: NoWindow = "bits", max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Decode a DICOM image to float32 (H, W) in [0, 1], dense = bright.

    Args:
        path: the file.
        no_window: how an image without a VOI LUT or window is scaled (module docstring).
        max_pixels: rows x columns above which the image is refused from its header
            (:mod:`pipelines.limits`).

    Raises:
        DecodeError: ``truncated``, ``no_pixel_data``, ``multi_frame``, ``too_large``,
            ``unsupported_photometric``, ``unsupported_transfer_syntax`` or ``decode_failed``.
    """
    return decode_dicom(path, no_window, max_pixels=max_pixels)[0]


def decode_dicom(
    path: Path,
    no_window: NoWindow = "bits",
    draft_size: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[np.ndarray, Grid]:
    """:func:`read_dicom`, at a reduced resolution where the codec allows it.

    The size limits and the JP2 box check run first, before either the reduced or the full
    decode reads a pixel.

    Args:
        path: the file.
        no_window: as :func:`read_dicom`.
        draft_size: the size the caller will shrink the image to: the stored values are decoded
            at the reduction :func:`pipelines.reduced.reduction` picks (JPEG, JPEG 2000,
            uncompressed), except for an image scaled by its own range (``minmax`` with no
            VOI), then go through the same LUTs. None: full resolution.
        max_pixels: as :func:`read_dicom` (of the full image, whatever the reduction).

    Returns:
        the image and where its samples lie on the full image (:class:`~pipelines.reduced.Grid`).

    Raises:
        DecodeError: as :func:`read_dicom`.
    """
    from pipelines.dicom.header import quiet

    with quiet():
        try:
            return _decode(path, no_window, draft_size, max_pixels)
        except (DecodeError, MemoryError):
            raise
        except Exception as exc:  # a header value pydicom cannot convert (its message quotes it)
            detail = f"a DICOM header value cannot be read ({type(exc).__name__})"
            raise DecodeError(path, "decode_failed", detail) from None


def _decode(
    path: Path, no_window: NoWindow, draft_size: int | None, max_pixels: int
) -> tuple[np.ndarray, Grid]:
    """:func:`decode_dicom` inside :func:`pipelines.dicom.header.quiet`."""
    check_size(path, max_pixels)
    ds = _read_dataset(path)
    photometric = _check_decodable(ds, path)
    tsyntax, ts_name = _check_decoder(ds, path)
    check_jp2_boxes(ds, path, tsyntax)
    arr, grid = _pixels(ds, path, no_window, draft_size, (tsyntax, ts_name))

    if arr.ndim == 3 and arr.shape[-1] == 3:  # RGB / YBR (pydicom converts YBR to RGB)
        bits = header_int(ds, "BitsStored", 8, path)
        img = (arr.astype(np.float32) @ LUMA) / float(2**bits - 1)
        return np.clip(img, 0.0, 1.0, out=img), grid
    if arr.ndim != 2:
        raise DecodeError(path, "decode_failed", f"unexpected pixel array shape {arr.shape}")
    try:
        return _mono_to_unit(arr, ds, no_window, invert=photometric == "MONOCHROME1"), grid
    except DecodeError:
        raise
    except Exception as exc:  # malformed LUTs and the like
        raise DecodeError(
            path, "decode_failed", f"modality/VOI LUT: {type(exc).__name__}: {exc}"[:300]
        ) from None


def _pixels(
    ds: Any, path: Path, no_window: NoWindow, draft_size: int | None, syntax: tuple[Any, str]
) -> tuple[np.ndarray, Grid]:
    """The stored values, reduced where :mod:`pipelines.reduced` can, else in full."""
    if draft_size and (no_window == "bits" or _has_voi(ds)):
        reduced = reduced_pixels(ds, draft_size)
        if reduced is not None:
            return reduced
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise _pixel_error(path, exc, *syntax, ds) from None
    return arr, Grid(arr.shape[:2])


def _read_dataset(path: Path) -> Any:
    """The whole data set, with pixels (header parse errors quote values: report the type)."""
    import pydicom

    from pipelines.dicom.header import open_dicom

    try:
        with open_dicom(path) as fh:
            ds = pydicom.dcmread(fh, force=True)
    except Exception as exc:
        raise header_error(path, exc) from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if len(ds) == 0:
            raise DecodeError(path, "truncated", "the file ends inside the DICOM header")
        if "Rows" in ds and "Columns" in ds:
            raise DecodeError(path, "truncated", "image attributes but the file has no pixels")
        raise DecodeError(path, "no_pixel_data", "DICOM object without pixel data")
    return ds


def _check_decodable(ds: Any, path: Path) -> str:
    """One frame of a photometric interpretation the policy accepts; returns that one."""
    from pipelines.dicom.policy import is_decodable_photometric

    check_frames(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if not is_decodable_photometric(photometric):
        raise DecodeError(path, "unsupported_photometric", f"{photometric} images")
    return photometric


def _check_decoder(ds: Any, path: Path) -> tuple[Any, str]:
    """The transfer syntax (declared in the file meta for a bare data set, so that pydicom can
    decode it) and its name; an installed decoder for a compressed one."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.pixels import get_decoder

    from pipelines.dicom.header import transfer_syntax

    tsyntax = transfer_syntax(ds)
    if tsyntax is not None and not getattr(ds, "file_meta", {}).get("TransferSyntaxUID"):
        if getattr(ds, "file_meta", None) is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = tsyntax
    ts_name = f"{tsyntax.name} ({tsyntax})" if tsyntax else "unknown transfer syntax"
    if tsyntax is not None and not tsyntax.is_transfer_syntax:
        from pipelines.dicom.header import UID_STRING, shown

        raise DecodeError(
            path,
            "unsupported_transfer_syntax",
            f"unknown transfer syntax UID {shown(str(tsyntax), UID_STRING)}",
        )
    if tsyntax is not None and tsyntax.is_compressed:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            raise DecodeError(
                path, "unsupported_transfer_syntax", f"{ts_name}: no decoder exists"
            ) from None
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies)
            raise DecodeError(path, "unsupported_transfer_syntax", f"{ts_name}: needs {missing}")
    return tsyntax, ts_name


def _pixel_error(path: Path, exc: Exception, tsyntax: Any, ts_name: str, ds: Any) -> DecodeError:
    """Map a pydicom pixel-decoding exception to a reason (messages are about pixels, no PHI)."""
    msg = str(exc)
    low = msg.lower()
    if str(tsyntax) == _JPEG_EXTENDED and header_int(ds, "BitsStored", 8, path) > 8:
        return DecodeError(
            path,
            "unsupported_transfer_syntax",
            f"12-bit lossy JPEG ({ts_name}): no installed decoder could decode it",
        )
    if isinstance(exc, NotImplementedError):
        return DecodeError(path, "unsupported_transfer_syntax", f"{ts_name}: {msg}"[:300])
    if "less than expected" in low or "truncat" in low or "insufficient" in low:
        return DecodeError(path, "truncated", msg[:300])
    return DecodeError(path, "decode_failed", f"{ts_name}: {type(exc).__name__}: {msg}"[:300])


def _has_voi(ds: Any) -> bool:
    """A VOI LUT or a window: the scaling does not depend on the pixels' own range."""
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    return _voi_lut_item(ds) is not None or has_window


def _voi_lut_item(ds: Any) -> Any | None:
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    return item


def _lut_entries(ds: Any, item: Any) -> tuple[int, np.ndarray]:
    """The first mapped value and the entries (int64) of a VOI LUT item.

    Raises:
        ValueError: fewer entries than the descriptor announces.
    """
    n, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16-bit words in the data set's byte order
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        entries = np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2" if little else ">u2")
    else:  # US: one value or several
        entries = np.atleast_1d(np.asarray(data, dtype=np.int64))
    if entries.size < n:
        raise ValueError(f"LUTData has {entries.size} entries; its descriptor announces {n}")
    return first, entries[:n].astype(np.int64)


def _apply_voi_lut(x: np.ndarray, ds: Any, item: Any) -> tuple[np.ndarray, float]:
    """The VOI LUT's output for modality values ``x``, and its top (``2**depth - 1``).

    Values below the first mapped one take the first entry, values past the end the last.
    """
    first, entries = _lut_entries(ds, item)
    index = np.clip(np.asarray(x, dtype=np.int64) - first, 0, entries.size - 1)
    depth = max(8, int(entries.max()).bit_length())  # the data's depth (module docstring)
    return entries[index].astype(np.float64), float(2**depth - 1)


def _mono_transfer(
    values: np.ndarray, ds: Any, no_window: NoWindow, counted: np.ndarray | None
) -> np.ndarray:
    """Modality LUT, VOI LUT / window and scaling to [0, 1] of an array of stored values.

    Args:
        values: stored pixel values (the whole image, or every possible value for a table).
        ds: the dataset.
        no_window: scaling when there is no VOI.
        counted: which of ``values`` set the ``minmax`` range (None: all of them).
    """
    from pydicom.pixels import apply_modality_lut
    from pydicom.pixels.processing import apply_windowing

    x = apply_modality_lut(values, ds)
    lut = _voi_lut_item(ds)
    if lut is not None:
        if x.dtype.kind == "f":  # rescaled: the LUT is indexed by (integral) modality values
            x = np.rint(x)
        y, top = _apply_voi_lut(x, ds, lut)
        return _unit(y, 0.0, top)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            # the window's output range y_min .. y_max: probe it with -inf / +inf, in one call
            probed = np.concatenate([np.asarray(x, dtype=np.float64).ravel(), [-np.inf, np.inf]])
            with np.errstate(over="ignore"):
                y = apply_windowing(probed, ds, index=0)
            return _unit(y[:-2].reshape(np.shape(x)), float(y[-2]), float(y[-1]))
        except (ValueError, TypeError, IndexError):
            pass  # a malformed window (width < 1 ...): fall back to the no-window scaling
    if no_window == "minmax":
        present = np.asarray(x) if counted is None else np.asarray(x)[counted]
        return _unit(np.asarray(x, dtype=np.float64), float(present.min()), float(present.max()))
    return _unit(np.asarray(x, dtype=np.float64), *_stored_range(ds))


def _stored_range(ds: Any) -> tuple[float, float]:
    """The modality-output range the stored bits can hold."""
    from pydicom.pixels import apply_modality_lut

    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 16) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        ends = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    else:
        ends = np.array([0, 2**bits - 1], dtype=np.int64)
    lo, hi = apply_modality_lut(ends, ds)  # a negative slope swaps them: _unit copes
    return float(lo), float(hi)


def _unit(y: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo -> 0`` and ``hi -> 1`` (either order), clipped, float32."""
    if hi == lo:
        return np.zeros(np.shape(y), dtype=np.float32)
    out = ((np.asarray(y, dtype=np.float64) - lo) / (hi - lo)).astype(np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


def _padding_range(ds: Any, dtype: np.dtype) -> tuple[int, int] | None:
    """The stored values that are padding (module docstring, step 5), None when none are.

    A value that is not an integer is ignored; a signed image's value written unsigned (a
    writer's wrong VR: 63536 for -2000) is read as the two's complement it is.
    """
    if dtype.kind not in "ui":
        return None
    ends = []
    for keyword in ("PixelPaddingValue", "PixelPaddingRangeLimit"):
        try:
            value = int(ds.get(keyword))
        except (TypeError, ValueError):  # absent, empty or malformed
            break
        width = 8 * dtype.itemsize
        if dtype.kind == "i" and value >= 2 ** (width - 1):
            value -= 2**width
        ends.append(value)
    return (min(ends), max(ends)) if ends else None


def _mono_to_unit(arr: np.ndarray, ds: Any, no_window: NoWindow, invert: bool) -> np.ndarray:
    """Stored monochrome pixels -> float32 [0, 1], display convention, padding black."""
    padding = _padding_range(ds, arr.dtype)
    pad = None if padding is None else (arr >= padding[0]) & (arr <= padding[1])
    if pad is not None and not pad.any():
        padding = pad = None
    img = _mono_lookup(arr, ds, no_window, invert, padding, pad)
    if pad is not None:
        img[pad] = 0.0
    return img


def _mono_lookup(
    arr: np.ndarray,
    ds: Any,
    no_window: NoWindow,
    invert: bool,
    padding: tuple[int, int] | None,
    pad: np.ndarray | None,
) -> np.ndarray:
    """Steps 1-4 of the module docstring; ``pad`` (the padding pixels) is left out of minmax."""
    observed = None
    if no_window == "minmax":  # only this scaling needs the pixels' own range
        kept = arr if pad is None else arr[~pad]
        if kept.size == 0:  # nothing but padding
            return np.zeros(arr.shape, dtype=np.float32)
        observed = (math.floor(float(kept.min())), math.ceil(float(kept.max())))
    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
        # A table over every possible stored value, indexed by the pixels. Unsigned: the values
        # 0 .. 2**BitsStored - 1 (pixels above are clipped to the top, as pydicom masks them);
        # signed: all 2**(8 * itemsize) bit patterns in unsigned order, pixels viewed unsigned.
        unsigned = np.dtype(f"u{arr.dtype.itemsize}")
        bits = int(ds.get("BitsStored", 0) or 8 * arr.dtype.itemsize)
        if arr.dtype.kind == "u" and bits < 8 * arr.dtype.itemsize:
            domain = np.arange(2**bits, dtype=arr.dtype)
            index = np.minimum(arr, 2**bits - 1)
        else:
            domain = np.arange(2 ** (8 * arr.dtype.itemsize), dtype=unsigned).view(arr.dtype)
            index = arr.view(unsigned)
        counted = None
        if observed is not None:  # the values between the observed ends, padding left out
            counted = (domain >= observed[0]) & (domain <= observed[1])
            if padding is not None:
                counted &= (domain < padding[0]) | (domain > padding[1])
        table = _mono_transfer(domain, ds, no_window, counted)
        if invert:
            table = 1.0 - table
        return np.take(table, index)
    img = _mono_transfer(arr, ds, no_window, None if pad is None else ~pad)
    return 1.0 - img if invert else img
