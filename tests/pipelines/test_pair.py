"""pair stage: one row per study, view choice rules, missing-view policy, patient-wise split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.errors import SplitLeakError, UserError
from pipelines.labels import FINDINGS
from pipelines.pair import PairParams, pair_studies, run_pair
from pipelines.schema import STUDY_COLUMNS, conform_manifest
from pipelines.split import check_no_leak


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


def test_fractions_validated():
    with pytest.raises(ValueError, match="sum to 1"):
        PairParams(fractions={"train": 0.5, "val": 0.1, "test": 0.1})


# --- properties (hypothesis) ------------------------------------------------------------------
#
# Tolerance of the split fractions, derived from assign_splits: the N patients (shuffled) are cut
# at round(c_k * N), c_k the cumulative fractions, so split k gets round(c_k N) - round(c_{k-1} N)
# patients, and each rounding is off by at most 1/2: |n_k - f_k N| <= 1 patient, and the counts
# sum to N. The unit is the patient, never the study: a split's share of *studies* can be off by
# the studies of one patient (|S_k - f_k S| <= m when every patient has m studies), and by more
# when patients have unequal numbers of studies. With official lists, pinned patients keep their
# split and the others share the remaining splits in proportion, with the same +-1 bound.

VIEW_NAMES = ["PA", "AP", "LATERAL", "OTHER"]
SIZES = [(100, 100), (200, 100), (50, 50), (100, 200)]  # equal areas happen: ties by image_id

manifest_rows = st.lists(
    st.tuples(
        st.integers(0, 11),  # patient
        st.integers(0, 3),  # study of that patient
        st.sampled_from(VIEW_NAMES),
        st.sampled_from(SIZES),
        st.booleans(),  # the study id is shared with other patients' (a conflict when it is)
        st.sampled_from([0.0, 1.0, np.nan]),  # one finding's label on this image
    ),
    min_size=1,
    max_size=50,
)
fraction_weights = st.tuples(*[st.integers(0, 10)] * 3).filter(any)


def fractions_of(weights: tuple[int, int, int]) -> dict[str, float]:
    return {s: w / sum(weights) for s, w in zip(("train", "val", "test"), weights, strict=True)}


def hostile_manifest(rows) -> pd.DataFrame:
    return manifest(
        [
            image(
                f"img{i:02d}",
                f"p{p}",
                f"shared{s}" if shared else f"p{p}s{s}",
                view,
                *size,
                Effusion=label,
            )
            for i, (p, s, view, size, shared, label) in enumerate(rows)
        ]
    )


@settings(max_examples=30, deadline=None)
@given(
    manifest_rows,
    st.integers(0, 2**16),
    fraction_weights,
    st.sampled_from(["keep_frontal_only", "require_both"]),
    st.randoms(use_true_random=False),
)
def test_pairing_properties(rows, seed, weights, missing_view, rnd):
    m = hostile_manifest(rows)
    params = PairParams(fractions=fractions_of(weights), missing_view=missing_view)
    studies, rejected, summary = pair_studies(m, params, seed)
    by_id = m.set_index("image_id")

    # every image lands in at most one study, and is used or rejected, never both
    used = [*studies["frontal_id"], *studies.loc[studies["has_lateral"], "lateral_id"]]
    assert len(used) == len(set(used))
    assert not set(used) & set(rejected["image_id"])
    assert sorted(used + list(rejected["image_id"])) == sorted(m["image_id"])
    assert rejected["image_id"].is_unique and rejected["detail"].str.len().gt(0).all()
    # ... and in a study of its own: its study key, a frontal view as frontal, lateral as lateral
    for row in studies.itertuples():
        assert by_id.loc[row.frontal_id, "study_key"] == row.study_key
        assert by_id.loc[row.frontal_id, "view"] == row.frontal_view in ("PA", "AP")
        if row.has_lateral:
            assert by_id.loc[row.lateral_id, "study_key"] == row.study_key
            assert by_id.loc[row.lateral_id, "view"] == "LATERAL"
    assert studies["study_key"].is_unique
    if missing_view == "require_both":
        assert studies["has_lateral"].all()
    # a study keyed to two patients is never kept
    patients_per_study = m.groupby("study_key")["patient_key"].nunique()
    assert not set(studies["study_key"]) & set(patients_per_study.index[patients_per_study > 1])
    # study label: the maximum over the study's images, NaN only where none is annotated
    want = m.groupby("study_key")["Effusion"].max()
    np.testing.assert_array_equal(
        studies["Effusion"].to_numpy(), want.loc[studies["study_key"]].to_numpy()
    )

    # no patient crosses splits; every kept patient has one
    check_no_leak(studies)
    assert studies["split"].isin(["train", "val", "test"]).all()
    # split fractions hold within one patient per split
    per_split = studies.drop_duplicates("patient_key")["split"].value_counts()
    n = studies["patient_key"].nunique()
    for split, frac in params.fractions.items():
        assert abs(per_split.get(split, 0) - frac * n) <= 1

    # the result does not depend on row order
    order = list(range(len(m)))
    rnd.shuffle(order)
    shuffled = m.iloc[order].reset_index(drop=True)
    shuffled.attrs = m.attrs
    again, rejected_again, summary_again = pair_studies(shuffled, params, seed)
    pd.testing.assert_frame_equal(studies, again)
    key = ["image_id"]
    pd.testing.assert_frame_equal(
        rejected.sort_values(key).reset_index(drop=True),
        rejected_again.sort_values(key).reset_index(drop=True),
    )
    assert {k: v for k, v in summary.items() if k != "seconds"} == {
        k: v for k, v in summary_again.items() if k != "seconds"
    }


@settings(max_examples=20, deadline=None)
@given(st.integers(3, 60), st.integers(1, 4), st.integers(0, 1000))
def test_study_fractions_hold_within_one_patients_studies(n_patients, m, seed):
    """m studies per patient: a split holds its share of studies within m (1 patient x m)."""
    rows = [
        image(f"i{p}_{s}", f"p{p:03d}", f"s{p}_{s}", "PA")
        for p in range(n_patients)
        for s in range(m)
    ]
    studies, _, _ = pair_studies(manifest(rows), PairParams(), seed)
    counts = studies["split"].value_counts()
    for split, frac in PairParams().fractions.items():
        assert abs(counts.get(split, 0) - frac * len(studies)) <= m


# --- official split files, the manifest's official_split column, a held-out source ------------


def two_source_manifest(n_a: int = 120, n_b: int = 30) -> pd.DataFrame:
    """Patients of source 'nih' (2 studies each) and 'padchest' (1 study each)."""
    rows = [
        image(f"n{p}_{s}", f"nih{p}", f"ns{p}_{s}", "PA") | {"source": "nih"}
        for p in range(n_a)
        for s in range(2)
    ]
    rows += [image(f"q{p}", f"pad{p}", f"qs{p}", "PA") | {"source": "padchest"} for p in range(n_b)]
    return manifest(rows)


def test_a_split_table_pins_patients_and_the_summary_counts_its_matches(tmp_path):
    rows = [image(f"dcm{p}", f"p{p}", f"s{p}", "PA") for p in range(30)]
    m = manifest(rows)
    m["path"] = "files/p10/p1000/s" + m["study_key"] + "/" + m["image_id"] + ".jpg"
    table = tmp_path / "mimic-cxr-2.0.0-split.csv.gz"
    listed = [(f"dcm{p}", "validate") for p in range(3)] + [(f"dcm{p}", "test") for p in (3, 4)]
    pd.DataFrame(
        [(d, "5", "1", s) for d, s in [*listed, ("absent", "train")]],
        columns=["dicom_id", "study_id", "subject_id", "split"],
    ).to_csv(table, index=False)
    studies, _, summary = pair_studies(m, PairParams(official_split=str(table)), seed=0)
    by = studies.set_index("patient_key")["split"]
    assert list(by[["p0", "p1", "p2"]]) == ["val"] * 3 and list(by[["p3", "p4"]]) == ["test"] * 2
    # train was listed (one row that matched nothing), so the 25 free patients share all splits
    assert summary["official_split"]["files"][str(table)] | {"by_split": None} == {
        "rows": 6, "matched": 5, "unmatched": 1, "images_pinned": 5, "patients_pinned": 5,
        "by_split": None,
    }  # fmt: skip
    assert summary["official_split"]["patients_pinned"] == {"train": 0, "val": 3, "test": 2}
    assert summary["official_split"]["manifest_column"] is None
    assert summary["holdout_source"] is None and summary["holdout_patients"] == 0
    assert summary["studies_by_source"] == {
        s: {"csv": summary["splits"][s]["studies"]} for s in ("train", "val", "test")
    }


def test_the_manifest_official_split_column_pins_with_and_without_lists(tmp_path):
    rows = [image(f"i{p}", f"p{p}", f"s{p}", "PA") for p in range(20)]
    plain = manifest(rows)
    with_column = plain.assign(official_split=[""] * 17 + ["test", "test", "val"])
    studies, _, summary = pair_studies(with_column, PairParams(), seed=0)
    by = studies.set_index("patient_key")["split"]
    assert list(by[["p17", "p18", "p19"]]) == ["test", "test", "val"]
    assert summary["official_split"]["manifest_column"]["patients_pinned"] == 3
    assert summary["official_split"]["patients_pinned"] == {"train": 0, "val": 1, "test": 2}
    # without the column: no pin, the same split as before the column existed
    _, _, summary = pair_studies(plain, PairParams(), seed=0)
    assert summary["official_split"] == {
        "files": {},
        "manifest_column": None,
        "patients_pinned": {"train": 0, "val": 0, "test": 0},
    }
    listing = tmp_path / "test_list.txt"
    listing.write_text("i19.png\n")  # the column says val
    with pytest.raises(SplitLeakError, match=r"official_split column.*'val'.*'test' by"):
        pair_studies(with_column, PairParams(official_split={"test": str(listing)}), seed=0)


@pytest.mark.parametrize("seed", [0, 7])
def test_a_held_out_source_is_the_test_split(seed):
    m = two_source_manifest()
    studies, _, summary = pair_studies(m, PairParams(holdout_source="padchest"), seed)
    check_no_leak(studies)
    per_source = studies.drop_duplicates("patient_key").groupby("source")["split"]
    assert set(studies.loc[studies["source"] == "padchest", "split"]) == {"test"}
    assert set(studies.loc[studies["source"] == "nih", "split"]) == {"train", "val"}
    # train:val follows the fractions 0.7 : 0.15 among the 120 other patients (98.8 : 21.2)
    assert per_source.value_counts()["nih"].to_dict() == {"train": 99, "val": 21}
    assert summary["studies_by_source"] == {
        "train": {"nih": 198}, "val": {"nih": 42}, "test": {"padchest": 30}
    }  # fmt: skip
    assert summary["holdout_source"] == "padchest" and summary["holdout_patients"] == 30


def test_a_held_out_source_with_an_official_list(tmp_path):
    m = two_source_manifest()
    listing = tmp_path / "test_list.txt"
    listing.write_text("n0_0.png\nn1_1.png\n")  # two nih patients in test too
    params = PairParams(official_split={"test": str(listing)}, holdout_source="padchest")
    studies, _, summary = pair_studies(m, params, seed=0)
    assert summary["studies_by_source"]["test"] == {"nih": 4, "padchest": 30}
    free = studies[(studies["source"] == "nih") & ~studies["patient_key"].isin(["nih0", "nih1"])]
    assert free.drop_duplicates("patient_key")["split"].value_counts().to_dict() == {
        "train": 97, "val": 21  # 118 * 0.7 / 0.85 = 97.2
    }  # fmt: skip
    listing.write_text("q3.png\n")  # a held-out patient
    train = params.model_copy(update={"official_split": {"train": str(listing)}})
    with pytest.raises(SplitLeakError, match=r"holdout_source 'padchest'.*'train' by"):
        pair_studies(m, train, seed=0)


def test_an_unknown_held_out_source_lists_the_sources():
    with pytest.raises(UserError, match=r"no source 'mimic'; its sources are nih, padchest"):
        pair_studies(two_source_manifest(), PairParams(holdout_source="mimic"), seed=0)


def test_pins_that_empty_a_split_are_logged(tmp_path, caplog):
    rows = [image(f"i{p}", f"p{p}", f"s{p}", "PA") for p in range(6)]
    train, test = tmp_path / "train_val_list.txt", tmp_path / "test_list.txt"
    train.write_text("".join(f"i{p}.png\n" for p in range(4)))
    test.write_text("i4.png\ni5.png\n")
    params = PairParams(official_split={"train": str(train), "test": str(test)})
    with caplog.at_level("WARNING", logger="pipelines.pair"):
        _, _, summary = pair_studies(manifest(rows), params, seed=0)
    assert [summary["splits"][s]["patients"] for s in ("train", "val", "test")] == [4, 0, 2]
    assert any("the val split has no study" in r.getMessage() for r in caplog.records)


def test_official_split_params(tmp_path):
    assert PairParams(official_split="split.csv.gz").official_split == "split.csv.gz"
    assert PairParams(official_split={}).official_split is None
    with pytest.raises(ValueError, match="unknown split"):
        PairParams(official_split={"validate": "x.txt"})
    missing = tmp_path / "missing_list.txt"
    params = PairParams(
        manifest=str(tmp_path / "no_manifest.parquet"), official_split={"test": str(missing)}
    )  # the missing list is named before the (also missing) manifest
    with pytest.raises(UserError, match=r"missing_list\.txt: official 'test' list not found"):
        run_pair(params, seed=0)


def test_studies_carry_the_frontal_images_sex_and_age_band():
    rows = [
        image("a1", "p1", "s1", "PA") | {"sex": "F", "age_band": "60-69"},
        image("a2", "p1", "s1", "LATERAL") | {"sex": "F", "age_band": "70-79"},  # not the frontal
        image("b1", "p2", "s2", "AP") | {"sex": "", "age_band": ""},
        image("c1", "p3", "s3", "PA"),  # a source that gives neither
    ]
    studies, _, _ = pair_studies(manifest(rows), PairParams(), seed=0)
    got = studies.set_index("study_key")[["sex", "age_band"]].to_dict("index")
    assert got == {
        "s1": {"sex": "F", "age_band": "60-69"},
        "s2": {"sex": "", "age_band": ""},
        "s3": {"sex": "", "age_band": ""},
    }
