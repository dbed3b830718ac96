"""DICOM folder reader: views, every rejection reason, labels, real data, PHI, parallel parity.

All DICOMs are written here with pydicom 3 (16x16 images); the real SIIM CR file is read from
``../shared/real-cxr`` when present.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from pipelines.errors import SourceError
from pipelines.io import rejected_frame
from pipelines.keys import make_key
from pipelines.labels import FINDINGS
from pipelines.schema import MANIFEST_COLUMNS
from pipelines.sources import ReadOptions, get_reader
from pipelines.sources.dicom import read, read_study_labels

SALT = b"unit-test-salt"
DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def pixels(seed: int = 0, rows: int = 16, cols: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=(rows, cols), dtype=np.uint16)


def make_ds(
    sop: str | None = None,
    *,
    patient: str | None = "PAT-1",
    study: str | None = "1.2.826.0.1.3680043.8.498.1",
    view_position: str | None = "PA",
    modality: str | None = "DX",
    seed: int = 0,
    syntax: str = ExplicitVRLittleEndian,
    pixel_data: bool = True,
    **extra: object,
) -> Dataset:
    """A minimal 16x16, 16-bit (12 stored) MONOCHROME2 chest DX image."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = DX_CLASS
    ds.SOPClassUID = DX_CLASS
    ds.SOPInstanceUID = sop or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    if patient is not None:
        ds.PatientID = patient
    if study is not None:
        ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.BodyPartExamined = "CHEST"
    if view_position is not None:
        ds.ViewPosition = view_position
    ds.Rows, ds.Columns = 16, 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    if pixel_data:
        ds.PixelData = pixels(seed).tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def jpeg_bytes(seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(16, 16), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def jpeg_ds(stream: bytes, sop: str | None = None) -> Dataset:
    ds = make_ds(sop, syntax=JPEGBaseline8Bit, pixel_data=False)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    return ds


def opts(**kwargs: object) -> ReadOptions:
    return ReadOptions(workers=1, salt=SALT, **kwargs)


def by_path(result) -> dict[str, dict]:
    return {row["path"]: row for row in result.manifest.to_dict("records")}


def reasons(result) -> dict[str, str]:
    return {r.path: r.reason for r in result.rejected}


# --- views ------------------------------------------------------------------------------------


def test_folder_of_views_nested_any_names(tmp_path: Path) -> None:
    write(make_ds(seed=1), tmp_path / "p1" / "s1" / "frontal.dcm")
    write(make_ds(view_position="LL", seed=2), tmp_path / "p1" / "s1" / "IMG0002")  # no .dcm
    coded = make_ds(view_position=None, seed=3)
    coded.ViewCodeSequence = Sequence([code_item("399173006", "SCT", "left lateral")])
    write(coded, tmp_path / "p2" / "deep" / "deeper" / "coded.DCM")
    described = make_ds(view_position=None, seed=4, SeriesDescription="Chest AP portable")
    write(described, tmp_path / "p3" / "x")

    result = read(tmp_path, opts())

    assert result.n_inputs == 4 and result.rejected == []
    assert result.data_root == str(tmp_path)
    assert list(result.manifest.columns) == list(MANIFEST_COLUMNS)
    assert list(result.manifest["path"]) == sorted(result.manifest["path"])
    rows = by_path(result)
    expected = {
        "p1/s1/frontal.dcm": ("PA", "PA"),
        "p1/s1/IMG0002": ("LATERAL", "LL"),
        "p2/deep/deeper/coded.DCM": ("LATERAL", "left lateral"),
        "p3/x": ("AP", "AP"),
    }
    assert {p: (r["view"], r["view_raw"]) for p, r in rows.items()} == expected
    seeds = dict(zip(expected, (1, 2, 3, 4), strict=True))
    for path, row in rows.items():
        assert (row["width"], row["height"], row["bits"]) == (16, 16, 12)
        assert row["photometric"] == "MONOCHROME2" and row["source"] == "dicom"
        assert all(np.isnan(row[f]) for f in FINDINGS)  # no labels given
        # accepted means decodable: the pixels round-trip
        np.testing.assert_array_equal(
            pydicom.dcmread(tmp_path / path).pixel_array, pixels(seeds[path])
        )
    one = pydicom.dcmread(tmp_path / "p1/s1/frontal.dcm")
    row = rows["p1/s1/frontal.dcm"]
    assert row["image_id"] == make_key("image", f"dicom:{one.SOPInstanceUID}", SALT)
    assert row["patient_key"] == make_key("patient", "dicom:PAT-1", SALT)
    assert row["study_key"] == make_key("study", f"dicom:{one.StudyInstanceUID}", SALT)


# --- rejections -------------------------------------------------------------------------------


def _write_bad_folder(root: Path) -> dict[str, str]:
    """One file per rejection reason; returns {path: expected reason}."""
    expected: dict[str, str] = {}

    def put(rel: str, reason: str, ds: Dataset | None = None, raw: bytes | None = None) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if ds is not None:
            write(ds, path)
        else:
            path.write_bytes(raw or b"")
        expected[rel] = reason
        return path

    put("ok/good.dcm", "", make_ds("1.2.3.100", seed=5))
    put("bad/text.dcm", "not_dicom", raw=b"PatientName,Study\nnot a dicom file at all\n" * 5)
    put("bad/empty.dcm", "empty_file", raw=b"")
    cut = put("bad/truncated.dcm", "truncated", make_ds("1.2.3.101"))
    cut.write_bytes(cut.read_bytes()[:-100])
    short = make_ds("1.2.3.102", pixel_data=False)
    short.PixelData = b"\0" * 64  # declared and present, but 16x16x2 needs 512
    put("bad/short_pixels.dcm", "truncated", short)
    put("bad/no_pixels.dcm", "no_pixel_data", make_ds("1.2.3.103", pixel_data=False))
    put("bad/ct.dcm", "unsupported_modality", make_ds("1.2.3.104", modality="CT"))
    put("bad/mr", "unsupported_modality", make_ds("1.2.3.105", modality="MR"))
    put("bad/skull.dcm", "not_chest", make_ds("1.2.3.106", BodyPartExamined="SKULL"))
    raw = make_ds("1.2.3.115", PresentationIntentType="FOR PROCESSING")
    put("bad/for_processing.dcm", "for_processing", raw)
    put("bad/noview.dcm", "no_view", make_ds("1.2.3.107", view_position=None))
    # the study's description names the study's views, not this image's
    study_text = make_ds("1.2.3.114", view_position=None, StudyDescription="CHEST PA")
    put("bad/study_text.dcm", "no_view", study_text)
    multi = make_ds("1.2.3.108", pixel_data=False, NumberOfFrames=2)
    multi.PixelData = np.concatenate([pixels(1), pixels(2)]).tobytes()
    put("bad/multi.dcm", "multi_frame", multi)
    mpeg = make_ds("1.2.3.109", syntax=MPEG2MPML, pixel_data=False)
    mpeg.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\0" * 60])
    mpeg["PixelData"].VR = "OB"
    put("bad/mpeg.dcm", "unsupported_transfer_syntax", mpeg)
    put("bad/nopid.dcm", "no_patient_id", make_ds("1.2.3.110", patient=None))
    put("bad/emptypid.dcm", "no_patient_id", make_ds("1.2.3.111", patient=""))
    put("bad/nostudy.dcm", "no_study_uid", make_ds("1.2.3.112", study=None))
    put("dup/a.dcm", "", make_ds("1.2.3.113", seed=6))  # kept: first by sorted path
    put("dup/b.dcm", "duplicate_image_id", make_ds("1.2.3.113", seed=7))
    return expected


def test_each_bad_case_gives_its_reason(tmp_path: Path) -> None:
    expected = _write_bad_folder(tmp_path)
    result = read(tmp_path, opts())

    assert result.n_inputs == len(expected) == len(result.manifest) + len(result.rejected)
    assert set(result.manifest["path"]) == {p for p, r in expected.items() if not r}
    assert reasons(result) == {p: r for p, r in expected.items() if r}
    details = {r.path: r.detail for r in result.rejected}
    assert "'CT'" in details["bad/ct.dcm"] and "'MR'" in details["bad/mr"]
    assert "SKULL" in details["bad/skull.dcm"]
    assert "FOR PROCESSING" in details["bad/for_processing.dcm"]
    assert "MPEG2" in details["bad/mpeg.dcm"]
    assert "2 frames" in details["bad/multi.dcm"]
    assert (
        "64 bytes" in details["bad/short_pixels.dcm"] and "512" in details["bad/short_pixels.dcm"]
    )
    assert "100 bytes" in details["bad/truncated.dcm"]
    assert "dup/a.dcm" in details["dup/b.dcm"]
    assert all(r.source == "dicom" and r.detail for r in result.rejected)
    assert [r.path for r in result.rejected] == sorted(r.path for r in result.rejected)


# --- folder walk ------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_loops_are_walked_once(tmp_path: Path) -> None:
    write(make_ds("1.2.3.700"), tmp_path / "a" / "one.dcm")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "up").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "broken").symlink_to(tmp_path / "missing")
    (tmp_path / "self.dcm").symlink_to(tmp_path / "self.dcm")  # a file link that loops
    result = read(tmp_path, opts())
    assert list(result.manifest["path"]) == ["a/one.dcm"]
    # links that lead nowhere are inputs, rejected unopened: nothing is skipped silently
    assert result.n_inputs == 3 and reasons(result) == {
        "broken": "broken_link",
        "self.dcm": "broken_link",
    }
    details = {r.path: r.detail for r in result.rejected}
    assert "points to nothing" in details["broken"] and "loops" in details["self.dcm"]
    assert str(tmp_path) not in details["broken"]  # the link's target is not quoted


