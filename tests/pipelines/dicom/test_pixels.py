"""DICOM pixels: modality / VOI LUT, windowing, inversion, codecs, real and synthetic files.

Decoded through :func:`pipelines.imaging.read_image` (the public entry: content sniffing, then
:func:`pipelines.dicom.pixels.read_dicom`); DICOMs are written with the builders of
``tests/pipelines/test_imaging.py``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from pipelines.dicom.pixels import read_dicom
from pipelines.errors import DecodeError
from pipelines.imaging import prepare_image, read_image, to_square
from tests.pipelines.test_imaging import PHI, REAL, phantom, write_dicom


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


def _voi_lut(top: int, bits: int, vr: str = "US") -> Dataset:
    """A linear VOI LUT over stored values 0..4095 whose largest entry is ``top``."""
    lut = np.round(top * np.arange(4096) / 4095).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, bits]
    item.add_new("LUTData", vr, lut.astype("<u2").tobytes() if vr == "OW" else lut.tolist())
    return item


@pytest.mark.parametrize(
    ("stated", "top", "depth"),
    [
        (16, 4095, 12),  # 12-bit entries in a 16-bit descriptor (common): the data decide
        (16, 1023, 10),
        (16, 16383, 14),
        (16, 200, 8),  # never under 8 bits (PS3.3 C.11.2.1.1: 8 to 16)
        (16, 65535, 16),  # the data fill the descriptor: kept
        (16, 40000, 16),
        (12, 4095, 12),
        (8, 255, 8),  # 4096 entries of 8 bits (pydicom's apply_voi wraps such indices)
        (10, 4095, 12),  # the descriptor under-states the entries: widened to them
    ],
)
def test_voi_lut_output_depth_comes_from_its_data(tmp_path, stated, top, depth):
    px = phantom(bits=12)
    lut = np.round(top * np.arange(4096) / 4095)
    path = write_dicom(tmp_path / "lut.dcm", px, VOILUTSequence=Sequence([_voi_lut(top, stated)]))
    img = read_image(path)
    np.testing.assert_allclose(img, lut[px] / (2**depth - 1), atol=1e-6)
    if top == 2**depth - 1:
        assert img.min() == 0.0 and img.max() == 1.0  # a full-range image


def test_over_stated_voi_lut_in_ow_and_monochrome1(tmp_path):
    """12-bit entries stated as 16 bits, as OW bytes, MONOCHROME1: full range, inverted."""
    px = phantom(bits=12)
    item = _voi_lut(4095, 16, vr="OW")
    m1 = write_dicom(
        tmp_path / "m1.dcm", (4095 - px).astype(np.uint16), "MONOCHROME1", VOILUTSequence=[item]
    )
    m2 = write_dicom(tmp_path / "m2.dcm", px, VOILUTSequence=Sequence([_voi_lut(4095, 16)]))
    np.testing.assert_allclose(read_image(m2), px / 4095.0, atol=1e-6)
    np.testing.assert_allclose(read_image(m1), read_image(m2), atol=1e-6)
    assert read_image(m1).max() == 1.0 and prepare_image(m1, 48).mean() > 64  # not 1/16 of it


def test_ow_voi_lut_in_a_big_endian_file(tmp_path):
    px = phantom(bits=12)
    path = write_dicom(tmp_path / "be.dcm", px)
    ds = pydicom.dcmread(path)
    item = _voi_lut(4095, 16, vr="OW")
    item.LUTData = np.frombuffer(item.LUTData, "<u2").astype(">u2").tobytes()
    ds.VOILUTSequence = Sequence([item])
    ds.PixelData = px.astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    np.testing.assert_allclose(read_image(path), px / 4095.0, atol=1e-6)


def test_a_voi_lut_shorter_than_its_descriptor_fails_to_decode(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "US", [0, 100, 200])
    path = write_dicom(tmp_path / "short.dcm", phantom(bits=12), VOILUTSequence=[item])
    with pytest.raises(DecodeError) as err:
        read_image(path)
    assert err.value.reason == "decode_failed" and "3 entries" in err.value.detail


def test_signed_pixels_use_signed_range(tmp_path):
    px = (phantom(bits=12).astype(np.int16) - 1000).astype(np.int16)
    img = read_image(write_dicom(tmp_path / "s.dcm", px, bits=16))
    np.testing.assert_allclose(img, (px.astype(np.float64) + 32768) / 65535, atol=1e-6)


def test_minmax_scaling_option(tmp_path):
    px = (phantom(bits=12) // 4 + 100).astype(np.uint16)  # occupies 100..1123 of 0..4095
    path = write_dicom(tmp_path / "mm.dcm", px)
    img = read_image(path, no_window="minmax")
    np.testing.assert_allclose(img, (px - 100.0) / 1023.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# PixelPaddingValue / PixelPaddingRangeLimit (PS3.3 C.7.5.1.1.2): the area outside the exposure


def padded(px: np.ndarray, value: int, border: int = 6, noise: int = 0) -> np.ndarray:
    """``px`` with a padding border of ``value`` (plus up to ``noise`` levels above it)."""
    out = px.copy()
    ring = np.ones(px.shape, dtype=bool)
    ring[border:-border, border:-border] = False
    levels = np.random.default_rng(0).integers(0, noise + 1, size=px.shape)
    out[ring] = (value + levels[ring]).astype(px.dtype)
    return out


def inside(img: np.ndarray, border: int = 6) -> np.ndarray:
    return img[border:-border, border:-border]


def own_range(values: np.ndarray) -> np.ndarray:
    """``values`` scaled by their own min / max (what ``minmax`` does), float64."""
    values = values.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


def test_padding_renders_black_in_monochrome1(tmp_path):
    """Stored 0 is white in MONOCHROME1: padding of 0 must still display black."""
    px = (4095 - phantom(bits=12)).astype(np.uint16)
    path = write_dicom(tmp_path / "m1.dcm", padded(px, 0), "MONOCHROME1", PixelPaddingValue=0)
    img = read_image(path)
    assert (img[:6] == 0).all() and (img[:, -6:] == 0).all()
    np.testing.assert_allclose(inside(img), inside(1 - px / 4095.0), atol=1e-6)


def test_padding_is_not_windowed_and_renders_black(tmp_path):
    px = (phantom(bits=12) // 2 + 100).astype(np.uint16)  # body in 100..2147
    path = write_dicom(
        tmp_path / "w.dcm",
        padded(px, 4095),
        PixelPaddingValue=4095,
        WindowCenter=1100,
        WindowWidth=2000,
    )
    img = read_image(path)
    assert (img[:6] == 0).all()  # a window would show 4095 white
    np.testing.assert_allclose(
        inside(img), inside(window_linear(px.astype(np.float64), 1100, 2000)), atol=1e-6
    )


def test_padding_is_left_out_of_minmax_scaling(tmp_path):
    px = (phantom(bits=12) // 4 + 100).astype(np.uint16)  # body in 100..1123
    path = write_dicom(tmp_path / "mm.dcm", padded(px, 0), PixelPaddingValue=0)
    img = read_image(path, no_window="minmax")
    np.testing.assert_allclose(inside(img), own_range(inside(px)), atol=1e-6)
    assert (img[:6] == 0).all() and inside(img).max() == 1.0


def test_padding_range_either_order(tmp_path):
    """With PixelPaddingRangeLimit every stored value between the two (inclusive) is padding."""
    px = (phantom(bits=12) // 4 + 100).astype(np.uint16)  # body in 100..1123
    noisy = padded(px, 0, noise=60)  # background noise 0..60
    for value, limit in ((0, 60), (60, 0)):
        tags = dict(PixelPaddingValue=value, PixelPaddingRangeLimit=limit)
        path = write_dicom(tmp_path / f"r{value}.dcm", noisy, **tags)
        img = read_image(path, no_window="minmax")
        assert (img[:6] == 0).all()
        np.testing.assert_allclose(inside(img), own_range(inside(px)), atol=1e-6)
    # a limit without a padding value is no padding (PS3.3: the value is required with it)
    path = write_dicom(tmp_path / "lim.dcm", noisy, PixelPaddingRangeLimit=60)
    np.testing.assert_allclose(read_image(path, no_window="minmax"), own_range(noisy), atol=1e-6)


def test_padding_is_a_stored_value_before_the_modality_lut(tmp_path):
    px = (phantom(bits=12) // 2 + 100).astype(np.uint16)
    path = write_dicom(
        tmp_path / "r.dcm",
        padded(px, 0),
        PixelPaddingValue=0,  # stored 0, i.e. modality value -1000
        RescaleSlope=2,
        RescaleIntercept=-1000,
    )
    img = read_image(path, no_window="minmax")
    assert (img[:6] == 0).all()
    np.testing.assert_allclose(inside(img), own_range(inside(px) * 2.0 - 1000), atol=1e-6)
    # the "bits" scaling: modality range of the 12 stored bits, -1000 .. 7190
    img = read_image(path)
    assert (img[:6] == 0).all()
    np.testing.assert_allclose(inside(img), inside(px * 2.0) / 8190, atol=1e-6)


def test_signed_padding_and_a_wrong_unsigned_vr(tmp_path):
    px = (phantom(bits=12).astype(np.int16) - 1000).astype(np.int16)  # -1000..3095
    pad = padded(px, -2000)
    for name, value in (("ss", -2000), ("us", 65536 - 2000)):  # a writer's US for SS
        path = write_dicom(tmp_path / f"{name}.dcm", pad, bits=16, PixelPaddingValue=-2000)
        if name == "us":
            ds = pydicom.dcmread(path)
            ds.add_new(0x00280120, "US", value)
            ds.save_as(path)
        img = read_image(path, no_window="minmax")
        assert (img[:6] == 0).all(), name
        np.testing.assert_allclose(inside(img), own_range(inside(px)), atol=1e-6)


def test_padding_with_a_voi_lut_and_absent_padding_values(tmp_path):
    px = phantom(bits=12)
    lut = Sequence([_voi_lut(4095, 16)])
    path = write_dicom(
        tmp_path / "l.dcm", padded(px, 4095), VOILUTSequence=lut, PixelPaddingValue=4095
    )
    img = read_image(path)
    assert (img[:6] == 0).all()
    np.testing.assert_allclose(inside(img), inside(px / 4095.0), atol=1e-6)
    # a padding value no pixel holds changes nothing; all-padding is all black
    plain = write_dicom(tmp_path / "p.dcm", px)
    unused = write_dicom(tmp_path / "u.dcm", px, PixelPaddingValue=5000)
    np.testing.assert_array_equal(read_image(unused), read_image(plain))
    flat = write_dicom(tmp_path / "f.dcm", np.full_like(px, 7), PixelPaddingValue=7)
    assert (read_image(flat, no_window="minmax") == 0).all() and (read_image(flat) == 0).all()


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


def test_read_dicom_directly_and_a_bare_data_set(tmp_path: Path) -> None:
    px = phantom(bits=12)
    path = write_dicom(tmp_path / "a.dcm", px)
    np.testing.assert_array_equal(read_dicom(path), read_image(path))
    bare = Dataset()  # no file meta: the transfer syntax is the one it was read in
    bare.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    bare.set_pixel_data(px, "MONOCHROME2", 12)
    del bare.file_meta
    bare.save_as(tmp_path / "bare", implicit_vr=False, little_endian=True)
    np.testing.assert_allclose(read_dicom(tmp_path / "bare"), px / 4095.0, atol=1e-6)


def test_palette_colour_is_refused_before_decoding(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "p.dcm", phantom(bits=8))
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DecodeError) as err:
        read_dicom(path)
    assert err.value.reason == "unsupported_photometric" and "PALETTE COLOR" in err.value.detail
