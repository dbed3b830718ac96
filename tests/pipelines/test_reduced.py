"""reduced: the reduction rule, block means, the JPEG 2000 header, and the tolerance of the
reduced decode + resize against the full decode + resize, per format, on generated and real
images (the real ones skip when ../shared/real-cxr is absent)."""

from __future__ import annotations

import functools
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit

from pipelines.errors import DecodeError
from pipelines.imaging import decode_image, prepare_image, read_image, to_square
from pipelines.reduced import (
    MAX_FACTOR,
    TOLERANCE_MEAN,
    Grid,
    box_mean,
    j2k_header,
    reduced_pixels,
    reduction,
)
from pipelines.synthetic import render_view, sample_anatomy
from tests.pipelines.test_imaging import write_dicom

SRC, SIZE = 768, 128  # 768 / 4 = 192 >= 1.5 * 128: a reduction by 4, as 2,500 px -> 320 px


@functools.cache
def _chest(side: int, seed: int) -> np.ndarray:
    """The synthetic renderer's chest at a quarter of ``side``, upsampled, with texture and
    quantum noise: blurred edges as a detector gives them, compressible as films are."""
    rng = np.random.default_rng(seed)
    small = render_view(rng, side // 4, "PA", frozenset(), sample_anatomy(rng))
    img = np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC))
    coarse = rng.standard_normal((side // 3, side // 3)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC))
    return np.clip(img + 0.02 * texture + 0.008 * rng.standard_normal((side, side)), 0, 1)


def radiograph(side: int = SRC, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A radiograph-like image of ``bits`` stored bits."""
    img = _chest(side, seed) * (2**bits - 1)
    return np.round(img).astype(np.uint16 if bits > 8 else np.uint8)


def diff(path: Path, size: int = SIZE, **kw) -> tuple[float, float, int]:
    """|reduced - full| of the uint8 outputs: mean, 99th percentile; and the factor used."""
    new = prepare_image(path, size, **kw).astype(int)
    full = to_square(read_image(path, **kw), size).astype(int)
    factor = decode_image(path, draft_size=size, **kw)[1].factor
    err = np.abs(new - full)
    return float(err.mean()), float(np.percentile(err, 99)), factor


def jpeg_dicom(path: Path, px: np.ndarray, **tags) -> Path:
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG", quality=95)
    ds = pydicom.dcmread(write_dicom(path, px, **tags))
    ds.PixelData = pydicom.encaps.encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    return path


def j2k_dicom(path: Path, px: np.ndarray, syntax: str = JPEG2000Lossless, **tags) -> Path:
    ds = pydicom.dcmread(write_dicom(path, px, **tags))
    ds.compress(syntax, **({"j2k_cr": [10]} if syntax == JPEG2000 else {}))
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------------
# the rule, the means, the header


@pytest.mark.parametrize(
    ("side", "target", "factor"),
    [(2500, 320, 4), (2500, 224, 4), (2500, 512, 2), (3000, 224, 8), (2048, 512, 2),
     (768, 128, 4), (767, 128, 2), (400, 320, 1), (64, 64, 1), (9000, 16, MAX_FACTOR),
     (2500, None, 1), (2500, 0, 1)],
)  # fmt: skip
def test_reduction_keeps_one_and_a_half_times_the_target(side, target, factor):
    assert reduction(side, target) == factor
    if factor > 1:
        assert side / factor >= 1.5 * target


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_box_mean_rounds_each_block_and_partial_edges(dtype, factor):
    rng = np.random.default_rng(factor)
    low = -300 if np.dtype(dtype).kind == "i" else 0
    arr = rng.integers(low, 250 if dtype == np.uint8 else 4000, (19, 13)).astype(dtype)
    out = box_mean(arr, factor)
    rows, cols = -(-19 // factor), -(-13 // factor)
    assert out.dtype == arr.dtype and out.shape == (rows, cols)
    for i in range(rows):
        for j in range(cols):
            block = arr[i * factor : (i + 1) * factor, j * factor : (j + 1) * factor]
            assert out[i, j] == np.floor(block.astype(float).mean() + 0.5)


def test_j2k_header_and_grid(tmp_path):
    path = j2k_dicom(tmp_path / "j.dcm", radiograph(64))
    frame = pydicom.encaps.get_frame(pydicom.dcmread(path).PixelData, 0, number_of_frames=1)
    head = j2k_header(frame)
    assert head is not None
    assert (head["components"], head["precision"], head["signed"]) == (1, 12, 0)
    assert (head["rows"], head["columns"]) == (64, 64)
    assert (head["x0"], head["y0"]) == (0, 0) and head["levels"] >= 1
    assert j2k_header(b"\xff\xd8\xff" + frame[3:]) is None
    # a low band 2 levels down: sample i sits on source pixel 4i, whose centre is 4i + 0.5
    assert Grid((10, 8), 4, 3 / 8).box() == (0.375, 0.375, 0.375 + 2, 0.375 + 2.5)


# ---------------------------------------------------------------------------------------------
# tolerance: reduced decode + one resize against full decode + resize


def test_jpeg_file_tolerance(tmp_path):
    Image.fromarray(radiograph(bits=8)).save(tmp_path / "a.jpg", quality=95)
    mean, p99, factor = diff(tmp_path / "a.jpg")
    assert factor == 4 and mean <= TOLERANCE_MEAN and p99 <= 4


def test_jpeg_exif_rotation_keeps_the_full_image_geometry(tmp_path):
    px = radiograph(bits=8)[:, : SRC * 3 // 4]  # portrait, rotated by EXIF
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(px).save(tmp_path / "r.jpg", quality=95, exif=exif)
    img, grid = decode_image(tmp_path / "r.jpg", draft_size=SIZE)
    assert grid.shape == (px.shape[1], px.shape[0]) and img.shape[1] > img.shape[0]
    mean, p99, _ = diff(tmp_path / "r.jpg")
    assert mean <= TOLERANCE_MEAN and p99 <= 4


@pytest.mark.parametrize(
    ("kind", "tags", "factor"),
    [
        ("jpeg", {}, 4),
        ("jpeg", {"WindowCenter": 100, "WindowWidth": 120}, 4),
        ("j2k_lossless", {}, 2),  # the 5/3 wavelet: one level less
        ("j2k_lossy", {"photometric": "MONOCHROME1"}, 4),
        ("j2k_lossless", {"RescaleSlope": 2, "RescaleIntercept": -1000,
                          "WindowCenter": 1800, "WindowWidth": 3000}, 2),
        ("native", {}, 4),
        ("native", {"photometric": "MONOCHROME1", "WindowCenter": 2000, "WindowWidth": 2500}, 4),
    ],
)  # fmt: skip
def test_dicom_tolerance(tmp_path, kind, tags, factor):
    path = tmp_path / "x.dcm"
    if kind == "jpeg":
        jpeg_dicom(path, radiograph(bits=8), **tags)
    elif kind == "native":
        write_dicom(path, radiograph(), **tags)
    else:
        j2k_dicom(path, radiograph(), JPEG2000 if kind == "j2k_lossy" else JPEG2000Lossless, **tags)
    mean, p99, used = diff(path)
    assert used == factor
    assert mean <= TOLERANCE_MEAN and p99 <= 4


def test_j2k_needs_its_grid_origin(tmp_path):
    """Uncorrected, the low band's samples move the image by 1.5 source pixels at 1/4."""
    path = j2k_dicom(tmp_path / "j.dcm", radiograph(), JPEG2000)
    img, grid = decode_image(path, draft_size=SIZE)
    full = to_square(read_image(path), SIZE).astype(int)
    right = np.abs(to_square(img, SIZE, grid).astype(int) - full).mean()
    wrong = np.abs(to_square(img, SIZE, replace(grid, origin=0.0)).astype(int) - full).mean()
    assert grid.origin == 3 / 8 and right < wrong / 2


def test_signed_j2k_and_padding(tmp_path):
    px = radiograph().astype(np.int16) - 2048
    px[:, :40] = -2048  # collimator padding, rendered black
    path = j2k_dicom(tmp_path / "s.dcm", px, JPEG2000, bits=12, PixelPaddingValue=-2048)
    mean, p99, factor = diff(path)
    assert factor == 4 and mean <= TOLERANCE_MEAN and p99 <= 8  # the padding edge


def test_own_range_scaling_is_not_reduced(tmp_path):
    """minmax without a window depends on every pixel's value: decoded in full."""
    plain = write_dicom(tmp_path / "p.dcm", radiograph())
    windowed = write_dicom(tmp_path / "w.dcm", radiograph(), WindowCenter=2048, WindowWidth=4096)
    assert decode_image(plain, draft_size=SIZE, no_window="minmax")[1].factor == 1
    assert decode_image(plain, draft_size=SIZE)[1].factor == 4
    assert decode_image(windowed, draft_size=SIZE, no_window="minmax")[1].factor == 4


def test_small_images_and_unreducible_codecs_decode_in_full(tmp_path):
    Image.fromarray(radiograph(bits=8)).save(tmp_path / "a.png")
    assert decode_image(tmp_path / "a.png", draft_size=SIZE)[1].factor == 1
    small = write_dicom(tmp_path / "s.dcm", radiograph(180))
    img, grid = decode_image(small, draft_size=SIZE)
    assert grid == Grid((180, 180)) and img.shape == (180, 180)
    np.testing.assert_array_equal(prepare_image(small, SIZE), to_square(read_image(small), SIZE))


def test_a_broken_file_keeps_its_reason(tmp_path):
    """The reduced path never decides a file is bad: the full decode names the reason."""
    path = jpeg_dicom(tmp_path / "j.dcm", radiograph(bits=8))
    raw = path.read_bytes()
    (tmp_path / "t.dcm").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DecodeError) as full:
        read_image(tmp_path / "t.dcm")
    with pytest.raises(DecodeError) as reduced:
        prepare_image(tmp_path / "t.dcm", SIZE)
    assert reduced.value.reason == full.value.reason


# ---------------------------------------------------------------------------------------------
# the hostile-input guards run before the reduced decode too


def _no_reduced_decode(monkeypatch):
    def fail(*_):
        raise AssertionError("the reduced decode ran before the guards refused the file")

    monkeypatch.setattr("pipelines.dicom.pixels.reduced_pixels", fail)


@pytest.mark.parametrize("kind", ["native", "jpeg", "j2k"])
def test_the_size_limit_refuses_before_the_reduced_decode(tmp_path, monkeypatch, kind):
    """max_pixels counts the full image's rows x columns, whatever the reduction would be."""
    px = radiograph(bits=8 if kind == "jpeg" else 12)
    write = {"native": write_dicom, "jpeg": jpeg_dicom, "j2k": j2k_dicom}[kind]
    path = write(tmp_path / f"{kind}.dcm", px)
    assert decode_image(path, draft_size=SIZE, max_pixels=SRC * SRC)[1].factor > 1
    _no_reduced_decode(monkeypatch)
    with pytest.raises(DecodeError) as err:
        prepare_image(path, SIZE, max_pixels=SRC * SRC - 1)
    assert err.value.reason == "too_large"


def test_a_plain_jpeg_is_limited_at_its_draft_size(tmp_path):
    """A JPEG file's DCT scaling decodes no more than its draft: the limit counts those pixels."""
    path = tmp_path / "a.jpg"
    Image.fromarray(radiograph(bits=8)).save(path, quality=95)
    drafted = (SRC // 4) ** 2
    assert decode_image(path, draft_size=SIZE, max_pixels=drafted)[0].shape == (SRC // 4,) * 2
    with pytest.raises(DecodeError) as err:
        decode_image(path, draft_size=SIZE, max_pixels=drafted - 1)
    assert err.value.reason == "too_large"


def test_a_jp2_box_of_length_0_is_refused_before_the_reduced_decode(tmp_path, monkeypatch):
    path = j2k_dicom(tmp_path / "j.dcm", radiograph())
    ds = pydicom.dcmread(path)
    codestream = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    jp2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x00ftyp" + codestream
    ds.PixelData = pydicom.encaps.encapsulate([jp2])
    ds.save_as(path, enforce_file_format=True)
    _no_reduced_decode(monkeypatch)
    with pytest.raises(DecodeError) as err:
        prepare_image(path, SIZE)
    assert err.value.reason == "decode_failed" and "JP2 box of length 0" in err.value.detail


def test_a_codestream_larger_than_its_header_is_not_reduced(tmp_path):
    """Rows x Columns passed the limit: a codestream claiming more is left to the full decode."""
    path = j2k_dicom(tmp_path / "j.dcm", radiograph())
    ds = pydicom.dcmread(path)
    frame = bytearray(pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1))
    assert reduced_pixels(ds, SIZE) is not None
    frame[8:16] = (8 * SRC).to_bytes(4, "big") * 2  # Xsiz, Ysiz
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    assert reduced_pixels(ds, SIZE) is None


# ---------------------------------------------------------------------------------------------
# real radiographs


@pytest.mark.slow  # decodes 39 real files twice, up to 4,300 px
def test_real_jpegs_and_dicom_within_tolerance(real_cxr):
    images = sorted((real_cxr / "pa_lateral_pairs" / "images").glob("*.jp*g"))
    dicoms = sorted((real_cxr / "dicom").glob("*.dcm"))
    checked = 0
    for path in [*images, *dicoms]:
        with path.open("rb") as fh:
            if fh.read(3) != b"\xff\xd8\xff" and path.suffix != ".dcm":
                continue  # a PNG named .jpg: no reduced decode
        mean, p99, factor = diff(path, 128)
        assert mean <= TOLERANCE_MEAN, (path.name, mean, p99)
        checked += factor > 1
    assert checked >= 10  # most are well over 192 px
