"""pair stage: one row per study, view choice rules, missing-view policy, patient-wise split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.labels import FINDINGS
from pipelines.pair import PairParams, SplitLeakError, assign_splits, check_no_leak, pair_studies
from pipelines.schema import STUDY_COLUMNS, conform_manifest


def image(img: str, patient: str, study: str, view: str, w: int = 100, h: int = 100, **labels):
    row = {
        "image_id": img,
        "patient_key": patient,
        "study_key": study,
        "source": "csv",
        "path": f"{study}/{img}.png",
        "view": view,
        "view_raw": view,
        "width": w,
        "height": h,
        "bits": 8,
        "photometric": "MONOCHROME2",
    }
    return row | {f: labels.get(f, np.nan) for f in FINDINGS}


def manifest(rows) -> pd.DataFrame:
    df = conform_manifest(pd.DataFrame(rows))
    df.attrs["data_root"] = "root"
    return df


@pytest.fixture
def small():
    return manifest(
        [
            image("a1", "p1", "s1", "PA", Cardiomegaly=1.0),
            image("a2", "p1", "s1", "LATERAL", Cardiomegaly=0.0, Effusion=1.0),
            image("b1", "p1", "s2", "AP"),  # frontal only
            image("c1", "p2", "s3", "LATERAL"),  # lateral only: no frontal
            image("d1", "p3", "s4", "AP", w=500, h=500),
            image("d2", "p3", "s4", "PA", w=50, h=50),  # PA wins over a larger AP
            image("d3", "p3", "s4", "LATERAL", w=10, h=10),
            image("d4", "p3", "s4", "LATERAL", w=20, h=20),  # larger lateral wins
            image("e1", "p4", "s5", "OTHER"),
            image("e2", "p4", "s5", "PA"),
        ]
    )


def test_pair_counts_and_choices(small):
    studies, rejected, summary = pair_studies(small, PairParams(), seed=0)
    assert list(studies.columns) == list(STUDY_COLUMNS)
    assert studies.attrs["data_root"] == "root"
    by = studies.set_index("study_key")
    assert sorted(by.index) == ["s1", "s2", "s4", "s5"]
    assert by.loc["s4", "frontal_id"] == "d2"
    assert by.loc["s4", "lateral_id"] == "d4"
    assert by.loc["s2", "lateral_id"] == "" and not by.loc["s2", "has_lateral"]
    assert by.loc["s1", "has_lateral"]
    # labels: max over images; NaN only where no image is annotated
    assert by.loc["s1", "Cardiomegaly"] == 1.0
    assert by.loc["s1", "Effusion"] == 1.0
    assert np.isnan(by.loc["s1", "Hernia"])
    reasons = dict(zip(rejected["image_id"], rejected["reason"], strict=True))
    assert reasons == {
        "c1": "no_frontal",
        "d1": "extra_frontal",
        "d3": "extra_lateral",
        "e1": "other_view",
    }
    assert summary["studies"] == 4
    assert summary["dual_view"] == 2
    assert summary["frontal_only"] == 2
    assert summary["lateral_only"] == 1
    assert sum(s["studies"] for s in summary["splits"].values()) == 4
    # every image used or rejected
    assert len(studies) + studies["has_lateral"].sum() + len(rejected) == len(small)


def test_require_both_drops_frontal_only(small):
    studies, rejected, summary = pair_studies(small, PairParams(missing_view="require_both"), 0)
    assert studies["has_lateral"].all()
    assert set(rejected.loc[rejected["reason"] == "missing_lateral", "image_id"]) == {"b1", "e2"}
    assert summary["frontal_only"] == 0


def test_study_with_two_patients_is_rejected():
    m = manifest([image("a", "p1", "s1", "PA"), image("b", "p2", "s1", "LATERAL")])
    studies, rejected, _ = pair_studies(m, PairParams(), 0)
    assert studies.empty
    assert set(rejected["reason"]) == {"study_patient_conflict"}


def test_split_by_patient_fractions_and_seed():
    rows = [
        image(f"i{p}_{s}", f"p{p:03d}", f"s{p}_{s}", "PA") for p in range(200) for s in range(3)
    ]
    m = manifest(rows)
    studies, _, summary = pair_studies(m, PairParams(), seed=5)
    check_no_leak(studies)
    patients = {k: v["patients"] for k, v in summary["splits"].items()}
    assert patients == {"train": 140, "val": 30, "test": 30}
    assert all(v["studies"] == 3 * patients[k] for k, v in summary["splits"].items())
    again, _, _ = pair_studies(m.sample(frac=1.0, random_state=3), PairParams(), seed=5)
    pd.testing.assert_frame_equal(studies, again)
    other, _, _ = pair_studies(m, PairParams(), seed=6)
    assert not studies["split"].equals(other["split"])


def test_official_split_pins_patients(tmp_path):
    rows = [image(f"i{p}", f"p{p}", f"s{p}", "PA") for p in range(20)]
    rows.append(image("i0b", "p0", "s0b", "PA"))
    m = manifest(rows)
    listing = tmp_path / "test_list.txt"
    listing.write_text("i0.png\ni1.png\n")
    params = PairParams(official_split={"test": str(listing)})
    studies, _, _ = pair_studies(m, params, seed=0)
    by = studies.set_index("study_key")["split"]
    # the patient of a listed image goes to test with all its studies
    assert by["s0"] == by["s0b"] == by["s1"] == "test"
    assert set(studies.loc[~studies["study_key"].isin(["s0", "s0b", "s1"]), "split"]) <= {
        "train",
        "val",
    }


def test_leak_is_detected():
    studies = pd.DataFrame({"patient_key": ["p", "p"], "split": ["train", "test"]})
    with pytest.raises(SplitLeakError, match="1 patients"):
        check_no_leak(studies)


def test_fractions_validated():
    with pytest.raises(ValueError, match="sum to 1"):
        PairParams(fractions={"train": 0.5, "val": 0.1, "test": 0.1})


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 15),  # patient
            st.integers(0, 3),  # study within patient
            st.sampled_from(["PA", "AP", "LATERAL", "OTHER"]),
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 2**16),
    st.randoms(use_true_random=False),
)
def test_pairing_properties(rows, seed, rnd):
    m = manifest([image(f"img{i}", f"p{p}", f"p{p}s{s}", v) for i, (p, s, v) in enumerate(rows)])
    studies, rejected, _ = pair_studies(m, PairParams(), seed)
    used = [*studies["frontal_id"], *studies.loc[studies["has_lateral"], "lateral_id"]]
    # every image lands in at most one study, and is used or rejected
    assert len(used) == len(set(used))
    assert sorted(used + list(rejected["image_id"])) == sorted(m["image_id"])
    check_no_leak(studies)
    # independent of row order
    order = list(range(len(m)))
    rnd.shuffle(order)
    again, _, _ = pair_studies(m.iloc[order].reset_index(drop=True), PairParams(), seed)
    pd.testing.assert_frame_equal(studies, again)


@given(st.integers(1, 400), st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_split_fractions_hold_within_rounding(n, seed):
    splits = assign_splits(pd.Series([f"p{i}" for i in range(n)]), PairParams().fractions, seed)
    counts = splits.value_counts()
    for name, frac in PairParams().fractions.items():
        assert abs(counts.get(name, 0) - frac * n) <= 1
