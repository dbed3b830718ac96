"""DICOM headers: quiet reading (no value-quoting warnings), text, integer, transfer syntax,
bounded reads (a length past the end of the file, a deflated data set inflating past a limit)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from pipelines.dicom.header import (
    CODE_STRING,
    HEADER_TAGS,
    UID_STRING,
    check_inflated_size,
    integer,
    open_dicom,
    quiet,
    read_header,
    shown,
    text,
    transfer_syntax,
)
from pipelines.dicom.reasons import CORRUPT, TOO_LARGE, Reject
from tests.pipelines.sources.test_dicom import make_ds, write

SECRET = "Zqxsecret^Value"


def _bad_file(tmp_path: Path) -> Path:
    """A header whose values pydicom finds invalid, and would quote in its warnings."""
    ds = make_ds("1.2.3.1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.add_new("PatientName", "PN", "A" * 70 + SECRET)  # too long a name component
        ds.add_new("BodyPartExamined", "CS", "1.5")
        ds.add_new("NumberOfFrames", "IS", "1.5")  # not an integer string
    return write(ds, tmp_path / "bad.dcm")


def _read_all(path: Path, tags: list[str]) -> list[object]:
    ds = read_header(path)
    return [ds.get(keyword) for keyword in tags]


def test_quiet_keeps_value_quoting_warnings_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _bad_file(tmp_path)
    tags = ["PatientName", "NumberOfFrames", "Rows"]
    with warnings.catch_warnings(record=True) as loud:
        warnings.simplefilter("always")
        _read_all(path, tags)  # values are converted (and checked) on access, outside quiet
    assert [w for w in loud if "1.5" in str(w.message)]  # pydicom does quote values
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        with quiet():
            values = _read_all(path, tags)
    assert str(values[0]).endswith(SECRET) and values[2] == 16
    assert seen == [] and SECRET not in caplog.text and "1.5" not in caplog.text
    assert logging.getLogger("pydicom").level == logging.ERROR


def test_read_header_stops_before_pixels(tmp_path: Path) -> None:
    ds = read_header(write(make_ds("1.2.3.6"), tmp_path / "a.dcm"))
    assert "PixelData" not in ds and "Rows" in ds


def test_read_header_of_some_tags_on_a_handle(tmp_path: Path) -> None:
    path = write(make_ds("1.2.3.2"), tmp_path / "a.dcm")
    with open(path, "rb") as fh:
        ds = read_header(fh, ["Rows", "Modality"])
        assert fh.read(4) == b"\xe0\x7f\x10\x00"  # the handle is at the Pixel Data element
    assert "Rows" in ds and "Modality" in ds and "PatientID" not in ds
    assert {"PatientID", "ViewPosition", "BodyPartExamined", "Rows"} <= set(HEADER_TAGS)


def test_text() -> None:
    ds = Dataset()
    ds.SeriesDescription = "  Chest PA  "
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    assert text(ds, "SeriesDescription") == "Chest PA"
    assert text(ds, "ImageType") == "ORIGINAL PRIMARY"
    assert text(ds, "PatientID") == ""


def test_integer_default_strict_or_lenient() -> None:
    ds = Dataset()
    ds.Rows = 16
    ds.add_new("Columns", "US", None)
    ds.add_new("NumberOfFrames", "IS", None)
    ds.add_new("SeriesNumber", "LO", "twelve")  # a wrong VR: the value is text
    assert integer(ds, "Rows") == 16
    assert integer(ds, "Columns") is None and integer(ds, "Columns", 1) == 1
    assert integer(ds, "BitsStored", 8) == 8  # absent
    assert integer(ds, "NumberOfFrames", 1) == 1  # empty
    with pytest.raises(Reject) as err:
        integer(ds, "SeriesNumber")
    assert (err.value.reason, err.value.detail) == (CORRUPT, "SeriesNumber is not an integer")
    assert integer(ds, "SeriesNumber", 0, strict=False) == 0


def test_transfer_syntax(tmp_path: Path) -> None:
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        path = write(make_ds("1.2.3.3", syntax=syntax), tmp_path / f"{syntax}.dcm")
        assert transfer_syntax(read_header(path)) == syntax
    compressed = make_ds("1.2.3.4")
    compressed.compress(RLELossless)
    assert transfer_syntax(read_header(write(compressed, tmp_path / "rle.dcm"))) == RLELossless
    bare = make_ds("1.2.3.5")
    del bare.file_meta
    bare.save_as(tmp_path / "bare", implicit_vr=False, little_endian=False)
    assert transfer_syntax(pydicom.dcmread(tmp_path / "bare", force=True)) == ExplicitVRBigEndian
    assert transfer_syntax(Dataset()) is None  # built in memory: unknown


def test_shown_echoes_only_safe_values() -> None:
    assert shown("CT", CODE_STRING) == "'CT'"
    assert shown(SECRET, CODE_STRING) == "an unrecognised value"
    assert shown("1.2.840.10008.1.2", UID_STRING) == "'1.2.840.10008.1.2'"
    assert shown("1.2.x", UID_STRING) == "an unrecognised value"


def test_dicom_file_reads_never_ask_for_more_than_is_left(tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "small.bin"
    path.write_bytes(b"x" * 1000)
    with open_dicom(path) as fh:
        fh.seek(990)
        tracemalloc.start()
        data = fh.read(4 * 1024**3)  # a length field of 4 GB
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert data == b"x" * 10 and peak < 1 << 20


def _with_meta(path: Path, syntax: str, meta_padding: int = 0) -> Path:
    """A chest image in ``syntax`` whose file meta holds ``meta_padding`` private bytes."""
    ds = make_ds(syntax=syntax)
    if meta_padding:
        ds.file_meta.add_new(0x00020100, "UI", "1.2.3")  # PrivateInformationCreatorUID
        ds.file_meta.add_new(0x00020102, "OB", b"\0" * meta_padding)  # PrivateInformation
    return write(ds, path)


def test_a_deflated_data_set_is_bounded_before_it_is_inflated(tmp_path: Path) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = _with_meta(tmp_path / "d.dcm", DeflatedExplicitVRLittleEndian)
    assert read_header(path, HEADER_TAGS).Modality == "DX"  # within the default limit
    with pytest.raises(Reject) as err:
        read_header(path, HEADER_TAGS, max_bytes=100)
    assert err.value.reason == TOO_LARGE and "inflates to more than 100 bytes" in err.value.detail
    with open_dicom(path) as fh:  # the handle is left where it was
        check_inflated_size(fh, 1 << 30)
        assert fh.tell() == 0


def test_a_meta_header_past_the_first_8_kb_is_parsed_to_tell(tmp_path: Path) -> None:
    from pipelines.dicom.header import _not_deflated

    plain = _with_meta(tmp_path / "p.dcm", ExplicitVRLittleEndian)
    long = _with_meta(tmp_path / "l.dcm", ExplicitVRLittleEndian, meta_padding=20_000)
    assert _not_deflated(plain.read_bytes()[:8192])  # the fast path: the meta is whole
    assert not _not_deflated(long.read_bytes()[:8192])  # cannot tell: pydicom parses it
    assert read_header(long, HEADER_TAGS, max_bytes=100).Modality == "DX"  # not deflated
