"""Image decoding: DICOM, PNG and JPEG to display-ready float images, then square uint8 arrays.

One implementation serves the preprocess stage and ``cxr predict``. The convention is the
display one (dense = bright, as DICOM ``MONOCHROME2``), values float32 in [0, 1].

DICOM (pydicom 3 + the pylibjpeg / pyjpegls plugins for JPEG baseline, extended, lossless, JPEG
2000, JPEG-LS; RLE natively):

1. the modality LUT (Modality LUT Sequence, or Rescale Slope / Intercept);
2. the VOI LUT: the first VOI LUT Sequence item if present, else the first Window Center / Width
   (with its VOI LUT Function: LINEAR, LINEAR_EXACT, SIGMOID). Both are
   :func:`pydicom.pixels.apply_modality_lut` / :func:`pydicom.pixels.apply_voi_lut`;
3. scaled to [0, 1] by the VOI output range (the window's ``y_min .. y_max``; for a LUT,
   ``0 .. 2**bits - 1`` of its descriptor, widened if the data exceed it), or, with no VOI, by
   the range the stored bits can hold after the modality LUT (``no_window="bits"``) or by the
   image's own min / max (``no_window="minmax"``);
4. ``MONOCHROME1`` inverted (``1 - x``). A Presentation LUT Shape is not applied on top: in
   DX/CR objects it restates the photometric interpretation (INVERSE with MONOCHROME1).

For integer pixels of up to 16 bits, steps 1-4 are computed once over every possible stored
value (at most 65,536 entries) and applied as one table look-up, which is exact (the steps are
pointwise) and several times faster than transforming every pixel in float64.

PNG (8/16-bit, L, LA, I;16, P, RGB, RGBA) and JPEG go through Pillow: colour becomes luminance
(ITU-R 601: 0.299 R + 0.587 G + 0.114 B); **alpha is composited onto black** (``value * alpha``),
black being both the background of a radiograph and the padding of :func:`to_square`. EXIF
orientation is applied. The format is always sniffed from the content, never the extension.

Failures raise :class:`DecodeError` with a stable ``reason`` code (:data:`REASONS`) and a
``detail`` that never carries header values of identifying tags (PHI).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.errors import DecodeError

# pydicom warns and logs about odd element values by quoting them, and those values may be
# names or dates (PHI). Decoding never needs those messages: keep the pydicom logger quiet.
logging.getLogger("pydicom").setLevel(logging.ERROR)

Format = Literal["dicom", "png", "jpeg", "unknown"]
NoWindow = Literal["bits", "minmax"]

REASONS: tuple[str, ...] = (
    "missing_file",  # the path does not exist or is not a file
    "not_an_image",  # not DICOM, PNG or JPEG (by content)
    "no_pixel_data",  # a DICOM object without an image (SR, RT plan ...)
    "truncated",  # the file ends before its pixel data does
    "multi_frame",  # more than one frame: not a plain radiograph
    "unsupported_transfer_syntax",  # no installed decoder, or 12-bit lossy JPEG that none decodes
    "unsupported_photometric",  # e.g. PALETTE COLOR
    "empty_image",  # zero rows or columns
    "too_large",  # Pillow's decompression-bomb guard
    "decode_failed",  # anything else the decoders raised
)

_MONO = ("MONOCHROME1", "MONOCHROME2")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"  # JPEG Extended (Process 2 & 4): 12-bit lossy


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
    path: str | Path, *, draft_size: int | None = None, no_window: NoWindow = "bits"
) -> np.ndarray:
    """Decode an image file to float32 (H, W) in [0, 1], dense = bright.

    Args:
        path: a DICOM, PNG or JPEG file (detected from the content).
        draft_size: the size the caller will shrink the image to; lets the JPEG decoder skip
            detail it would throw away (DCT scaling to no less than twice this size).
        no_window: how a DICOM without a VOI LUT or window is scaled: ``bits`` (the range the
            stored bits can hold, after the modality LUT) or ``minmax`` (the image's own range).

    Raises:
        DecodeError: with a reason from :data:`REASONS` naming what went wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError(path, "missing_file", "no such file")
    fmt = sniff_format(path)
    if fmt == "dicom":
        img = _read_dicom(path, no_window)
    elif fmt in ("png", "jpeg"):
        img = _read_pillow(path, draft_size)
    else:
        raise DecodeError(path, "not_an_image", "content is not DICOM, PNG or JPEG")
    if img.size == 0:
        raise DecodeError(path, "empty_image", f"image has shape {img.shape}")
    return img


def _read_dicom(path: Path, no_window: NoWindow) -> np.ndarray:
    import pydicom
    from pydicom.pixels import get_decoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:  # header parse errors quote values: report the type only
            reason = "truncated" if isinstance(exc, EOFError) else "decode_failed"
            detail = f"DICOM header unreadable ({type(exc).__name__})"
            raise DecodeError(path, reason, detail) from None

        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            if len(ds) == 0:
                raise DecodeError(path, "truncated", "the file ends inside the DICOM header")
            if "Rows" in ds and "Columns" in ds:
                raise DecodeError(path, "truncated", "image attributes but the file has no pixels")
            raise DecodeError(path, "no_pixel_data", "DICOM object without pixel data")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise DecodeError(path, "multi_frame", f"{frames} frames; expected one radiograph")
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        if photometric not in _MONO and photometric != "RGB" and not photometric.startswith("YBR"):
            raise DecodeError(path, "unsupported_photometric", f"{photometric} images")

        tsyntax = _transfer_syntax(ds)
        ts_name = f"{tsyntax.name} ({tsyntax})" if tsyntax else "unknown transfer syntax"
        if tsyntax is not None and tsyntax.is_compressed:
            try:
                decoder = get_decoder(tsyntax)
            except NotImplementedError:
                raise DecodeError(
                    path, "unsupported_transfer_syntax", f"{ts_name}: no decoder exists"
                ) from None
            if not decoder.is_available:
                missing = "; ".join(decoder.missing_dependencies)
                raise DecodeError(
                    path, "unsupported_transfer_syntax", f"{ts_name}: needs {missing}"
                )
        try:
            arr = ds.pixel_array
        except Exception as exc:
            raise _pixel_error(path, exc, tsyntax, ts_name, ds) from None

        if arr.ndim == 3 and arr.shape[-1] == 3:  # RGB / YBR (pydicom converts YBR to RGB)
            bits = int(ds.get("BitsStored", 8) or 8)
            img = (arr.astype(np.float32) @ _LUMA) / float(2**bits - 1)
            return np.clip(img, 0.0, 1.0, out=img)
        if arr.ndim != 2:
            raise DecodeError(path, "decode_failed", f"unexpected pixel array shape {arr.shape}")
        try:
            return _mono_to_unit(arr, ds, no_window, invert=photometric == "MONOCHROME1")
        except DecodeError:
            raise
        except Exception as exc:  # malformed LUTs and the like
            raise DecodeError(
                path, "decode_failed", f"modality/VOI LUT: {type(exc).__name__}: {exc}"[:300]
            ) from None


def _transfer_syntax(ds: Any) -> Any:
    """The dataset's transfer syntax; for a bare dataset (no file meta), the one it was read in."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None:
        implicit, little = ds.original_encoding
        if implicit is not None and little is not None:
            tsyntax = (
                ImplicitVRLittleEndian
                if implicit
                else ExplicitVRLittleEndian
                if little
                else ExplicitVRBigEndian
            )
            if meta is None:
                ds.file_meta = meta = FileMetaDataset()
            meta.TransferSyntaxUID = tsyntax
    return tsyntax


def _pixel_error(path: Path, exc: Exception, tsyntax: Any, ts_name: str, ds: Any) -> DecodeError:
    """Map a pydicom pixel-decoding exception to a reason (messages are about pixels, no PHI)."""
    msg = str(exc)
    low = msg.lower()
    if str(tsyntax) == _JPEG_EXTENDED and int(ds.get("BitsStored", 8) or 8) > 8:
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


def _voi_lut_item(ds: Any) -> Any | None:
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    return item


def _mono_transfer(values: np.ndarray, ds: Any, no_window: NoWindow, observed: Any) -> np.ndarray:
    """Modality LUT, VOI LUT / window and scaling to [0, 1] of an array of stored values.

    Args:
        values: stored pixel values (the whole image, or every possible value for a table).
        ds: the dataset.
        no_window: scaling when there is no VOI.
        observed: (min, max) stored values actually present (for ``minmax``).
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    from pydicom.pixels.processing import apply_windowing

    x = apply_modality_lut(values, ds)
    lut = _voi_lut_item(ds)
    if lut is not None:
        if x.dtype.kind == "f":  # rescaled: the LUT is indexed by (integral) modality values
            x = np.rint(x).astype(np.int64)
        y = apply_voi_lut(x, ds, index=0, prefer_lut=True).astype(np.float64)
        bits = int(lut.LUTDescriptor[2])
        lo, hi = 0.0, float(2**bits - 1)
        data_max = float(np.max(np.asarray(y))) if y.size else hi
        if data_max > hi:  # descriptor understates the entries' depth
            hi = float(2 ** math.ceil(math.log2(data_max + 1)) - 1)
        return _unit(y, lo, hi)
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
        lo_v, hi_v = observed
        present = np.asarray(x)[(values >= lo_v) & (values <= hi_v)]
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


def _mono_to_unit(arr: np.ndarray, ds: Any, no_window: NoWindow, invert: bool) -> np.ndarray:
    """Stored monochrome pixels -> float32 [0, 1], display convention."""
    observed = None
    if no_window == "minmax":  # only this scaling needs the pixels' own range
        observed = (math.floor(float(arr.min())), math.ceil(float(arr.max())))
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
        table = _mono_transfer(domain, ds, no_window, observed)
        if invert:
            table = 1.0 - table
        return np.take(table, index)
    img = _mono_transfer(arr, ds, no_window, observed)
    return 1.0 - img if invert else img


def _read_pillow(path: Path, draft_size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.format == "JPEG" and draft_size:
                w, h = im.size
                scale = 2 * draft_size / max(w, h)
                if scale < 1:
                    im.draft("L", (math.ceil(w * scale), math.ceil(h * scale)))
            im.load()
            im = ImageOps.exif_transpose(im)
            return _pil_to_unit(im)
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(path, "too_large", str(exc)[:300]) from None
    except UnidentifiedImageError:
        raise DecodeError(path, "not_an_image", "Pillow cannot identify the image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "decode_failed"
        raise DecodeError(path, reason, f"{type(exc).__name__}: {exc}"[:300]) from None


def _pil_to_unit(im: Image.Image) -> np.ndarray:
    """A Pillow image -> float32 luminance in [0, 1]; alpha composited onto black."""
    mode = im.mode
    if mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("L" if mode == "1" else "RGB")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA")
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float32) / 65535.0
    if mode == "I":  # 16-bit PNGs on older Pillow
        return np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    arr = np.asarray(im)
    if mode == "L":
        return arr.astype(np.float32) / 255.0
    if mode == "LA":
        return arr[..., 0].astype(np.float32) * (arr[..., 1].astype(np.float32) / 255.0**2)
    if mode in ("RGB", "RGBA"):
        luma = arr[..., :3].astype(np.float32) @ _LUMA
        if mode == "RGBA":
            luma *= arr[..., 3].astype(np.float32) / 255.0
        luma /= 255.0
        return np.clip(luma, 0.0, 1.0, out=luma)
    raise DecodeError(getattr(im, "filename", "") or "image", "decode_failed", f"mode {mode}")


# ----------------------------------------------------------------------------------------------
# Square, fixed-size arrays


def to_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize to fit ``size`` x ``size`` keeping the aspect ratio, pad with black, centred.

    Padding rather than centre-cropping keeps the whole chest: lateral views and portable AP
    films are often far from square, and a crop would cut apices, costophrenic angles or the
    anterior / posterior chest wall. The resize is Pillow's antialiased bicubic on float32
    (``reducing_gap=2``: a reduction by 4x or more first box-averages by an integer factor, then
    resamples the last >= 2x; 1.7x faster than without, visually the same), rounded to uint8.

    Args:
        img: float (H, W) in [0, 1].
        size: output side in pixels.

    Raises:
        ValueError: ``img`` is not 2-D or is empty, or ``size`` < 1.
    """
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"to_square needs a non-empty 2-D image, got shape {img.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
    small = np.ascontiguousarray(img, dtype=np.float32)
    if (nh, nw) != (h, w):
        pil = Image.fromarray(small).resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=2.0)
        small = np.asarray(pil)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.clip(np.rint(small * 255.0), 0, 255)
    return out


def prepare_image(path: str | Path, size: int, *, no_window: NoWindow = "bits") -> np.ndarray:
    """``to_square(read_image(path), size)``: the uint8 (size, size) array a model sees.

    Raises:
        DecodeError: the file cannot be decoded (see :func:`read_image`).
    """
    return to_square(read_image(path, draft_size=size, no_window=no_window), size)


def try_prepare(
    path: str | Path, size: int, *, no_window: NoWindow = "bits"
) -> tuple[np.ndarray | None, DecodeError | None]:
    """:func:`prepare_image` that returns the error instead of raising (for worker pools).

    Anything unexpected becomes a ``decode_failed`` error naming the exception type.
    """
    try:
        return prepare_image(path, size, no_window=no_window), None
    except DecodeError as exc:
        return None, exc
    except Exception as exc:  # a decoder bug must not kill a whole stage
        return None, DecodeError(path, "decode_failed", f"{type(exc).__name__}: {exc}"[:300])


def prepare_many(
    paths: Sequence[str], size: int, no_window: NoWindow = "bits"
) -> list[tuple[np.ndarray | None, DecodeError | None]]:
    """:func:`try_prepare` over several paths (one worker task); ``''`` gives ``(None, None)``."""
    return [try_prepare(p, size, no_window=no_window) if p else (None, None) for p in paths]


def cpu_count() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