def test_unlistable_folder_is_a_rejection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(make_ds("1.2.3.710"), tmp_path / "ok" / "one.dcm")
    (tmp_path / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path):  # os.walk lists folders with os.scandir
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = read(tmp_path, opts())
    assert result.n_inputs == 2 and len(result.manifest) == 1
    assert reasons(result) == {"locked/": "unreadable"}


def test_missing_or_file_input_raises(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        read(tmp_path / "nope", opts())
    f = tmp_path / "f.dcm"
    f.write_bytes(b"x")
    with pytest.raises(SourceError, match="folder"):
        read(f, opts())


def test_get_reader_and_empty_folder(tmp_path: Path) -> None:
    result = get_reader("dicom")(tmp_path, opts())
    assert result.n_inputs == 0 and result.rejected == [] and result.manifest.empty
    assert list(result.manifest.columns) == list(MANIFEST_COLUMNS)


# --- labels -----------------------------------------------------------------------------------


def _labels_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("policy", "uncertain_value"), [("ignore", np.nan), ("ones", 1.0), ("zeros", 0.0)]
)
def test_labels_joined_with_uncertain_policy(
    tmp_path: Path, policy: str, uncertain_value: float
) -> None:
    data = tmp_path / "data"
    write(make_ds("1.2.3.801", study="1.2.9.1", seed=1), data / "s1" / "pa.dcm")
    write(make_ds("1.2.3.802", study="1.2.9.1", view_position="LL"), data / "s1" / "ll.dcm")
    write(make_ds("1.2.3.803", study="1.2.9.2"), data / "s2" / "pa.dcm")
    write(make_ds("1.2.3.804", study="1.2.9.3"), data / "s3" / "pa.dcm")  # no labels row
    rows = [
        {
            "study_uid": "1.2.9.1",
            "Atelectasis": "1",
            "Cardiomegaly": "0",
            "Effusion": "-1",
            "Edema": "",
            "Support Devices": "1",
        },
        {
            "study_uid": "1.2.9.2",
            "Atelectasis": "0.0",
            "Cardiomegaly": "1.0",
            "Effusion": "",
            "Edema": "-1.0",
            "Support Devices": "0",
        },
        {
            "study_uid": "1.2.9.99",
            "Atelectasis": "1",
            "Cardiomegaly": "1",
            "Effusion": "1",
            "Edema": "1",
            "Support Devices": "1",
        },
    ]
    labels = _labels_csv(data / "labels.csv", rows)  # inside the input folder: not an input

    result = read(data, opts(labels=labels, uncertain=policy))

    assert result.n_inputs == 4 and result.rejected == []
    m = result.manifest.set_index("path")
    assert m[list(FINDINGS)].dtypes.eq("float32").all()
    u = uncertain_value
    want = {
        "s1/pa.dcm": {"Atelectasis": 1.0, "Cardiomegaly": 0.0, "Effusion": u, "Edema": np.nan},
        "s1/ll.dcm": {"Atelectasis": 1.0, "Cardiomegaly": 0.0, "Effusion": u, "Edema": np.nan},
        "s2/pa.dcm": {"Atelectasis": 0.0, "Cardiomegaly": 1.0, "Effusion": np.nan, "Edema": u},
    }
    for path, values in want.items():
        got = m.loc[path, list(values)].to_numpy(dtype=float)
        np.testing.assert_array_equal(got, np.array(list(values.values()), dtype=float))
        others = [f for f in FINDINGS if f not in values]
        assert m.loc[path, others].isna().all()
    assert m.loc["s3/pa.dcm", list(FINDINGS)].isna().all()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("study_uid,Atelectasis\n1.2.9.1,1\n1.2.9.2,yes\n", r"line 3, column 'Atelectasis'.*'yes'"),
        ("study_uid,Atelectasis\n1.2.9.1,2\n", r"line 2, column 'Atelectasis'.*'2'"),
        ("uid,Atelectasis\n1.2.9.1,1\n", "study_uid"),
        ("study_uid,Foo\n1.2.9.1,1\n", "no finding column"),
        ("study_uid,Atelectasis\n,1\n", "line 2: study_uid is blank"),
        ("study_uid,Atelectasis\n1.2.9.1,1\n1.2.9.1,0\n", "lines 2, 3 give different labels"),
        ("", "not a readable CSV"),
    ],
)
def test_bad_labels_csv_is_a_clear_error(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(SourceError, match=match) as info:
        read_study_labels(path, "ignore")
    assert str(path) in str(info.value)
    assert "1.2.9.1" not in str(info.value)  # study UIDs stay out of messages
    with pytest.raises(SourceError):
        read(tmp_path, opts(labels=path))


def test_unused_labels_csv_in_folder_is_an_input_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(make_ds("1.2.3.850"), tmp_path / "dicom" / "a.dcm")
    (tmp_path / "labels.csv").write_text("study_uid,Atelectasis\n1.2.9.1,1\n")
    with caplog.at_level(logging.WARNING):
        result = read(tmp_path, opts())
    assert reasons(result) == {"labels.csv": "not_dicom"} and len(result.manifest) == 1
    assert "labels.csv found" in caplog.text


def test_identical_duplicate_label_rows_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("study_uid,Atelectasis,Hernia\n1.2.9.1,1,\n1.2.9.1,1,\n")
    labels = read_study_labels(path, "ignore")
    assert len(labels) == 1 and labels.loc["1.2.9.1", "Atelectasis"] == 1.0
    assert np.isnan(labels.loc["1.2.9.1", "Hernia"])


# --- real data --------------------------------------------------------------------------------


def test_real_siim_cr_dicom_is_accepted(real_cxr: Path, tmp_path: Path) -> None:
    files = sorted((real_cxr / "dicom").glob("*.dcm"))
    if not files:
        pytest.skip("no real DICOM in ../shared/real-cxr/dicom")
    result = read(real_cxr / "dicom", opts())
    assert result.rejected == [] and result.n_inputs == len(files)
    row = result.manifest.iloc[0]
    assert row["view"] == "PA" and row["view_raw"] == "PA"
    assert (row["width"], row["height"], row["bits"]) == (1024, 1024, 8)
    assert row["photometric"] == "MONOCHROME2"
    assert row["path"] == files[0].name
    # and a copy cut short is caught without decoding
    (tmp_path / "cut.dcm").write_bytes(files[0].read_bytes()[:60_000])
    assert reasons(read(tmp_path, opts())) == {"cut.dcm": "truncated"}


# --- PHI --------------------------------------------------------------------------------------

PHI = {
    "PatientName": "Zqxname^Phisecret",
    "PatientID": "PHIPID778899",
    "PatientBirthDate": "19230405",
    "AccessionNumber": "ACCPHI5566",
    "InstitutionName": "Saint Phimary Hospital",
    "StudyDate": "20010203",
    "SeriesDate": "20010204",
    "AcquisitionDate": "20010205",
    "ContentDate": "20010206",
    "ReferringPhysicianName": "Drphiref^Xyzzy",
    "PerformingPhysicianName": "Drphiperf^Plugh",
    "OperatorsName": "Opphi^Quux",
}


def test_no_phi_in_manifest_rejections_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    phi = dict(PHI)
    pid = phi.pop("PatientID")
    cases = {
        "ok_pa.dcm": make_ds("1.2.3.901", patient=pid),
        # PHI beside a view word in free text: only the token is kept as view_raw
        "ok_text.dcm": make_ds(
            "1.2.3.902",
            patient=pid,
            view_position=None,
            SeriesDescription="PA Zqxname Phisecret 19230405",
        ),
        "ct.dcm": make_ds("1.2.3.903", patient=pid, modality="CT"),
        "noview.dcm": make_ds(
            "1.2.3.904", patient=pid, view_position=None, StudyDescription="Zqxname Phisecret"
        ),
        "dup.dcm": make_ds("1.2.3.901", patient=pid),
        "nostudy.dcm": make_ds("1.2.3.905", patient=pid, study=None),
    }
    for name, ds in cases.items():
        for key, value in phi.items():
            setattr(ds, key, value)
        write(ds, tmp_path / name)
    labels = tmp_path / "labels.csv"
    labels.write_text("study_uid,Atelectasis\n1.2.826.0.1.3680043.8.498.1,1\n")

    with caplog.at_level(logging.DEBUG):
        result = read(tmp_path, opts(labels=labels))

    assert len(result.manifest) == 2 and len(result.rejected) == 4
    assert (result.manifest["Atelectasis"] == 1.0).all()
    assert result.manifest.set_index("path").loc["ok_text.dcm", "view_raw"] == "PA"
    cells = [str(v) for v in result.manifest.astype(str).to_numpy().ravel()]
    cells += [str(v) for v in rejected_frame(result.rejected).to_numpy().ravel()]
    cells += [rec.getMessage() for rec in caplog.records]
    needles = [pid, *phi.values(), "Zqxname", "Phisecret", "Phimary", "Drphi", "Opphi"]
    for needle in needles:
        hits = [c for c in cells if needle.lower() in c.lower()]
        assert not hits, f"PHI {needle!r} leaked into {hits}"


# --- parallel parity --------------------------------------------------------------------------


def test_workers_1_and_2_give_identical_results(tmp_path: Path) -> None:
    _write_bad_folder(tmp_path)
    for i in range(12):
        write(make_ds(f"1.2.3.{1000 + i}", patient=f"P{i % 3}", seed=i), tmp_path / "m" / f"{i}")
    one = read(tmp_path, ReadOptions(workers=1, salt=SALT))
    two = read(tmp_path, ReadOptions(workers=2, salt=SALT))
    pd.testing.assert_frame_equal(one.manifest, two.manifest)
    assert one.rejected == two.rejected
    assert one.n_inputs == two.n_inputs == len(one.manifest) + len(one.rejected)
    assert list(one.manifest["path"]) == sorted(one.manifest["path"])


def test_copy_of_folder_gives_same_keys(tmp_path: Path) -> None:
    """Keys depend on UIDs + salt only, not on where the folder lives."""
    write(make_ds("1.2.3.1100"), tmp_path / "a" / "x.dcm")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a, b = read(tmp_path / "a", opts()), read(tmp_path / "b", opts())
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    other_salt = read(tmp_path / "a", ReadOptions(workers=1, salt=b"another"))
    assert other_salt.manifest["image_id"][0] != a.manifest["image_id"][0]
