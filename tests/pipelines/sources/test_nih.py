"""NIH ChestX-ray14 reader: the real Data_Entry sample, the two real PNGs, the release layout."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import SourceError
from pipelines.keys import make_key
from pipelines.labels import FINDINGS
from pipelines.schema import MANIFEST_COLUMNS
from pipelines.sources import ReadOptions, get_reader
from pipelines.sources.nih import read

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "real-cxr"
SAMPLE = REAL / "metadata_samples" / "nih_cxr14_Data_Entry_sample50.csv"
SALT = b"test-salt"
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)


def opts(**kw) -> ReadOptions:
    return ReadOptions(salt=SALT, **({"verify_files": False} | kw))


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def check_invariant(result) -> None:
    assert result.n_inputs == len(result.manifest) + len(result.rejected)
    assert list(result.manifest.columns) == list(MANIFEST_COLUMNS)


def test_get_reader_finds_nih():
    assert get_reader("nih") is read


def test_real_sample_labels_views_sizes():
    table = need(SAMPLE)
    with table.open(newline="") as fh:
        raw = list(csv.reader(fh))[1:]
    result = read(table, opts())
    check_invariant(result)
    m = result.manifest
    assert len(m) == len(raw) == 50 and not result.rejected
    assert result.data_root == str(table.parent)
    # label counts computed from the CSV text, independently of the reader
    for finding in FINDINGS:
        want = sum(finding in row[1].split("|") for row in raw)
        assert int((m[finding] == 1).sum()) == want, finding
    assert int((m["Cardiomegaly"] == 1).sum()) == sum("Cardiomegaly" in r[1] for r in raw) == 10
    assert not m[list(FINDINGS)].isna().any().any()  # all 14 annotated
    assert m.loc[0, list(FINDINGS)].sum() == 1 and m.loc[0, "Cardiomegaly"] == 1
    assert dict(Counter(m["view"])) == dict(Counter(r[6] for r in raw)) == {"PA": 37, "AP": 13}
    assert m["width"].tolist() == [int(r[7]) for r in raw]
    assert m["height"].tolist() == [int(r[8]) for r in raw]
    assert set(m["bits"]) == {0} and set(m["photometric"]) == {""}
    assert m["path"].tolist() == [r[0] for r in raw]  # no image folders beside the sample
    # keys: one per patient, one study per image, prefixed with the source
    assert m["patient_key"].nunique() == len({r[3] for r in raw})
    assert m["study_key"].nunique() == m["image_id"].nunique() == 50
    assert m.loc[0, "patient_key"] == make_key("patient", "nih:1", SALT)
    assert m.loc[0, "study_key"] == make_key("study", "nih:00000001_000", SALT)
    assert m.loc[0, "image_id"] == make_key("image", "nih:00000001_000.png", SALT)


def test_real_pngs_verified():
    folder = need(REAL / "nih_cxr14")
    result = read(folder / "labels.csv", opts(verify_files=True))
    check_invariant(result)
    m = result.manifest.set_index("path")
    assert list(m.index) == ["00000001_000.png", "00027426_000.png"]
    for name in m.index:
        with Image.open(folder / name) as im:  # the README: 512x512 8-bit grayscale
            assert (im.size, im.mode) == ((512, 512), "L")
    assert m["width"].tolist() == [512, 512] and m["height"].tolist() == [512, 512]
    assert m["bits"].tolist() == [8, 8] and m["photometric"].tolist() == ["MONOCHROME2"] * 2
    assert m.loc["00000001_000.png", "Cardiomegaly"] == 1
    assert m.loc["00027426_000.png", list(FINDINGS)].sum() == 0  # No Finding
    assert m["view"].tolist() == ["PA", "PA"]


def test_release_layout_images_subfolders(tmp_path):
    """The official release splits images across images_001/images ... images_012/images."""
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    (tmp_path / "images_002" / "images").mkdir(parents=True)
    Image.new("L", (4, 3)).save(tmp_path / "images_001" / "images" / "00000001_000.png")
    Image.new("L", (5, 6)).save(tmp_path / "images_002" / "images" / "00000002_000.png")
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text(
        HEADER
        + "00000001_000.png,Cardiomegaly|Effusion,0,1,57,M,PA,2682,2749,0.143,0.143\n"
        + "00000002_000.png,No Finding,0,2,80,M,AP,2500,2048,0.171,0.171\n"
        + "00000003_000.png,Hernia,0,3,80,M,PA,2500,2048,0.171,0.171\n"
    )
    result = read(tmp_path, opts(verify_files=True, workers=2))  # folder input
    check_invariant(result)
    m = result.manifest
    assert m["path"].tolist() == [
        "images_001/images/00000001_000.png",
        "images_002/images/00000002_000.png",
    ]
    assert m[["width", "height"]].to_numpy().tolist() == [[4, 3], [5, 6]]
    assert m.loc[0, ["Cardiomegaly", "Effusion"]].tolist() == [1.0, 1.0]
    assert [(r.path, r.reason) for r in result.rejected] == [("00000003_000.png", "missing_file")]


def test_bad_rows_rejected(tmp_path):
    table = tmp_path / "Data_Entry_2017.csv"
    table.write_text(
        HEADER
        + "a.png,Cardiomegaly,0,1,57,M,PA,10,10,0.1,0.1\n"
        + "b.png,Cardiomegaly|Covid,0,2,57,M,PA,10,10,0.1,0.1\n"  # line 3: unknown label
        + "c.png,No Finding,0,,57,M,PA,10,10,0.1,0.1\n"  # line 4: blank patient
        + "a.png,Effusion,1,1,57,M,PA,10,10,0.1,0.1\n"  # line 5: duplicate
        + "d.png,,0,4,57,M,LL,10,10,0.1,0.1\n"  # line 6: blank labels
        + "e.png, Mass | Nodule ,0,5,57,M,XX,,,0.1,0.1\n"  # spaces; unknown view -> OTHER
    )
    result = read(table, opts())
    check_invariant(result)
    got = [(r.path, r.reason, r.detail) for r in result.rejected]
    assert got == [
        ("Data_Entry_2017.csv:3", "label_out_of_domain", "unknown label 'Covid'"),
        ("Data_Entry_2017.csv:4", "missing_value", "blank 'Patient ID'"),
        (
            "Data_Entry_2017.csv:5",
            "duplicate_image_id",
            "image id repeats line 2 of Data_Entry_2017.csv (first kept)",
        ),
        ("Data_Entry_2017.csv:6", "missing_value", "blank 'Finding Labels'"),
    ]
    m = result.manifest
    assert m["path"].tolist() == ["a.png", "e.png"]
    assert m["view"].tolist() == ["PA", "OTHER"] and m["view_raw"].tolist() == ["PA", "XX"]
    assert m.loc[1, ["Mass", "Nodule"]].tolist() == [1.0, 1.0]
    assert m.loc[1, ["width", "height"]].tolist() == [0, 0]
    np.testing.assert_array_equal(m.loc[0, list(FINDINGS)].to_numpy(np.float32).sum(), 1.0)


def test_missing_column_names_file_and_column(tmp_path):
    table = tmp_path / "Data_Entry_2017.csv"
    table.write_text("Image Index,Finding Labels,Patient ID\na.png,Mass,1\n")
    with pytest.raises(SourceError) as err:
        read(table, opts())
    assert str(table) in str(err.value) and "'View Position'" in str(err.value)


def test_images_option_sets_root(tmp_path):
    table = need(REAL / "nih_cxr14" / "labels.csv")
    copy = tmp_path / "meta" / "labels.csv"
    copy.parent.mkdir()
    shutil.copy(table, copy)
    result = read(copy, opts(images=table.parent, verify_files=True))
    assert result.data_root == str(table.parent) and len(result.manifest) == 2
    missing = read(copy, opts(verify_files=True))  # images not beside the copy
    check_invariant(missing)
    assert [r.reason for r in missing.rejected] == ["missing_file", "missing_file"]


def test_real_sample_sex_and_age_bands():
    table = need(SAMPLE)
    with table.open(newline="") as fh:
        raw = list(csv.DictReader(fh))
    m = read(table, opts()).manifest
    assert m["sex"].tolist() == [r["Patient Gender"] for r in raw]
    assert dict(Counter(m["sex"])) == {"M": 30, "F": 20}
    want = [
        f"{int(r['Patient Age']) // 10 * 10}-{int(r['Patient Age']) // 10 * 10 + 9}" for r in raw
    ]
    assert m["age_band"].tolist() == want


def test_age_formats_of_both_releases_and_impossible_ages(tmp_path):
    rows = [("a.png", "58"), ("b.png", "058Y"), ("c.png", "006M"), ("d.png", "412"), ("e.png", "")]
    text = HEADER + "".join(f"{n},No Finding,0,{i},{age},F,PA,1,1,0.1,0.1\n"
                            for i, (n, age) in enumerate(rows))  # fmt: skip
    (tmp_path / "Data_Entry_2017.csv").write_text(text)
    m = read(tmp_path / "Data_Entry_2017.csv", opts()).manifest
    assert m["age_band"].tolist() == ["50-59", "50-59", "0-9", "", ""]
