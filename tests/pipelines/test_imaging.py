"""imaging: format sniffing, DICOM pixel pipeline (LUTs, inversion, codecs), PNG/JPEG, to_square."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from pipelines.errors import DecodeError
from pipelines.imaging import (
    REASONS,
    prepare_image,
    read_image,
    sniff_format,
    to_square,
    try_prepare,
)

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "real-cxr"
PHI = ("Doe^Jane", "PHI-0042", "19700101", "ACC-99")


# ---------------------------------------------------------------------------------------------
# helpers (also used by test_preprocess)


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


def compressed(path: Path, pixels: np.ndarray, syntax: str, **kw) -> Path:
    write_dicom(path, pixels, **kw)
    ds = pydicom.dcmread(path)
    ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    return path


def window_linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, written out independently, output in [0, 1]."""
    c, w = center - 0.5, width - 1
    return np.clip((x - c) / w + 0.5, 0, 1)


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


# ---------------------------------------------------------------------------------------------
# DICOM pixel pipeline


def test_monochrome2_scaled_by_stored_bits(tmp_path):
    px = phantom(bits=12)
    img = read_image(write_dicom(tmp_path / "a.dcm", px))
    assert img.dtype == np.float32 and img.shape == px.shape
    np.testing.assert_allclose(img, px / 4095.0, atol=1e-6)


def test_monochrome1_equals_monochrome2(tmp_path):
    px = phantom(bits=12)
    m2 = write_dicom(tmp_path / "m2.dcm", px, "MONOCHROME2")
    m1 = write_dicom(tmp_path / "m1.dcm", (4095 - px).astype(np.uint16), "MONOCHROME1")
    np.testing.assert_allclose(read_image(m1), read_image(m2), atol=1e-6)
    a, b = prepare_image(m1, 48), prepare_image(m2, 48)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    # and the lungs (dark in the source) are dark, the body bright: not inverted twice
    assert int(a[20, 14]) + 80 < int(a[24, 24])


def test_window_is_applied_and_clips(tmp_path):
    px = phantom(bits=12)
    path = write_dicom(tmp_path / "w.dcm", px, WindowCenter=2000, WindowWidth=1000)
    img = read_image(path)
    expected = window_linear(px.astype(np.float64), 2000, 1000)
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert (img[px < 1500] == 0).all() and (img[px > 2500] == 1).all()
    assert 0.2 < img[(px > 1800) & (px < 2200)].mean() < 0.8


def test_window_after_rescale(tmp_path):
    px = phantom(bits=12)
    path = write_dicom(
        tmp_path / "r.dcm",
        px,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=3000,
        WindowWidth=4000,
    )
    expected = window_linear(px * 2.0 - 1000, 3000, 4000)
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


def test_voi_lut_sequence_is_applied_and_preferred(tmp_path):
    px = phantom(bits=12)
    lut = np.round(65535 * np.sqrt(np.arange(4096) / 4095)).astype(np.uint16)  # non-linear
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "US", lut.tolist())
    # a window is present too: the LUT must win (pydicom prefer_lut)
    path = write_dicom(
        tmp_path / "lut.dcm", px, VOILUTSequence=Sequence([item]), WindowCenter=10, WindowWidth=2
    )
    np.testing.assert_allclose(read_image(path), lut[px] / 65535.0, atol=1e-6)


def test_signed_pixels_use_signed_range(tmp_path):
    px = (phantom(bits=12).astype(np.int16) - 1000).astype(np.int16)
    img = read_image(write_dicom(tmp_path / "s.dcm", px, bits=16))
    np.testing.assert_allclose(img, (px.astype(np.float64) + 32768) / 65535, atol=1e-6)


