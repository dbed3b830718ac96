"""Row rejections: the first reason wins, row order is kept, blanks and duplicates."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.sources.rows import Rows


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
