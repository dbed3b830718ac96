"""PadChest reader: the real sample, label mapping, placeholder labels, EXCLUDE projection, bits,
and no PHI in outputs."""

from __future__ import annotations

import ast
import csv
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.keys import make_key
from pipelines.labels import FINDINGS, PADCHEST_TO_FINDINGS
from pipelines.schema import MANIFEST_COLUMNS
from pipelines.sources import ReadOptions
from pipelines.sources.padchest import parse_label_list, read

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "real-cxr"
SAMPLE = REAL / "metadata_samples" / "padchest_sample.csv"
SALT = b"test-salt"


def opts(**kw) -> ReadOptions:
    return ReadOptions(salt=SALT, **({"verify_files": False} | kw))


def sample() -> tuple[Path, list[dict[str, str]]]:
    if not SAMPLE.exists():
        pytest.skip(f"real data not available: {SAMPLE}")
    with SAMPLE.open(newline="") as fh:
        return SAMPLE, list(csv.DictReader(fh))


def check_invariant(result) -> None:
    assert result.n_inputs == len(result.manifest) + len(result.rejected)
    assert list(result.manifest.columns) == list(MANIFEST_COLUMNS)


def test_real_sample():
    table, raw = sample()
    result = read(table, opts())
    check_invariant(result)
    m = result.manifest
    assert len(m) == len(raw) == 53 and not result.rejected
    assert dict(Counter(m["view"])) == {"PA": 32, "LATERAL": 20, "AP": 1}
    assert dict(Counter(m["view_raw"])) == dict(Counter(r["Projection"] for r in raw))
    assert m["path"].tolist() == [f"{r['ImageDir']}/{r['ImageID']}" for r in raw]
    assert m["width"].tolist() == [int(r["Columns_DICOM"]) for r in raw]
    assert m["height"].tolist() == [int(r["Rows_DICOM"]) for r in raw]
    assert m["patient_key"].nunique() == len({r["PatientID"] for r in raw}) == 29
    assert m["study_key"].nunique() == len({r["StudyID"] for r in raw}) == 30
    assert m.loc[0, "image_id"] == make_key("image", f"padchest:{raw[0]['ImageID']}", SALT)
    assert m["bits"].tolist() == [int(r["BitsStored_DICOM"]) for r in raw] == [12] * 53
    # counts from the raw strings, parsed here independently of the reader
    terms = [{t.strip().lower() for t in ast.literal_eval(r["Labels"])} for r in raw]
    # ['unchanged'] is no annotation: all 14 NaN; every other row is annotated for all 14
    unchanged = np.array([t == {"unchanged"} for t in terms])
    assert unchanged.sum() == 4 and result.counts == {"placeholder_labels": 4, "unknown_terms": 0}
    assert m.loc[unchanged, list(FINDINGS)].isna().all().all()
    assert not m.loc[~unchanged, list(FINDINGS)].isna().any().any()
    for term, finding in [
        ("cardiomegaly", "Cardiomegaly"),
        ("hiatal hernia", "Hernia"),
        ("pleural effusion", "Effusion"),
        ("emphysema", "Emphysema"),
        ("pneumonia", "Pneumonia"),
    ]:
        assert int((m[finding] == 1).sum()) == sum(term in t for t in terms), finding
    infiltration = {"infiltrates", "interstitial pattern", "alveolar pattern"}
    assert int((m["Infiltration"] == 1).sum()) == sum(bool(infiltration & t) for t in terms)
    assert int((m["Atelectasis"] == 1).sum()) == sum("laminar atelectasis" in t for t in terms)
    # "apical pleural thickening" is pleural thickening; "mediastinal mass" a mass
    assert int((m["Pleural_Thickening"] == 1).sum()) == 2 and int((m["Mass"] == 1).sum()) == 2
    normal = np.array([t == {"normal"} for t in terms])
    assert normal.sum() == 19 and (m.loc[normal, list(FINDINGS)] == 0).all().all()


def test_no_phi_in_outputs(tmp_path):
    table, raw = sample()
    rows = pd.read_csv(table, dtype=str, keep_default_na=False)
    rows.loc[0, "Projection"] = "EXCLUDE"  # a rejected row must not leak either
    rows.loc[1, "Labels"] = "['unterminated"
    bad = tmp_path / "PADCHEST_test.csv"
    rows.to_csv(bad, index=False)
    result = read(bad, opts())
    check_invariant(result)
    cells = {str(v) for v in result.manifest.to_numpy().ravel()}
    cells |= {v for r in result.rejected for v in (r.path, r.detail)}
    text = "\n".join(cells)
    for r in raw:
        assert r["PatientID"] not in text
        assert r["StudyDate_DICOM"] not in text
        assert r["PatientBirth"] not in text
        assert r["Report"].strip() not in text
    assert not {"PatientBirth", "PatientID", "StudyDate_DICOM", "Report"} & set(
        result.manifest.columns
    )


