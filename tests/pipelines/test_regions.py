"""The regions file of the synthetic set: run lengths, bounding boxes, the CSV round trip."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.regions import (
    REGION_COLUMNS,
    decode_mask,
    encode_mask,
    read_regions,
    region_row,
    write_regions,
)


@pytest.mark.parametrize("seed", range(5))
def test_run_lengths_round_trip_random_masks(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((7, 9)) < 0.4
    mask[0, 0] = bool(seed % 2)  # masks that start inside and outside
    assert np.array_equal(decode_mask(encode_mask(mask), 7, 9), mask)


def test_run_lengths_of_known_masks():
    mask = np.zeros((2, 3), dtype=bool)
    assert encode_mask(mask) == ""
    assert not decode_mask("", 2, 3).any()
    mask[0, 1:] = True  # row-major: 1 outside, 2 inside, 3 outside
    assert encode_mask(mask) == "1 2 3"
    assert encode_mask(np.ones((2, 2), dtype=bool)) == "0 4"
    with pytest.raises(ValueError, match="cover 5 pixels"):
        decode_mask("1 4", 2, 3)


def test_region_row_box_area_and_csv_round_trip(tmp_path):
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 7:11] = True
    row = region_row("ab/cd.dcm", "LATERAL", "Mass", mask)
    assert (row["x0"], row["y0"], row["x1"], row["y1"], row["area"]) == (7, 2, 11, 5, 12)
    empty = region_row("ab/cd.dcm", "PA", "Nodule", np.zeros((10, 12), dtype=bool))
    assert (empty["x1"], empty["area"], empty["rle"]) == (0, 0, "")
    write_regions(tmp_path / "regions.csv", [row, empty])
    df = read_regions(tmp_path / "regions.csv")
    assert list(df.columns) == list(REGION_COLUMNS)
    assert df["rle"].tolist() == [row["rle"], ""]
    back = decode_mask(df["rle"][0], int(df["rows"][0]), int(df["cols"][0]))
    assert np.array_equal(back, mask)
    (tmp_path / "bad.csv").write_text("file,view\n")
    with pytest.raises(ValueError, match="not a regions file"):
        read_regions(tmp_path / "bad.csv")
