"""Benchmark reduced-resolution decoding: full-size radiographs -> the model's size, per format.

Writes ``--images`` radiograph-like images of ``--src`` px (the synthetic renderer's chest,
upsampled, with fine texture and quantum noise, so that the codecs compress as they do real
films) as: a plain JPEG file (quality 95, as MIMIC-CXR-JPG), 8-bit JPEG in DICOM (.4.50),
12-bit JPEG 2000 lossless (.4.90) and lossy (.4.91, 10:1) in DICOM, uncompressed 12-bit DICOM
and a 16-bit PNG holding 12 bits. Then, alternating ``--repeat`` times, it times per format:

- **today**: the path before reduced decoding: a full decode (pydicom and its plugins for
  DICOM; Pillow for PNG), then :func:`pipelines.imaging.to_square`; a plain JPEG was already
  drafted by DCT scaling to at least twice the target (a copy of that code is below);
- **full**: a full decode + resize for every format (``read_image`` + ``to_square``);
- **new**: :func:`pipelines.imaging.prepare_image` (the reduced decode of
  :mod:`pipelines.reduced`, then one resize).

It prints images/s of each (the median of the repeats, one process), the ratios new / today and
new / full, new / today by this process's CPU time (steadier when other processes share the
cores; the PNG row, the same code on both sides, shows the noise), the reduction factor, and
the mean / max absolute difference of the new uint8 image from the full decode + resize (grey
levels).

Usage:
    python benchmarks/bench_decode.py [--src 2500] [--size 320] [--images 3] [--repeat 5]
                                      [--oversample 2.0]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import reduced
from pipelines.imaging import _pil_to_unit, decode_image, prepare_image, read_image, to_square
from pipelines.synthetic import render_view, sample_anatomy

CR = "1.2.840.10008.5.1.4.1.1.1"


def radiograph(src: int, seed: int) -> np.ndarray:
    """A chest-like float image in [0, 1]: anatomy, fine texture and quantum noise."""
    rng = np.random.default_rng(seed)
    chest = render_view(rng, 512, "PA" if seed % 2 == 0 else "LATERAL", frozenset(),
                        sample_anatomy(rng))  # fmt: skip
    big = np.asarray(Image.fromarray(chest).resize((src, src), Image.Resampling.BICUBIC))
    coarse = rng.standard_normal((src // 3, src // 3)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((src, src), Image.Resampling.BICUBIC))
    noise = rng.standard_normal((src, src)).astype(np.float32)
    return np.clip(big + 0.02 * texture + 0.008 * noise, 0.0, 1.0)


def _dataset(px: np.ndarray, bits: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR
    ds.SOPClassUID, ds.Modality = CR, "CR"
    ds.set_pixel_data(px, "MONOCHROME2", bits)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.WindowCenter, ds.WindowWidth = (2048, 4000) if bits == 12 else (128, 250)
    return ds


def write_formats(img: np.ndarray, folder: Path, i: int) -> dict[str, Path]:
    """The image in every benchmarked format; returns {format: path}."""
    px8 = np.rint(img * 255).astype(np.uint8)
    px12 = np.rint(img * 4095).astype(np.uint16)
    paths = {name: folder / f"{i}-{name}" for name in FORMATS}
    Image.fromarray(px8).save(paths["JPEG file"], format="JPEG", quality=95)
    buf = io.BytesIO()
    Image.fromarray(px8).save(buf, format="JPEG", quality=95)
    ds = _dataset(px8, 8)
    ds.PixelData = pydicom.encaps.encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(paths["JPEG in DICOM"], enforce_file_format=True)
    ds = _dataset(px12, 12)
    ds.compress(JPEG2000Lossless)
    ds.save_as(paths["JPEG 2000 lossless"], enforce_file_format=True)
    ds = _dataset(px12, 12)
    ds.compress(JPEG2000, j2k_cr=[10])
    ds.save_as(paths["JPEG 2000 10:1"], enforce_file_format=True)
    _dataset(px12, 12).save_as(paths["uncompressed DICOM"], enforce_file_format=True)
    Image.fromarray(px12).save(paths["PNG 16-bit"], format="PNG")
    return paths


FORMATS = (
    "JPEG file",
    "JPEG in DICOM",
    "JPEG 2000 lossless",
    "JPEG 2000 10:1",
    "uncompressed DICOM",
    "PNG 16-bit",
)


def today_jpeg(path: Path, size: int) -> np.ndarray:
    """The plain-JPEG path before reduced decoding: Pillow's draft to >= 2x, then resize."""
    with Image.open(path) as im:
        w, h = im.size
        scale = 2 * size / max(w, h)
        if scale < 1:
            im.draft("L", (int(np.ceil(w * scale)), int(np.ceil(h * scale))))
        im.load()
        img = _pil_to_unit(ImageOps.exif_transpose(im))
    return to_square(img, size)


def full(path: Path, size: int) -> np.ndarray:
    """A full decode + resize."""
    return to_square(read_image(path), size)


def rate(
    fn: Callable[[Path, int], np.ndarray], paths: list[Path], size: int
) -> tuple[float, float]:
    """Images/s of ``fn`` over ``paths``: by wall-clock time and by this process's CPU time
    (the second holds up better when other processes share the cores)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        fn(path, size)
    return len(paths) / (time.perf_counter() - wall), len(paths) / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=int, default=2500)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--oversample",
        type=float,
        default=reduced.MIN_OVERSAMPLE,
        help="try another pipelines.reduced.MIN_OVERSAMPLE (the code's by default)",
    )
    args = parser.parse_args()
    reduced.MIN_OVERSAMPLE = args.oversample

    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, list[Path]] = {name: [] for name in FORMATS}
        for i in range(args.images):
            for name, path in write_formats(radiograph(args.src, i), Path(tmp), i).items():
                files[name].append(path)
        print(f"{args.images} images of {args.src} px -> {args.size} px, median of "
              f"{args.repeat} alternating runs, one process, "
              f"MIN_OVERSAMPLE {reduced.MIN_OVERSAMPLE}\n")  # fmt: skip
        print("| format | MB | today, img/s | full decode, img/s | new, img/s | new / today "
              "| new / full | new / today, CPU time | factor | mean / max abs diff |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name in FORMATS:
            paths = files[name]
            today_fn = today_jpeg if name == "JPEG file" else full
            runs: dict[str, list[tuple[float, float]]] = {"today": [], "full": [], "new": []}
            for _ in range(args.repeat):
                runs["today"].append(rate(today_fn, paths, args.size))
                runs["full"].append(rate(full, paths, args.size))
                runs["new"].append(rate(prepare_image, paths, args.size))
            med = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
            cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
            diffs = [
                np.abs(prepare_image(p, args.size).astype(np.int16) - full(p, args.size))
                for p in paths
            ]
            factor = decode_image(paths[0], draft_size=args.size)[1].factor
            mb = statistics.mean(p.stat().st_size for p in paths) / 1e6
            print(
                f"| {name} | {mb:.2f} | {med['today']:.1f} | {med['full']:.1f} | "
                f"{med['new']:.1f} | {med['new'] / med['today']:.2f}x | "
                f"{med['new'] / med['full']:.2f}x | {cpu['new'] / cpu['today']:.2f}x | {factor} | "
                f"{np.mean([d.mean() for d in diffs]):.3f} / {max(d.max() for d in diffs):.0f} |"
            )


if __name__ == "__main__":
    main()
