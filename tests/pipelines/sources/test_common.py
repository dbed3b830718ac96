"""Shared reader helpers: checked CSV reading, row rejections, labels, keys, file verification."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.errors import SourceError
from pipelines.labels import FINDINGS
from pipelines.sources import ReadOptions
from pipelines.sources.common import (
    Rows,
    coded_labels,
    extract,
    find_table,
    finish,
    image_header,
    index_images,
    read_table,
    term_labels,
    to_int,
    verify_files,
)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


# --- read_table -------------------------------------------------------------------------------


def test_read_table_text_cells_and_only_wanted_columns(tmp_path):
    f = write(tmp_path / "t.csv", "a, b ,secret\n1,,x\n002,NA,y\n")
    df = read_table(f, ["a", "b"])
    assert list(df.columns) == ["a", "b"]  # names stripped, unrequested column never read
    assert df["a"].tolist() == ["1", "002"]  # text kept as written
    assert df["b"].tolist() == ["", "NA"]  # blank is "", NA is not parsed as missing


def test_read_table_optional_columns_bom_and_gzip(tmp_path):
    f = tmp_path / "t.csv.gz"
    f.write_bytes(gzip.compress("\ufeffa,b\n1,2\n".encode()))
    df = read_table(f, ["a"], ["b", "c"])
    assert list(df.columns) == ["a", "b"]
    assert df.iloc[0].tolist() == ["1", "2"]


def test_read_table_missing_file(tmp_path):
    with pytest.raises(SourceError, match=r"nope\.csv: metadata CSV not found"):
        read_table(tmp_path / "nope.csv", ["a"])


def test_read_table_folder_is_not_a_file(tmp_path):
    with pytest.raises(SourceError, match="is not a file"):
        read_table(tmp_path, ["a"])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", r"empty \(0 bytes\)"),
        (b"\n\n", r"empty \(no header line\)"),
        (b"a,b\n", "header but no data rows"),
    ],
)
def test_read_table_empty(tmp_path, content, match):
    f = write(tmp_path / "e.csv", content)
    with pytest.raises(SourceError, match=match) as err:
        read_table(f, ["a", "b"])
    assert str(f) in str(err.value)


@pytest.mark.parametrize(("sep", "name"), [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")])
def test_read_table_wrong_delimiter(tmp_path, sep, name):
    f = write(tmp_path / "d.csv", f"path{sep}patient{sep}study\nx{sep}1{sep}2\n")
    with pytest.raises(SourceError) as err:
        read_table(f, ["path", "patient", "study"], what="image-list CSV")
    msg = str(err.value)
    assert str(f) in msg and "single column" in msg and f"{name}-separated" in msg


def test_read_table_not_utf8_reports_offset_and_line(tmp_path):
    head = b"a,b\n1,2\n"
    f = write(tmp_path / "l.csv", head + b"3,Jos\xe9\n")  # latin-1 e-acute
    offset = len(head) + len(b"3,Jos")
    with pytest.raises(SourceError) as err:
        read_table(f, ["a", "b"])
    msg = str(err.value)
    assert str(f) in msg and "not UTF-8" in msg
    assert f"byte 0xe9 at byte offset {offset} (line 3)" in msg


def test_read_table_not_utf8_in_gzip(tmp_path):
    f = tmp_path / "l.csv.gz"
    f.write_bytes(gzip.compress(b"a,b\n\xff,2\n"))
    with pytest.raises(SourceError, match=r"byte 0xff at byte offset 4 \(line 2\)"):
        read_table(f, ["a"])


def test_read_table_missing_columns_named(tmp_path):
    f = write(tmp_path / "m.csv", "path,patient\nx,1\n")
    with pytest.raises(SourceError) as err:
        read_table(f, ["path", "patient", "study", "view"], what="image-list CSV")
    msg = str(err.value)
    assert str(f) in msg
    assert "'study', 'view'" in msg and "lacks required column" in msg
    assert "found: 'path', 'patient'" in msg


def test_read_table_malformed(tmp_path):
    f = write(tmp_path / "bad.csv", 'a,b\n1,2\n3,4,5,6\n"unterminated\n')
    with pytest.raises(SourceError, match=r"bad\.csv: metadata CSV is not a well-formed CSV"):
        read_table(f, ["a"])


def test_find_table(tmp_path):
    f = write(tmp_path / "Data_Entry_2017_v2020.csv", "a\n1\n")
    assert find_table(f, ["x"], "t") == f
    assert find_table(tmp_path, ["Data_Entry_2017*.csv"], "t") == f
    write(tmp_path / "Data_Entry_2017_old.csv", "a\n1\n")
    with pytest.raises(SourceError, match="exactly one"):
        find_table(tmp_path, ["Data_Entry_2017*.csv"], "t")
    with pytest.raises(SourceError, match="not found"):
        find_table(tmp_path / "missing", ["*.csv"], "t")


# --- Rows -------------------------------------------------------------------------------------


def test_rows_first_reason_wins_and_row_order(tmp_path):
    rows = Rows(5, "csv", tmp_path / "list.csv")
    assert rows.reject(np.array([0, 1, 0, 1, 0], bool), "missing_value", "blank 'x'") == 2
    detail = np.array(["d0", "d1", "d2", "d3", "d4"], dtype=object)
    assert rows.reject(np.array([1, 1, 0, 0, 0], bool), "label_out_of_domain", detail) == 1
    rej = rows.rejections()
    assert [(r.path, r.reason, r.detail) for r in rej] == [
        ("list.csv:2", "label_out_of_domain", "d0"),
        ("list.csv:3", "missing_value", "blank 'x'"),
        ("list.csv:5", "missing_value", "blank 'x'"),
    ]
    assert rows.keep.tolist() == [False, False, True, False, True]
    assert {r.source for r in rej} == {"csv"}


def test_rows_blank_and_duplicates(tmp_path):
    df = pd.DataFrame({"id": ["a", "b", "a", " ", "b", "a"], "p": ["1", "", "1", "1", "1", "1"]})
    rows = Rows(len(df), "nih", tmp_path / "t.csv")
    rows.reject_blank(df, ["id", "p"])  # rows 1 (blank p) and 3 (blank id)
    rows.reject_duplicates(df["id"])
    got = [(r.path, r.reason, r.detail) for r in rows.rejections()]
    assert got == [
        ("t.csv:3", "missing_value", "blank 'p'"),
        ("t.csv:4", "duplicate_image_id", "image id repeats line 2 of t.csv (first kept)"),
        ("t.csv:5", "missing_value", "blank 'id'"),
        # row 4 ('b') is the first *accepted* 'b' (row 1 was rejected): kept
        ("t.csv:7", "duplicate_image_id", "image id repeats line 2 of t.csv (first kept)"),
    ]
    assert rows.keep.tolist() == [True, False, False, False, True, False]


# --- labels -----------------------------------------------------------------------------------


def test_coded_labels_codes_policy_and_domain(tmp_path):
    df = pd.DataFrame({"A": ["1", "0.0", "-1.0", "", "2", " 1.0 "], "B": ["", "", "", "", "", "x"]})
    for policy, unc in (("ignore", np.nan), ("ones", 1.0), ("zeros", 0.0)):
        rows = Rows(len(df), "csv", tmp_path / "t.csv")
        out = coded_labels(
            df, {"A": "Atelectasis", "B": "Edema"}, rows, blank_value=0.0, policy=policy
        )
        np.testing.assert_array_equal(
            out["Atelectasis"].to_numpy(), np.array([1, 0, unc, 0, np.nan, 1], np.float32)
        )
        assert out["Atelectasis"].dtype == np.float32
        rej = rows.rejections()
        assert [(r.path, r.reason) for r in rej] == [
            ("t.csv:6", "label_out_of_domain"),
            ("t.csv:7", "label_out_of_domain"),
        ]
        assert rej[0].detail == "column 'A' has value '2'"
        assert rej[1].detail == "column 'B' has value 'x'"


def test_term_labels_one_hot_none_terms_and_unknown(tmp_path):
    terms = pd.Series([["cardiomegaly"], [], None, ["normal"], ["hydro", "zzz", "yyy"], ["a"]])
    lookup = {"cardiomegaly": ("Cardiomegaly",), "hydro": ("Effusion", "Pneumothorax")}
    out = term_labels(terms, lookup)  # unknown ignored
    assert out.shape == (6, len(FINDINGS)) and out.dtypes.eq(np.float32).all()
    assert out.sum().to_dict() == {f: 0.0 for f in FINDINGS} | {
        "Cardiomegaly": 1.0,
        "Effusion": 1.0,
        "Pneumothorax": 1.0,
    }
    assert out.loc[4, ["Effusion", "Pneumothorax"]].tolist() == [1.0, 1.0]
    rows = Rows(6, "nih", tmp_path / "t.csv")
    term_labels(terms, lookup, none_terms=["normal"], rows=rows)
    assert [(r.path, r.detail) for r in rows.rejections()] == [
        ("t.csv:6", "unknown label 'zzz'"),
        ("t.csv:7", "unknown label 'a'"),
    ]


# --- keys, extract, sizes ---------------------------------------------------------------------


def test_extract_matches_pandas():
    values = pd.Series(["a/patient1/study2/v.jpg", "bad", "", "patient3/study4/x.png"])
    pattern = r"(?:^|/)(?P<image>(?P<patient>patient\d+)/(?P<study>study\d+)/[^/]+)$"
    got = extract(values, pattern)
    want = values.str.extract(pattern)
    assert list(got.columns) == ["image", "patient", "study"]
    pd.testing.assert_frame_equal(got.astype(object), want.astype(object))


def test_to_int():
    got = to_int(pd.Series(["2592", "2592.0", "", "x", "-3", "nan"]))
    assert got.tolist() == [2592, 2592, 0, 0, 0, 0] and got.dtype == np.int64


def test_index_images_official_nih_layout(tmp_path):
    write(tmp_path / "top.png", b"x")
    write(tmp_path / "images_001" / "images" / "a.png", b"x")
    write(tmp_path / "images_002" / "images" / "b.png", b"x")
    write(tmp_path / "images_003" / "c.png", b"x")
    write(tmp_path / "images_002" / "images" / "top.png", b"x")  # root copy wins
    write(tmp_path / "other" / "d.png", b"x")
    assert index_images(tmp_path) == {
        "top.png": "top.png",
        "a.png": "images_001/images/a.png",
        "b.png": "images_002/images/b.png",
        "c.png": "images_003/c.png",
    }


# --- file verification ------------------------------------------------------------------------


def make_images(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Tiny images of several kinds; returns what their headers must say."""
    root.mkdir(parents=True, exist_ok=True)
    Image.new("L", (7, 5)).save(root / "gray.png")
    Image.fromarray(np.full((4, 6), 4000, np.uint16)).save(root / "gray16.png")
    Image.new("RGBA", (3, 9)).save(root / "rgba_named.jpg", format="PNG")  # a PNG named .jpg
    Image.new("RGB", (10, 8)).save(root / "color.jpg")
    Image.new("L", (12, 11)).save(root / "gray.jpg")
    Image.new("P", (2, 2)).save(root / "palette.png")
    return {
        "gray.png": (7, 5, 8, "MONOCHROME2"),
        "gray16.png": (6, 4, 16, "MONOCHROME2"),
        "rgba_named.jpg": (3, 9, 8, "RGBA"),
        "color.jpg": (10, 8, 8, "RGB"),
        "gray.jpg": (12, 11, 8, "MONOCHROME2"),
        "palette.png": (2, 2, 8, "PALETTE COLOR"),
    }


