"""MIMIC-CXR-JPG reader on small tables with the real column names (the data is credentialed)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.errors import SourceError
from pipelines.keys import make_key
from pipelines.labels import BLANK_POLICIES, CHEXPERT_TO_FINDINGS, FINDINGS
from pipelines.schema import MANIFEST_COLUMNS
from pipelines.sources import ReadOptions
from pipelines.sources.mimic import read

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "real-cxr"
HEADERS = REAL / "metadata_samples" / "mimic_cxr_HEADERS_ONLY.txt"
SALT = b"test-salt"
META_COLUMNS = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)
LABEL_COLUMNS = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
    "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
    "Pneumothorax,Support Devices"
)
# dicom_id, subject, study, ViewPosition, Rows, Columns, StudyDate, StudyTime
IMAGES = [
    ("d1", "10000032", "50414267", "PA", "3056", "2544", "21800506", "213014.531"),
    ("d2", "10000032", "50414267", "LATERAL", "3056", "2544", "21800506", "213014.531"),
    ("d3", "10000032", "53189527", "AP", "2705", "2539", "21800626", "165500.312"),
    ("d4", "10000764", "57375967", "LL", "", "", "21321015", "080104.453"),
    ("d5", "10000764", "57375967", "AP AXIAL", "2500", "2000", "21321015", "080104.453"),
    ("d6", "19999999", "59999999", "PA", "100", "100", "21990101", "000000.000"),  # no labels
    ("d1", "10000032", "50414267", "PA", "3056", "2544", "21800506", "213014.531"),  # repeat
    ("d7", "", "50414267", "PA", "1", "1", "21800506", "213014.531"),  # blank subject
    ("d8", "1x", "50414267", "PA", "1", "1", "21800506", "213014.531"),  # invalid id
]
# subject, study, then the label columns' values by name
LABELS = [
    ("10000032", "50414267", {"Cardiomegaly": "1.0", "Pleural Effusion": "-1.0", "Edema": "0.0"}),
    ("10000032", "53189527", {"No Finding": "1.0"}),
    ("10000764", "57375967", {"Pneumonia": "-1.0", "Atelectasis": "1.0", "Fracture": "1.0"}),
]


def opts(labels: Path | None, **kw) -> ReadOptions:
    return ReadOptions(labels=labels, salt=SALT, **({"verify_files": False} | kw))


def write_tables(folder: Path, gz: bool = True) -> tuple[Path, Path]:
    meta_rows = [
        ",".join([d, s, st, "CHEST (PA AND LAT)", v, r, c, date, time, "", "", ""])
        for d, s, st, v, r, c, date, time in IMAGES
    ]
    meta_text = META_COLUMNS + "\n" + "\n".join(meta_rows) + "\n"
    names = LABEL_COLUMNS.split(",")
    label_rows = [
        ",".join([s, st, *[vals.get(n, "") for n in names[2:]]]) for s, st, vals in LABELS
    ]
    meta = folder / ("mimic-cxr-2.0.0-metadata.csv" + (".gz" if gz else ""))
    meta.write_bytes(gzip.compress(meta_text.encode()) if gz else meta_text.encode())
    labels = folder / "mimic-cxr-2.0.0-chexpert.csv"
    labels.write_text(LABEL_COLUMNS + "\n" + "\n".join(label_rows) + "\n")
    return meta, labels


def test_headers_match_the_documented_ones():
    if not HEADERS.exists():
        pytest.skip(f"real data not available: {HEADERS}")
    lines = HEADERS.read_text().splitlines()
    assert META_COLUMNS in lines and LABEL_COLUMNS in lines


def test_read_join_paths_views_and_policy(tmp_path):
    meta, labels = write_tables(tmp_path)
    result = read(meta, opts(labels))
    assert result.n_inputs == len(IMAGES) == len(result.manifest) + len(result.rejected)
    m = result.manifest
    assert list(m.columns) == list(MANIFEST_COLUMNS)
    assert m["path"].tolist() == [
        "files/p10/p10000032/s50414267/d1.jpg",
        "files/p10/p10000032/s50414267/d2.jpg",
        "files/p10/p10000032/s53189527/d3.jpg",
        "files/p10/p10000764/s57375967/d4.jpg",
        "files/p10/p10000764/s57375967/d5.jpg",
    ]
    assert m["view"].tolist() == ["PA", "LATERAL", "AP", "LATERAL", "OTHER"]
    assert m["view_raw"].tolist() == ["PA", "LATERAL", "AP", "LL", "AP AXIAL"]
    assert m["width"].tolist() == [2544, 2544, 2539, 0, 2000]
    assert m["height"].tolist() == [3056, 3056, 2705, 0, 2500]
    assert result.data_root == str(tmp_path)
    got = [(r.path, r.reason) for r in result.rejected]
    assert got == [
        ("mimic-cxr-2.0.0-metadata.csv.gz:7", "missing_labels"),
        ("mimic-cxr-2.0.0-metadata.csv.gz:8", "duplicate_image_id"),
        ("mimic-cxr-2.0.0-metadata.csv.gz:9", "missing_value"),
        ("mimic-cxr-2.0.0-metadata.csv.gz:10", "invalid_id"),
    ]
    # keys
    assert m["patient_key"].nunique() == 2 and m["study_key"].nunique() == 3
    assert m.loc[0, "study_key"] == make_key("study", "mimic:50414267", SALT)
    assert m.loc[0, "image_id"] == make_key("image", "mimic:d1", SALT)
    # study labels on every image of the study; blank -> 0; -1 -> NaN (ignore)
    cols = ["Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax"]
    cols += ["Consolidation", "Edema"]
    np.testing.assert_array_equal(
        m.loc[0, cols].to_numpy(np.float32), np.array([0, 1, np.nan, 0, 0, 0, 0], np.float32)
    )
    assert m.loc[1, "Cardiomegaly"] == 1.0 and np.isnan(m.loc[1, "Effusion"])
    assert m.loc[2, list(CHEXPERT_TO_FINDINGS.values())].sum() == 0  # No Finding study
    assert m.loc[3, "Atelectasis"] == 1.0 and np.isnan(m.loc[3, "Pneumonia"])
    unmapped = [f for f in FINDINGS if f not in CHEXPERT_TO_FINDINGS.values()]
    assert m[unmapped].isna().all().all()
    ones = read(meta, opts(labels, uncertain="ones")).manifest
    assert ones.loc[0, "Effusion"] == 1.0 and ones.loc[3, "Pneumonia"] == 1.0


def test_no_dates_in_output(tmp_path):
    meta, labels = write_tables(tmp_path, gz=False)
    result = read(meta, opts(labels))
    text = result.manifest.astype(str).to_csv() + pd.DataFrame(result.rejected).to_csv()
    for *_, date, time in IMAGES:
        assert date not in text and time not in text
    assert not {"StudyDate", "StudyTime"} & set(result.manifest.columns)


def test_files_verified(tmp_path):
    meta, labels = write_tables(tmp_path)
    img = tmp_path / "files/p10/p10000032/s50414267/d1.jpg"
    img.parent.mkdir(parents=True)
    Image.new("L", (6, 4)).save(img)
    result = read(meta, opts(labels, verify_files=True))
    assert result.n_inputs == len(result.manifest) + len(result.rejected)
    assert result.manifest[["width", "height", "bits"]].to_numpy().tolist() == [[6, 4, 8]]
    assert [r.reason for r in result.rejected].count("missing_file") == 4


def test_label_file_required_and_checked(tmp_path):
    meta, labels = write_tables(tmp_path)
    with pytest.raises(SourceError, match="needs a label file"):
        read(meta, opts(None))
    with pytest.raises(SourceError, match="label CSV not found"):
        read(meta, opts(tmp_path / "nope.csv"))
    labels.write_text(labels.read_text() + labels.read_text().splitlines()[1] + "\n")
    with pytest.raises(SourceError, match=r"1 repeated \(subject_id, study_id\) rows"):
        read(meta, opts(labels))
    labels.write_text("subject_id,study_id,Cardiomegaly\n1,2,1.0\n")
    with pytest.raises(SourceError) as err:
        read(meta, opts(labels))
    assert str(labels) in str(err.value) and "'Pleural Effusion'" in str(err.value)


def test_blank_policies(tmp_path):
    meta, labels = write_tables(tmp_path)
    cols = list(CHEXPERT_TO_FINDINGS.values())
    m = {b: read(meta, opts(labels, blank=b)).manifest for b in BLANK_POLICIES}
    zeros, nan, mixed = m["zeros"], m["nan"], m["nan_unless_no_finding"]
    # study 50414267 (d1, d2): Cardiomegaly 1, Effusion -1, Edema 0, the rest blank
    for frame in (nan, mixed):
        row = frame.loc[0, cols]
        assert row["Cardiomegaly"] == 1 and row["Edema"] == 0
        assert row.drop(["Cardiomegaly", "Edema"]).isna().all()
    assert (zeros.loc[0, ["Atelectasis", "Pneumonia", "Pneumothorax"]] == 0).all()
    # study 53189527 (d3): No Finding 1, the rest blank: negative unless blank: nan
    assert (zeros.loc[2, cols] == 0).all() and (mixed.loc[2, cols] == 0).all()
    assert nan.loc[2, cols].isna().all()
    # study 57375967 (d4, d5): Atelectasis 1, Pneumonia -1; no No Finding
    assert mixed.loc[3, "Atelectasis"] == 1 and mixed.loc[3, cols].isna().sum() == 6
    for frame in m.values():
        assert frame["path"].tolist() == zeros["path"].tolist()


def test_nan_unless_no_finding_needs_the_column(tmp_path):
    meta, labels = write_tables(tmp_path)
    text = pd.read_csv(labels, dtype=str, keep_default_na=False).drop(columns="No Finding")
    text.to_csv(labels, index=False)
    assert len(read(meta, opts(labels, blank="nan")).manifest) == 5
    with pytest.raises(SourceError) as err:
        read(meta, opts(labels, blank="nan_unless_no_finding"))
    assert str(labels) in str(err.value) and "'No Finding'" in str(err.value)
