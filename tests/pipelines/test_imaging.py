"""imaging: format sniffing, decode failures, PNG/JPEG, to_square (DICOM pixels: dicom/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipelines.errors import DecodeError
from pipelines.imaging import (
    REASONS,
    gray16_depth,
    prepare_image,
    prepare_many,
    read_image,
    sniff_format,
    to_square,
    try_prepare,
)

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "real-cxr"
PHI = ("Doe^Jane", "PHI-0042", "19700101", "ACC-99")


# ---------------------------------------------------------------------------------------------
# helpers (also used by test_preprocess and dicom/test_pixels)


def phantom(h: int = 72, w: int = 60, bits: int = 12) -> np.ndarray:
    """A chest-like test image: bright body, two dark lungs, a gradient, every value in range."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = h / 2, w / 2
    body = ((x - cx) / (0.48 * w)) ** 2 + ((y - cy) / (0.5 * h)) ** 2 < 1
    lung_l = ((x - 0.32 * w) / (0.12 * w)) ** 2 + ((y - 0.45 * h) / (0.28 * h)) ** 2 < 1
    lung_r = ((x - 0.68 * w) / (0.12 * w)) ** 2 + ((y - 0.45 * h) / (0.28 * h)) ** 2 < 1
    img = 0.05 + 0.7 * body - 0.45 * (lung_l | lung_r) + 0.2 * y / h
    img[0, 0], img[-1, -1] = 0.0, 1.0  # full range
    return np.round(np.clip(img, 0, 1) * (2**bits - 1)).astype(np.uint16 if bits > 8 else np.uint8)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits: int | None = None,
    **tags,
) -> Path:
    """A minimal CR DICOM with fake PHI in the header (which must never leak)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.Modality = "CR"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber = PHI
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    bits = bits or (8 if pixels.dtype.itemsize == 1 else 12)
    ds.set_pixel_data(pixels, photometric, bits)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------------
# sniffing


def test_sniff_by_content_not_name(tmp_path):
    png_named_jpg = tmp_path / "x.jpg"
    Image.fromarray(phantom(bits=8)).save(png_named_jpg, format="PNG")
    jpeg_named_png = tmp_path / "y.png"
    Image.fromarray(phantom(bits=8)).save(jpeg_named_png, format="JPEG")
    dcm_named_png = write_dicom(tmp_path / "z.png", phantom())
    text = tmp_path / "t.dcm"
    text.write_text("not an image at all")
    assert sniff_format(png_named_jpg) == "png"
    assert sniff_format(jpeg_named_png) == "jpeg"
    assert sniff_format(dcm_named_png) == "dicom"
    assert sniff_format(text) == "unknown"
    bare = Dataset()  # no preamble, no file meta: still DICOM, and it decodes
    bare.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    bare.set_pixel_data(phantom(bits=8), "MONOCHROME2", 8)
    del bare.file_meta
    bare.save_as(tmp_path / "bare", implicit_vr=True, little_endian=True)
    assert sniff_format(tmp_path / "bare") == "dicom"
    np.testing.assert_allclose(read_image(tmp_path / "bare"), phantom(bits=8) / 255, atol=1e-6)


def test_failures_have_specific_reasons_and_no_phi(tmp_path):
    px = phantom(bits=12)
    good = write_dicom(tmp_path / "good.dcm", px)
    raw = good.read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(raw[: len(raw) - 500])
    write_dicom(tmp_path / "multi.dcm", np.stack([px, px]))
    nopix = Dataset()
    nopix.file_meta = FileMetaDataset()
    nopix.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # basic SR
    nopix.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    nopix.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    nopix.SOPClassUID = nopix.file_meta.MediaStorageSOPClassUID
    nopix.SOPInstanceUID = nopix.file_meta.MediaStorageSOPInstanceUID
    nopix.PatientName, nopix.PatientID, nopix.PatientBirthDate, nopix.AccessionNumber = PHI
    nopix.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    (tmp_path / "text.png").write_text("hello")
    png = tmp_path / "p.png"
    Image.fromarray(phantom(bits=8)).save(png)
    (tmp_path / "trunc.png").write_bytes(png.read_bytes()[:200])
    cases = {
        "trunc.dcm": "truncated",
        "multi.dcm": "multi_frame",
        "sr.dcm": "no_pixel_data",
        "text.png": "not_an_image",
        "trunc.png": "truncated",
        "missing.dcm": "missing_file",
    }
    for name, reason in cases.items():
        with pytest.raises(DecodeError) as err:
            read_image(tmp_path / name)
        assert err.value.reason == reason, (name, err.value)
        assert reason in REASONS
        assert err.value.path.endswith(name)
        assert not any(p in str(err.value) for p in PHI)
        # try_prepare returns the same error instead of raising
        arr, e = try_prepare(tmp_path / name, 16)
        assert arr is None and e is not None and e.reason == reason


def test_decode_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(DecodeError("a/b.dcm", "truncated", "short")))
    assert (e.path, e.reason, e.detail) == ("a/b.dcm", "truncated", "short")


# ---------------------------------------------------------------------------------------------
# PNG / JPEG


def test_png_modes(tmp_path):
    px8 = phantom(bits=8)
    px16 = phantom(bits=16)
    Image.fromarray(px8).save(tmp_path / "l.png")
    Image.fromarray(px16).save(tmp_path / "i16.png")
    np.testing.assert_allclose(read_image(tmp_path / "l.png"), px8 / 255, atol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "i16.png"), px16 / 65535, atol=1e-6)

    rgb = np.stack([px8, px8 // 2, np.full_like(px8, 200)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), luma, atol=1e-5)

    alpha = np.full_like(px8, 255)
    alpha[:, :10] = 0  # transparent strip -> black
    alpha[:, 10:20] = 128  # half -> half brightness
    Image.fromarray(np.dstack([px8, px8, px8, alpha])).save(tmp_path / "rgba.png")
    img = read_image(tmp_path / "rgba.png")
    assert (img[:, :10] == 0).all()
    np.testing.assert_allclose(img[:, 10:20], px8[:, 10:20] / 255 * 128 / 255, atol=1e-5)
    np.testing.assert_allclose(img[:, 20:], px8[:, 20:] / 255, atol=1e-5)

    Image.fromarray(np.dstack([px8, alpha])).save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png"), img, atol=1e-5)


def test_16_bit_png_scaled_by_its_real_depth(tmp_path):
    px12 = phantom(bits=12)  # 12-bit values in a 16-bit PNG, as PadChest's
    Image.fromarray(px12).save(tmp_path / "p12.png")
    with Image.open(tmp_path / "p12.png") as im:
        assert im.mode.startswith("I;16")
    full = px12 / 4095
    for bits in (None, 0, 12, 16):  # detected, or the hint
        img = read_image(tmp_path / "p12.png", bits=bits)
        np.testing.assert_allclose(img, full, atol=1e-6, err_msg=str(bits))
        assert img.max() == 1.0
    np.testing.assert_allclose(read_image(tmp_path / "p12.png", bits=10), full, atol=1e-6)
    sq = prepare_image(tmp_path / "p12.png", 32)
    assert sq.max() > 200  # not about 255 / 16 as by 65535

    dark = (px12 // 4).astype(np.uint16)  # a 12-bit image whose maximum is 1023
    Image.fromarray(dark).save(tmp_path / "dark12.png")
    np.testing.assert_allclose(read_image(tmp_path / "dark12.png"), dark / 1023, atol=1e-6)
    hinted = read_image(tmp_path / "dark12.png", bits=12)  # the hint keeps its scale
    np.testing.assert_allclose(hinted, dark / 4095, atol=1e-6)
    np.testing.assert_allclose(
        prepare_image(tmp_path / "dark12.png", 32, bits=12),
        to_square(hinted, 32),
    )

    px16 = phantom(bits=16)  # a true 16-bit image: unchanged
    Image.fromarray(px16).save(tmp_path / "p16.png")
    for bits in (None, 12, 16):
        np.testing.assert_allclose(
            read_image(tmp_path / "p16.png", bits=bits), px16 / 65535, atol=1e-6
        )

    px8 = phantom(bits=8)  # 8-bit: the hint does not apply
    Image.fromarray(px8).save(tmp_path / "p8.png")
    for bits in (None, 12, 16):
        np.testing.assert_allclose(read_image(tmp_path / "p8.png", bits=bits), px8 / 255, atol=1e-6)


def test_bits_pass_through_every_entry_point(tmp_path):
    dark = (phantom(bits=12) // 4).astype(np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark12.png")
    path = str(tmp_path / "dark12.png")
    want12 = prepare_image(path, 16, bits=12)
    detected = prepare_image(path, 16)
    assert detected.max() > 200 and want12.max() < 70  # scaled by 10 bits vs 12
    arr, err = try_prepare(path, 16, bits=12)
    assert err is None and np.array_equal(arr, want12)
    out = prepare_many([path, "", path], 16, bits=[12, None, None])
    assert np.array_equal(out[0][0], want12) and out[1] == (None, None)
    assert np.array_equal(out[2][0], detected)
    assert np.array_equal(prepare_many([path], 16)[0][0], detected)
    with pytest.raises(ValueError, match="1 bits for 2 paths"):
        prepare_many([path, path], 16, bits=[12])
    dcm = write_dicom(tmp_path / "d.dcm", phantom())
    np.testing.assert_array_equal(read_image(dcm, bits=8), read_image(dcm))  # DICOM: its header


def test_gray16_depth():
    assert gray16_depth(65535) == 16 and gray16_depth(16384) == 16
    assert gray16_depth(16383) == 14 and gray16_depth(4096) == 14
    assert gray16_depth(4095) == 12 and gray16_depth(1024) == 12
    assert gray16_depth(1023) == 10 and gray16_depth(0) == 10
    assert gray16_depth(4095, 12) == 12 and gray16_depth(100, 12) == 12
    assert gray16_depth(100, 8) == 8
    assert gray16_depth(5000, 12) == 14  # a maximum above the hint: the hint is wrong
    assert gray16_depth(100, 16) == 10 and gray16_depth(100, 0) == 10  # 16 / 0: unknown
    assert gray16_depth(70000) == 16


def test_jpeg_and_misnamed_files(tmp_path):
    px = phantom(bits=8)
    Image.fromarray(px).save(tmp_path / "g.dcm", format="JPEG", quality=95)  # JPEG named .dcm
    img = read_image(tmp_path / "g.dcm")
    assert img.shape == px.shape and np.abs(img - px / 255).mean() < 2 / 255
    Image.fromarray(px).save(tmp_path / "p.jpg", format="PNG")
    np.testing.assert_allclose(read_image(tmp_path / "p.jpg"), px / 255, atol=1e-6)


def test_jpeg_draft_keeps_enough_resolution(tmp_path):
    big = np.kron(phantom(bits=8), np.ones((16, 16), dtype=np.uint8))  # 1152 x 960
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=95)
    drafted = read_image(tmp_path / "big.jpg", draft_size=64)
    assert 96 <= max(drafted.shape) < 1152  # decoded smaller, but >= 1.5x the target
    full = prepare_image(tmp_path / "big.jpg", 64)
    direct = to_square(read_image(tmp_path / "big.jpg"), 64)
    assert np.abs(full.astype(int) - direct.astype(int)).mean() < 2


# ---------------------------------------------------------------------------------------------
# to_square


def test_to_square_pads_centred_and_keeps_aspect():
    img = np.ones((40, 80), dtype=np.float32)  # wide: fits the width, padded top and bottom
    sq = to_square(img, 64)
    assert sq.dtype == np.uint8 and sq.shape == (64, 64)
    assert (sq[:16] == 0).all() and (sq[48:] == 0).all() and (sq[16:48] == 255).all()
    tall = to_square(np.ones((80, 40), dtype=np.float32), 64)
    assert (tall[:, :16] == 0).all() and (tall[:, 16:48] == 255).all()


def test_to_square_antialiases():
    checker = (np.indices((256, 256)).sum(axis=0) % 2).astype(np.float32)  # 1-px checkerboard
    small = to_square(checker, 32)
    assert np.abs(small.astype(int) - 128).max() <= 2  # averaged to grey, no aliasing


def test_to_square_rejects_bad_input():
    with pytest.raises(ValueError):
        to_square(np.zeros((0, 5), dtype=np.float32), 8)
    with pytest.raises(ValueError):
        to_square(np.zeros((4, 4, 3), dtype=np.float32), 8)


# ---------------------------------------------------------------------------------------------
# real data (skipped when ../shared/real-cxr is absent)


@pytest.mark.slow
def test_real_pa_lateral_pairs_decode():
    folder = REAL / "pa_lateral_pairs" / "images"
    if not folder.is_dir():
        pytest.skip("real PA/lateral pairs not available")
    files = sorted(folder.iterdir())
    assert len(files) >= 58
    formats = {}
    for f in files:
        with Image.open(f) as im:
            mode, size = im.mode, im.size
        formats[f.name] = (sniff_format(f), mode)
        arr = prepare_image(f, 64)
        assert arr.shape == (64, 64) and arr.dtype == np.uint8
        assert arr.max() > 100, f.name  # not blank
        if mode == "RGBA" and max(size) < 1000:  # alpha composited onto black
            with Image.open(f) as im:
                alpha = np.asarray(im)[..., 3]
            img = read_image(f)
            assert img.shape == alpha.shape
            assert (img[alpha == 0] == 0).all()
    misnamed = [n for n, (fmt, _) in formats.items() if n.endswith(".jpg") and fmt == "png"]
    assert len(misnamed) == 10
    assert any(mode == "RGBA" for _, mode in formats.values())
