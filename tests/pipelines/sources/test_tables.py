"""Reading metadata CSVs: text cells, compression, and one clear error per unreadable table."""

from __future__ import annotations

import gzip

import pytest

from pipelines.errors import SourceError
from pipelines.sources.tables import find_table, read_table
from tests.pipelines.sources.helpers import write


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
