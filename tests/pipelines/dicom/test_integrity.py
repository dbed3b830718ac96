"""Pixel Data integrity without decoding: cut files, fragments, JPEG / RLE headers, deflate.

The checks run through the folder reader (:func:`pipelines.sources.dicom.read`), as ingest runs
them; DICOMs are written with the builders of ``tests/pipelines/sources/test_dicom.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGExtended12Bit,
    RLELossless,
)

import pipelines.dicom.policy as policy
import pipelines.sources.dicom as dicom_mod
from pipelines.sources.dicom import read
from tests.pipelines.sources.test_dicom import (
    SALT,
    jpeg_bytes,
    jpeg_ds,
    make_ds,
    opts,
    pixels,
    reasons,
    write,
)


def test_every_prefix_of_a_valid_file_is_rejected(tmp_path: Path) -> None:
    full = write(make_ds("1.2.3.200", seed=9), tmp_path / "src" / "full.dcm").read_bytes()
    target = tmp_path / "in"
    target.mkdir()
    seen = set()
    pixel_start = len(full) - 512  # 16x16x2 bytes of Pixel Data end the file
    cuts = [*range(pixel_start + 16), *range(pixel_start + 16, len(full), 7), len(full) - 1]
    for n in cuts:
        (target / "f").write_bytes(full[:n])
        outcome = dicom_mod._inspect_file(target, "f", SALT)
        assert outcome.row is None, f"a {n}-byte prefix of a {len(full)}-byte file was accepted"
        seen.add(outcome.reason)
    assert {"empty_file", "not_dicom", "truncated"} <= seen
    assert seen <= {"empty_file", "not_dicom", "truncated", "no_pixel_data"}
    (target / "f").write_bytes(full)
    assert dicom_mod._inspect_file(target, "f", SALT).row is not None


def test_encapsulated_jpeg_accepted_and_cut_fragments_rejected(tmp_path: Path) -> None:
    stream = jpeg_bytes()
    good = write(jpeg_ds(stream, "1.2.3.300"), tmp_path / "good.dcm")
    whole = good.read_bytes()
    (tmp_path / "cut_file.dcm").write_bytes(whole[: len(whole) - 40])
    write(jpeg_ds(stream[:-30] + b"\0\0", "1.2.3.301"), tmp_path / "cut_stream.dcm")  # no EOI
    no_delim = whole[: whole.rindex(b"\xfe\xff\xdd\xe0")]  # drop the sequence delimiter
    (tmp_path / "no_delim.dcm").write_bytes(no_delim)
    empty = jpeg_ds(stream, "1.2.3.302")
    item = b"\xfe\xff\x00\xe0" + bytes(4)  # an empty item: offset table, then no fragment
    empty.PixelData = item + item
    write(empty, tmp_path / "no_fragment.dcm")

    result = read(tmp_path, opts())

    assert list(result.manifest["path"]) == ["good.dcm"]
    row = result.manifest.iloc[0]
    assert (row["bits"], row["width"], row["photometric"]) == (8, 16, "MONOCHROME2")
    assert pydicom.dcmread(good).pixel_array.shape == (16, 16)  # really decodable
    assert reasons(result) == {
        "cut_file.dcm": "truncated",
        "cut_stream.dcm": "truncated",
        "no_delim.dcm": "truncated",
        "no_fragment.dcm": "no_pixel_data",
    }
    details = {r.path: r.detail for r in result.rejected}
    assert "FFD9" in details["cut_stream.dcm"]


def _from_testdata(name: str, sop: str) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "CR", "PA", "CHEST"
    ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID = "P9", "1.2.3.9", sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    return ds


def test_jpeg_extended_12_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """12-bit JPEG Extended decodes with pylibjpeg (JPGExtended.dcm); JPEG-lossy.dcm never does.

    JPEG-lossy.dcm fails with every decoder: its scan header has spectral selection 0..0,
    invalid for sequential DCT; the same stream with 0..63 (JPGExtended.dcm) decodes, so the
    reader rejects the broken header (``corrupt``), not the syntax.
    """
    write(_from_testdata("JPGExtended.dcm", "1.2.3.401"), tmp_path / "ext12.dcm")
    write(_from_testdata("JPEG-lossy.dcm", "1.2.3.402"), tmp_path / "lossy_bad.dcm")

    result = read(tmp_path, opts())

    assert list(result.manifest["path"]) == ["ext12.dcm"]
    assert result.manifest.iloc[0]["bits"] == 12
    assert pydicom.dcmread(tmp_path / "ext12.dcm").pixel_array.shape == (1024, 256)
    with pytest.raises(Exception):  # noqa: B017 - every plugin fails, in its own way
        _ = pydicom.dcmread(tmp_path / "lossy_bad.dcm").pixel_array
    assert reasons(result) == {"lossy_bad.dcm": "corrupt"}
    assert "spectral selection 0..0" in result.rejected[0].detail

    # Without pylibjpeg (Pillow only) 12-bit JPEG Extended is unsupported, naming the syntax
    policy.decoder_plugins.cache_clear()
    monkeypatch.setattr(policy, "decoder_plugins", lambda uid: ("pillow",))
    result = read(tmp_path, opts())
    rejected = {r.path: r for r in result.rejected}
    assert rejected["ext12.dcm"].reason == "unsupported_transfer_syntax"
    assert "JPEG Extended" in rejected["ext12.dcm"].detail and JPEGExtended12Bit in (
        rejected["ext12.dcm"].detail
    )


def test_other_syntaxes_rle_deflate_implicit(tmp_path: Path) -> None:
    rle = make_ds("1.2.3.501", seed=11)
    rle.compress(RLELossless)
    write(rle, tmp_path / "rle.dcm")
    write(make_ds("1.2.3.502", seed=12, syntax=DeflatedExplicitVRLittleEndian), tmp_path / "d")
    write(make_ds("1.2.3.503", seed=13, syntax=ImplicitVRLittleEndian), tmp_path / "i.dcm")
    short_dfl = make_ds("1.2.3.504", syntax=DeflatedExplicitVRLittleEndian, pixel_data=False)
    short_dfl.PixelData = b"\0" * 100
    write(short_dfl, tmp_path / "short_dfl.dcm")
    bad_rle = make_ds("1.2.3.505", seed=14)
    bad_rle.compress(RLELossless)
    frag = bytearray(pydicom.encaps.generate_fragments(bad_rle.PixelData).__next__())
    frag[4:8] = (10_000).to_bytes(4, "little")  # first segment offset beyond the fragment
    bad_rle.PixelData = encapsulate([bytes(frag)])
    write(bad_rle, tmp_path / "bad_rle.dcm")

    result = read(tmp_path, opts())

    assert sorted(result.manifest["path"]) == ["d", "i.dcm", "rle.dcm"]
    for rel, seed in (("rle.dcm", 11), ("d", 12), ("i.dcm", 13)):
        np.testing.assert_array_equal(pydicom.dcmread(tmp_path / rel).pixel_array, pixels(seed))
    assert reasons(result) == {"short_dfl.dcm": "truncated", "bad_rle.dcm": "truncated"}