def test_minmax_scaling_option(tmp_path):
    px = (phantom(bits=12) // 4 + 100).astype(np.uint16)  # occupies 100..1123 of 0..4095
    path = write_dicom(tmp_path / "mm.dcm", px)
    img = read_image(path, no_window="minmax")
    np.testing.assert_allclose(img, (px - 100.0) / 1023.0, atol=1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_lossless_codecs_decode_to_source_pixels(tmp_path, syntax):
    px = phantom(bits=12)
    path = compressed(tmp_path / "c.dcm", px, syntax)
    np.testing.assert_array_equal(read_image(path), (px / 4095.0).astype(np.float32))


def test_jpeg_baseline_dicom(tmp_path):
    px = phantom(bits=8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG", quality=95)
    ds = pydicom.dcmread(write_dicom(tmp_path / "j.dcm", px))
    ds.PixelData = pydicom.encaps.encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(tmp_path / "j.dcm", enforce_file_format=True)
    img = read_image(tmp_path / "j.dcm")
    reference = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
    assert np.abs(img - reference).max() <= 2 / 255  # decoders may round differently
    assert np.abs(img - px / 255).mean() < 2 / 255


def test_twelve_bit_lossy_jpeg_rejected_with_reason():
    path = pydicom.data.get_testdata_file("JPEG-lossy.dcm")
    if path is None:
        pytest.skip("pydicom test file JPEG-lossy.dcm not available")
    with pytest.raises(DecodeError) as err:
        read_image(path)
    assert err.value.reason == "unsupported_transfer_syntax"
    assert "12-bit lossy JPEG" in err.value.detail
    # a well-formed 12-bit lossy JPEG that the installed plugins decode is accepted
    ok = pydicom.data.get_testdata_file("JPGExtended.dcm")
    if ok is not None:
        img = read_image(ok)
        assert img.shape == (1024, 256) and 0 <= img.min() <= img.max() <= 1


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
    assert 128 <= max(drafted.shape) < 1152  # decoded smaller, but >= 2x the target
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


def test_real_siim_dicom():
    files = sorted((REAL / "dicom").glob("*.dcm")) if (REAL / "dicom").is_dir() else []
    if not files:
        pytest.skip("real SIIM DICOM not available")
    ds = pydicom.dcmread(files[0])
    img = read_image(files[0])  # 8-bit JPEG baseline, MONOCHROME2, no window
    assert img.shape == (1024, 1024)
    np.testing.assert_allclose(img, ds.pixel_array / 255.0, atol=1e-6)
    prepared = prepare_image(files[0], 64)
    assert prepared.shape == (64, 64) and 60 < prepared.mean() < 200


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


# ---------------------------------------------------------------------------------------------
# the project's synthetic DICOM generator (pipelines.synthetic) round-trips through the decoder


@pytest.mark.parametrize(
    "variant",
    [
        {"photometric": "MONOCHROME2", "bits_stored": 12},
        {"photometric": "MONOCHROME1", "bits_stored": 12},
        {"photometric": "MONOCHROME1", "bits_stored": 14, "voi_lut_sequence": True},
        {"photometric": "MONOCHROME2", "bits_stored": 12, "rescale": (2.0, -1000.0)},
        {"photometric": "MONOCHROME1", "bits_stored": 16, "value_range": (0.1, 0.8)},
    ],
)
def test_synthetic_chest_decodes_to_its_display_image(tmp_path, variant):
    syn = pytest.importorskip("pipelines.synthetic")
    if not hasattr(syn, "write_dicom"):
        pytest.skip("pipelines.synthetic.write_dicom not available")
    anatomy = syn.sample_anatomy(np.random.default_rng(0))
    img01 = syn.render_view(np.random.default_rng(1), 64, "PA", frozenset({"Effusion"}), anatomy)
    uids = {k: generate_uid() for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    path = tmp_path / "syn.dcm"
    phi = {"PatientName": PHI[0], "PatientID": PHI[1]}
    syn.write_dicom(path, img01, view_position="PA", modality="DX", uids=uids, phi=phi, **variant)
    lo, hi = variant.get("value_range", (0.0, 1.0))
    step = 1.0 / ((2 ** variant["bits_stored"] - 1) * (hi - lo))  # one stored level
    np.testing.assert_allclose(read_image(path), img01, atol=step + 1e-5)
    reference = to_square(img01, 48)
    assert np.abs(prepare_image(path, 48).astype(int) - reference.astype(int)).max() <= 1