def test_exclude_unparsable_blank_and_duplicates(tmp_path):
    header = "ImageID,ImageDir,StudyID,PatientID,PatientBirth,Projection,Labels\n"
    lines = [
        "a.png,0,s1,p1,1950.0,PA,\"['cardiomegaly', ' Pleural Effusion ']\"",
        "b.png,0,s1,p1,1950.0,EXCLUDE,\"['normal']\"",
        "c.png,1,s2,p2,1960.0,L,\"['normal'\"",
        "d.png,1,s2,p2,1960.0,COSTAL,",
        "a.png,0,s1,p1,1950.0,PA,\"['normal']\"",
        "e.png,2,,p3,1970.0,PA,\"['normal']\"",
        "f.png,2,s3,p3,1970.0,UNK,"
        "\"['hydropneumothorax', 'breast mass', 'subcutaneous emphysema']\"",
        'g.png,2,s3,p3,1970.0,AP_horizontal,"[]"',
        'h.png,2,s3,p3,1970.0,PA,"[1, 2]"',
    ]
    table = tmp_path / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    table.write_text(header + "\n".join(lines) + "\n")
    result = read(tmp_path, opts())  # folder input finds the file
    check_invariant(result)
    got = [(r.path, r.reason) for r in result.rejected]
    name = table.name
    assert got == [
        (f"{name}:3", "excluded_projection"),
        (f"{name}:4", "unparsable_labels"),
        (f"{name}:6", "duplicate_image_id"),
        (f"{name}:7", "missing_value"),
        (f"{name}:10", "unparsable_labels"),
    ]
    m = result.manifest.set_index("path")
    assert list(m.index) == ["0/a.png", "1/d.png", "2/f.png", "2/g.png"]
    assert m["view"].tolist() == ["PA", "OTHER", "OTHER", "AP"]
    a = m.loc["0/a.png", list(FINDINGS)]
    assert a[a == 1].index.tolist() == ["Cardiomegaly", "Effusion"] and a.sum() == 2
    assert m.loc["1/d.png", list(FINDINGS)].isna().all()  # blank: not labelled
    f = m.loc["2/f.png", list(FINDINGS)]
    assert f[f == 1].index.tolist() == ["Effusion", "Pneumothorax"]  # not Mass, not Emphysema
    assert (m.loc["2/g.png", list(FINDINGS)] == 0).all()


def test_parse_label_list():
    assert parse_label_list("['Normal', ' COPD signs ']") == ["normal", "copd signs"]
    assert parse_label_list("[]") == []
    assert parse_label_list("__import__('os')") is None
    assert parse_label_list("['a', 1]") is None
    assert parse_label_list("'a'") is None


def test_mapping_targets_are_findings():
    assert {f for v in PADCHEST_TO_FINDINGS.values() for f in v} == set(FINDINGS)


HEADER = "ImageID,ImageDir,StudyID,PatientID,Projection,Labels,BitsStored_DICOM\n"


def write_csv(folder: Path, lines: list[str]) -> Path:
    table = folder / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    table.write_text(HEADER + "\n".join(lines) + "\n")
    return table


def test_placeholder_labels_are_not_annotated(tmp_path, caplog):
    table = write_csv(
        tmp_path,
        [
            "a.png,0,s1,p1,PA,\"['unchanged']\",12",
            "b.png,0,s1,p1,L,\"[' Unchanged ', 'exclude']\",12",
            "c.png,0,s2,p1,PA,\"['suboptimal study']\",12",
            "d.png,0,s3,p2,PA,\"['exclude']\",12",
            "e.png,0,s4,p2,PA,\"['unchanged', 'cardiomegaly']\",12",  # real finding kept
            "f.png,0,s5,p3,PA,\"['unchanged', 'scoliosis']\",12",  # annotated, none of the 14
            "g.png,0,s6,p3,PA,\"['normal', 'suboptimal study']\",12",  # normal: annotated
            "h.png,0,s7,p4,EXCLUDE,\"['unchanged']\",12",  # rejected: not counted
        ],
    )
    with caplog.at_level(logging.INFO, logger="pipelines.sources.padchest"):
        result = read(table, opts())
    check_invariant(result)
    assert [r.reason for r in result.rejected] == ["excluded_projection"]
    m = result.manifest.set_index("path")[list(FINDINGS)]
    for name in ("a", "b", "c", "d"):
        assert m.loc[f"0/{name}.png"].isna().all(), name
    e = m.loc["0/e.png"]
    assert e[e == 1].index.tolist() == ["Cardiomegaly"] and e.sum() == 1 and e.notna().all()
    assert (m.loc["0/f.png"] == 0).all() and (m.loc["0/g.png"] == 0).all()
    assert result.counts == {"placeholder_labels": 4, "unknown_terms": 0}
    assert "4 of 7 images are labelled only 'unchanged'" in caplog.text