def test_image_header_from_content(tmp_path):
    for name, want in make_images(tmp_path).items():
        assert image_header(tmp_path / name) == want, name
    write(tmp_path / "junk.png", b"not an image at all")
    write(tmp_path / "trunc.png", (tmp_path / "gray.png").read_bytes()[:20])
    assert image_header(tmp_path / "junk.png")[0] == "unreadable_image"
    assert image_header(tmp_path / "trunc.png")[0] == "unreadable_image"
    assert image_header(tmp_path / "none.png")[0] == "missing_file"
    assert image_header(tmp_path)[0] == "missing_file"  # a folder is no image


def manifest_rows(paths: list[str]) -> pd.DataFrame:
    n = len(paths)
    frame = {
        "image_id": [f"i{i}" for i in range(n)],
        "patient_key": "p",
        "study_key": "s",
        "source": "csv",
        "path": paths,
        "view": "PA",
        "view_raw": "PA",
        "width": 99,
        "height": 99,
        "bits": 0,
        "photometric": "",
    }
    return pd.DataFrame(frame)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_verify_files_sizes_and_rejections(tmp_path, workers):
    want = make_images(tmp_path / "img")
    write(tmp_path / "img" / "junk.png", b"junk")
    paths = ["missing.png", *want, "junk.png"]
    out, rej = verify_files(manifest_rows(paths), tmp_path / "img", workers)
    assert out["path"].tolist() == list(want)
    cols = ["width", "height", "bits", "photometric"]
    got = {row.path: tuple(getattr(row, c) for c in cols) for row in out.itertuples()}
    assert got == want
    assert [(r.source, r.path, r.reason) for r in rej] == [
        ("csv", "missing.png", "missing_file"),
        ("csv", "junk.png", "unreadable_image"),
    ]
    assert rej[1].detail == "not an image format Pillow recognises"


def test_finish_invariant_and_data_root(tmp_path):
    make_images(tmp_path)
    rows = Rows(4, "csv", tmp_path / "t.csv")
    rows.reject(np.array([0, 0, 0, 1], bool), "missing_value", "blank 'path'")
    frame = manifest_rows(["gray.png", "color.jpg", "gone.png"])
    result = finish(frame, rows, tmp_path, ReadOptions(verify_files=True, salt=b"k"), 4)
    assert result.n_inputs == len(result.manifest) + len(result.rejected) == 4
    assert [r.reason for r in result.rejected] == ["missing_value", "missing_file"]
    assert result.data_root == str(tmp_path) == result.manifest.attrs["data_root"]
    assert result.manifest["Cardiomegaly"].isna().all()  # findings not given -> NaN
    off = finish(
        frame, Rows(3, "csv", tmp_path / "t.csv"), tmp_path, ReadOptions(verify_files=False), 3
    )
    assert len(off.manifest) == 3 and off.manifest["width"].tolist() == [99, 99, 99]
