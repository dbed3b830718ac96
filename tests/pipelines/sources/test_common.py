"""What every table reader does last: regex extraction, sizes, the packaged result."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.sources import ReadOptions
from pipelines.sources.common import extract, finish, to_int
from pipelines.sources.rows import Rows
from tests.pipelines.sources.helpers import make_images, manifest_rows


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
