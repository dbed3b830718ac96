"""Label coverage and the trained / not-trained rule (pipelines.coverage)."""

from __future__ import annotations

import numpy as np

from pipelines.coverage import (
    TRAINED,
    finding_status,
    is_trained,
    label_coverage,
    untrained_by_coverage,
    untrained_by_validation,
)

NAN = np.nan


def test_label_coverage_counts_positives_negatives_and_blanks():
    labels = np.array([[1, 0, NAN], [0, 0, NAN], [1, NAN, NAN], [0, 1, NAN]])
    assert label_coverage(labels, ["A", "B", "C"]) == {
        "A": {"positives": 2, "negatives": 2, "unannotated": 0},
        "B": {"positives": 1, "negatives": 2, "unannotated": 1},
        "C": {"positives": 0, "negatives": 0, "unannotated": 4},
    }


def test_too_few_training_labels_are_not_trained_with_the_counts():
    coverage = {
        "Edema": {"positives": 10, "negatives": 10, "unannotated": 0},
        "Mass": {"positives": 0, "negatives": 0, "unannotated": 20},
        "Nodule": {"positives": 9, "negatives": 11, "unannotated": 0},
    }
    out = untrained_by_coverage(coverage, min_positives=10, min_negatives=10)
    assert set(out) == {"Mass", "Nodule"}
    assert out["Nodule"] == (
        "too few labelled training studies (9 positive, 11 negative; at least 10 and 10 needed)"
    )


def test_validation_without_a_class_gives_no_threshold():
    val = np.array([[1, 0, NAN], [0, 0, NAN]])
    out = untrained_by_validation(val, ["A", "B", "C"])
    assert out == {
        "B": "no validation threshold (no labelled positive validation study)",
        "C": "no validation threshold (no labelled positive validation study)",
    }
    assert untrained_by_validation(np.zeros((0, 3)), ["A", "B", "C"]) == {}  # no validation
    assert untrained_by_validation(np.ones((2, 1)), ["A"])["A"].endswith(
        "negative validation study)"
    )


def test_finding_status_needs_coverage_and_a_threshold():
    status = finding_status(
        ["A", "B", "C"], {"B": "too few labelled training studies"}, {"A": 0.3, "B": 0.4, "C": None}
    )
    assert status == {
        "A": TRAINED,
        "B": "not trained: too few labelled training studies",
        "C": "not trained: no validation threshold",
    }
    assert [is_trained(s) for s in status.values()] == [True, False, False]
    assert set(finding_status(["A"], {}, None).values()) == {"not trained: no validation threshold"}
