"""The image files behind a table: the NIH layout, headers from the content, verification."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.sources.files import image_header, index_images, stored_bits, verify_files
from tests.pipelines.sources.helpers import make_images, manifest_rows, write


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


def test_image_header_from_content(tmp_path):
    for name, want in make_images(tmp_path).items():
        assert image_header(tmp_path / name) == want, name
    write(tmp_path / "junk.png", b"not an image at all")
    write(tmp_path / "trunc.png", (tmp_path / "gray.png").read_bytes()[:20])
    assert image_header(tmp_path / "junk.png")[0] == "unreadable_image"
    assert image_header(tmp_path / "trunc.png")[0] == "unreadable_image"
    assert image_header(tmp_path / "none.png")[0] == "missing_file"
    assert image_header(tmp_path)[0] == "missing_file"  # a folder is no image


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


def test_verify_files_keeps_the_bits_the_metadata_gave(tmp_path):
    want = make_images(tmp_path)
    paths = ["gray16.png", "gray16.png", "gray16.png", "gray.png", "gray.png"]
    rows = manifest_rows(paths)
    rows["bits"] = [12, 0, 20, 12, 8]  # from a source's metadata (0 = none given)
    out, rej = verify_files(rows, tmp_path)
    assert not rej
    # 12 stored bits in a 16-bit PNG stay 12; none given or more than the file holds: the file's
    assert out["bits"].tolist() == [12, 16, 16, 8, 8]
    assert out["width"].tolist() == [want[p][0] for p in paths]


def test_stored_bits():
    given = np.array([12, 0, 20, 12, 10])
    file_bits = np.array([16, 16, 16, 8, 0])
    assert stored_bits(given, file_bits).tolist() == [12, 16, 16, 8, 10]