def test_placeholder_count_follows_file_verification(tmp_path):
    (tmp_path / "0").mkdir()
    Image.fromarray(np.full((4, 6), 4000, np.uint16)).save(tmp_path / "0" / "a.png")
    table = write_csv(
        tmp_path,
        ["a.png,0,s1,p1,PA,\"['unchanged']\",12", "b.png,0,s1,p1,L,\"['unchanged']\",12"],
    )
    result = read(table, opts(verify_files=True))
    check_invariant(result)
    assert [r.reason for r in result.rejected] == ["missing_file"]
    assert result.counts["placeholder_labels"] == 1


def test_bits_from_the_csv_survive_file_verification(tmp_path):
    folder = tmp_path / "7"
    folder.mkdir()
    twelve = np.zeros((5, 6), np.uint16)
    twelve[0, 0] = 4095
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(twelve).save(folder / name)  # 16-bit PNG holding 12-bit values
    Image.fromarray(np.zeros((5, 6), np.uint8)).save(folder / "d.png")  # an 8-bit export
    table = write_csv(
        tmp_path,
        [
            "a.png,7,s1,p1,PA,\"['normal']\",12",
            "b.png,7,s1,p1,L,\"['normal']\",12.0",
            "c.png,7,s2,p1,PA,\"['normal']\",",  # no metadata: the file's depth
            "d.png,7,s3,p2,PA,\"['normal']\",12",  # the CSV describes the DICOM, not this file
        ],
    )
    assert read(table, opts()).manifest["bits"].tolist() == [12, 12, 0, 12]
    verified = read(table, opts(verify_files=True))
    check_invariant(verified)
    assert not verified.rejected
    assert verified.manifest["bits"].tolist() == [12, 12, 16, 8]
    assert verified.manifest["width"].tolist() == [6] * 4


def test_effusion_family_and_unknown_terms(tmp_path, caplog):
    table = write_csv(
        tmp_path,
        [
            "a.png,0,s1,p1,PA,\"['empyema']\",12",
            "b.png,0,s1,p1,L,\"['hemothorax']\",12",
            "c.png,0,s2,p2,PA,\"['consolidation', 'miliary opacities']\",12",
            "d.png,0,s3,p3,PA,\"['pleural efusion', 'cardiomegaly']\",12",  # misspelt: unknown
        ],
    )
    with caplog.at_level(logging.INFO, logger="pipelines.sources.padchest"):
        result = read(table, opts())
    m = result.manifest.set_index("path")[list(FINDINGS)]
    for name in ("a", "b"):
        row = m.loc[f"0/{name}.png"]
        assert row[row == 1].index.tolist() == ["Effusion"] and row.notna().all(), name
    c = m.loc["0/c.png"]
    assert c[c == 1].index.tolist() == ["Infiltration", "Consolidation"]
    d = m.loc["0/d.png"]
    assert d[d == 1].index.tolist() == ["Cardiomegaly"]
    assert result.counts == {"placeholder_labels": 0, "unknown_terms": 1}
    assert "1 images carry terms outside PadChest's vocabulary (e.g. 'pleural efusion')" in (
        caplog.text
    )


def test_real_sample_sex_and_age_at_the_study_only():
    table, raw = sample()
    m = read(table, opts()).manifest
    assert m["sex"].tolist() == [r["PatientSex_DICOM"] for r in raw]
    ages = [int(r["StudyDate_DICOM"][:4]) - int(float(r["PatientBirth"])) for r in raw]
    want = [f"{a // 10 * 10}-{a // 10 * 10 + 9}" if a < 90 else "90+" for a in ages]
    assert m["age_band"].tolist() == want and "90+" in want
    # the dates gave the band and went: no column, no value of either in the manifest
    text = m.to_csv()
    assert not {"PatientBirth", "StudyDate_DICOM"} & set(m.columns)
    assert not any(r["StudyDate_DICOM"] in text for r in raw)
