"""Label parsing of the table readers: coded columns and term lists."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.labels import FINDINGS
from pipelines.sources.label_parsing import coded_labels, term_labels
from pipelines.sources.rows import Rows


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
