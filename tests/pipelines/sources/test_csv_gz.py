"""A gzip-compressed CSV (``.csv.gz``) reads like the plain one, as a file and from a folder."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipelines.errors import SourceError
from pipelines.sources import ReadOptions, get_reader
from pipelines.sources.tables import find_table, with_gz_twins

OPTS = ReadOptions(salt=b"gz-salt", verify_files=False)


def gzip_copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fin, gzip.open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    return dest


def image_list_csv(folder: Path) -> Path:
    rows = ["path,patient,study,view,labels"]
    rows += [f"p{p}_{v}.png,pat{p},st{p},{v},Effusion" for p in range(5) for v in ("PA", "L")]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "list.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def plain_and_gz(source: str, plain: Path, tmp_path: Path, name: str) -> None:
    """Read ``plain`` and its gzip twin (given as the file, then as its folder): same rows."""
    want = get_reader(source)(plain, OPTS).manifest
    assert len(want) > 5
    gz = gzip_copy(plain, tmp_path / "gz" / name / (plain.name + ".gz"))
    with gzip.open(gz, "rb") as fh:  # really compressed, not a renamed copy
        assert fh.read() == plain.read_bytes() and gz.read_bytes()[:2] == b"\x1f\x8b"
    for given in (gz, gz.parent):
        got = get_reader(source)(given, OPTS).manifest
        pd.testing.assert_frame_equal(got, want)


def test_generic_csv_gz(tmp_path: Path) -> None:
    plain_and_gz("csv", image_list_csv(tmp_path / "plain"), tmp_path, "images")


def test_openi_csv_gz(real_cxr: Path, tmp_path: Path) -> None:
    sample = real_cxr / "metadata_samples" / "openi_iu_paired_sample.csv"
    plain = tmp_path / "plain" / "openi.csv"
    plain.parent.mkdir()
    shutil.copy(sample, plain)
    plain_and_gz("openi", plain, tmp_path, "openi")


def test_chexpert_train_csv_gz(real_cxr: Path, tmp_path: Path) -> None:
    sample = real_cxr / "metadata_samples" / "chexpert_train_sample50.csv"
    plain = tmp_path / "plain" / "CheXpert-v1.0-small" / "train.csv"
    plain.parent.mkdir(parents=True)
    shutil.copy(sample, plain)
    # the twin sits in a folder named like the dataset too, so both read the same image root
    want = get_reader("chexpert")(plain, OPTS)
    gz = gzip_copy(plain, tmp_path / "gz" / "CheXpert-v1.0-small" / "train.csv.gz")
    for given in (gz, gz.parent):
        got = get_reader("chexpert")(given, OPTS)
        pd.testing.assert_frame_equal(got.manifest, want.manifest)
        assert Path(got.data_root).name == "gz" and len(got.manifest) == 50


def test_folder_with_a_table_and_its_twin_is_ambiguous(tmp_path: Path) -> None:
    plain = image_list_csv(tmp_path)
    gzip_copy(plain, tmp_path / "list.csv.gz")
    with pytest.raises(SourceError, match=r"list\.csv, list\.csv\.gz"):
        find_table(tmp_path, ["*.csv"], "image-list CSV")


def test_gz_twins_of_csv_patterns_only() -> None:
    assert with_gz_twins(["train.csv", "x.txt", "a*.csv", "a*.csv.gz"]) == [
        "train.csv",
        "train.csv.gz",
        "x.txt",
        "a*.csv",
        "a*.csv.gz",
    ]
