"""The image files behind a table: finding them under the image root and reading their headers.

With ``ReadOptions.verify_files`` every image's header is opened in a thread pool (format from
the content, not the name) for its size, bit depth and colour mode; missing or unreadable files
are rejected with the image path relative to the image root. A bit depth the source's metadata
gave (PadChest's ``BitsStored_DICOM``: 12-bit values in 16-bit PNGs) is kept: the header only
knows the container's depth.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipelines.io import Rejection
from pipelines.limits import MAX_IMAGE_PIXELS, too_many_pixels


def index_images(root: Path, subdirs: Sequence[str] = ("", "images*", "images*/images")) -> dict:
    """Map file name -> path relative to ``root`` over ``root`` and the given glob subfolders.

    Files in earlier entries win. Used for NIH, whose release splits the images across
    ``images_001/images`` ... ``images_012/images``.
    """
    found: dict[str, str] = {}
    root = Path(root)
    for pattern in subdirs:
        dirs = [root] if pattern == "" else sorted(p for p in root.glob(pattern) if p.is_dir())
        for folder in dirs:
            rel = "" if folder == root else folder.relative_to(root).as_posix() + "/"
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        if entry.name not in found and entry.is_file():
                            found[entry.name] = rel + entry.name
            except OSError:
                continue
    return found


_MODES: dict[str, tuple[int, str]] = {
    "1": (1, "MONOCHROME2"),
    "L": (8, "MONOCHROME2"),
    "LA": (8, "MONOCHROME2"),
    "La": (8, "MONOCHROME2"),
    "I;16": (16, "MONOCHROME2"),
    "I;16L": (16, "MONOCHROME2"),
    "I;16B": (16, "MONOCHROME2"),
    "I;16N": (16, "MONOCHROME2"),
    "I": (32, "MONOCHROME2"),
    "F": (32, "MONOCHROME2"),
    "P": (8, "PALETTE COLOR"),
    "PA": (8, "PALETTE COLOR"),
    "RGB": (8, "RGB"),
    "RGBX": (8, "RGB"),
    "RGBA": (8, "RGBA"),
    "RGBa": (8, "RGBA"),
    "CMYK": (8, "CMYK"),
    "YCbCr": (8, "YBR_FULL"),
    "LAB": (8, "LAB"),
    "HSV": (8, "HSV"),
}


def image_header(
    path: Path, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[int, int, int, str] | tuple[str, str]:
    """Read one image's header with PIL (format from the content, not the file name).

    Returns:
        ``(width, height, bits, photometric)``, or ``(reason, detail)`` on failure with reason
        ``missing_file``, ``unreadable_image`` or ``too_large`` (over ``max_pixels``, which
        the decoder would refuse: :mod:`pipelines.limits`).
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            mode, fmt = im.mode, im.format
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return "missing_file", "image file not found under the image root"
    except UnidentifiedImageError:
        return "unreadable_image", "not an image format Pillow recognises"
    except Image.DecompressionBombError as exc:
        return "too_large", f"refused by Pillow's decompression-bomb guard: {exc}"
    except (OSError, SyntaxError, ValueError) as exc:
        why = f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else ""
        return "unreadable_image", f"cannot read image header: {type(exc).__name__}{why}"
    if width <= 0 or height <= 0:
        return "unreadable_image", f"{fmt} header gives size {width}x{height}"
    too_large = too_many_pixels(height, width, max_pixels, "ingest")
    if too_large:
        return "too_large", too_large
    bits, photometric = _MODES.get(mode, (0, mode))
    if fmt == "PNG" and mode == "I":  # older Pillow opens 16-bit grey PNG as "I"
        bits = 16
    return width, height, bits, photometric


def stored_bits(given: np.ndarray, file_bits: np.ndarray) -> np.ndarray:
    """Each row's bits: the metadata's (``given``) where plausible, else the file header's.

    ``given`` is kept where it is > 0 and within ``file_bits`` (or the file's depth is unknown).
    """
    given = np.asarray(given, dtype=np.int64)
    file_bits = np.asarray(file_bits, dtype=np.int64)
    keep = (given > 0) & ((file_bits == 0) | (given <= file_bits))
    return np.where(keep, given, file_bits)


def verify_files(
    df: pd.DataFrame, root: Path | str, workers: int = 0, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Check that each manifest image exists and read its header (thread pool).

    Width, height and photometric are replaced by what the file says. Bits too, except where the
    row already has bits (> 0, from the source's metadata) that fit the file's depth: those are
    the stored bits, the header's depth only the container's (a 16-bit PNG of 12-bit values).
    Bits above the file's depth (metadata of the original DICOM beside an 8-bit export) give way
    to the file's. Missing files are rejected as ``missing_file``, unreadable ones as
    ``unreadable_image`` with the reason; the rejection path is the image path relative to
    ``root``.

    Args:
        df: manifest rows (``path``, ``source``, size columns).
        root: the image root that ``path`` is relative to.
        workers: threads (0 = min(32, cores + 4), Python's default for I/O-bound pools).
        max_pixels: rows x columns over which an image is rejected (``too_large``).

    Returns:
        (the accepted rows with sizes from the files, the rejections).
    """
    if df.empty:
        return df, []
    root = Path(root)
    paths = df["path"].astype(str).tolist()
    n_threads = workers if workers > 0 else min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(max_workers=max(1, n_threads)) as pool:
        results = list(pool.map(lambda p: image_header(root / p, max_pixels), paths))
    ok = np.array([len(r) == 4 for r in results], dtype=bool)
    good = [r for r in results if len(r) == 4]
    out = df.loc[ok].copy()
    if good:
        width, height, bits, photometric = zip(*good, strict=True)
        out["width"] = np.asarray(width, dtype=np.int64)
        out["height"] = np.asarray(height, dtype=np.int64)
        out["bits"] = stored_bits(out["bits"].to_numpy(), np.asarray(bits, dtype=np.int64))
        out["photometric"] = pd.array(photometric, dtype="string")
    sources = df["source"].astype(str).to_numpy()
    rejections = [
        Rejection(sources[i], paths[i], str(results[i][0]), str(results[i][1]))
        for i in np.flatnonzero(~ok)
    ]
    return out.reset_index(drop=True), rejections
