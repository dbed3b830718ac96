"""The patient-wise split: fractions, pins, no leak, and independence from the secret salt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.errors import SplitLeakError
from pipelines.pair import PairParams, pair_studies
from pipelines.sources import ReadOptions, get_reader
from pipelines.split import assign_splits, check_no_leak, patient_order

fraction_weights = st.tuples(*[st.integers(0, 10)] * 3).filter(any)


def fractions_of(weights: tuple[int, int, int]) -> dict[str, float]:
    return {s: w / sum(weights) for s, w in zip(("train", "val", "test"), weights, strict=True)}


def test_leak_is_detected():
    studies = pd.DataFrame({"patient_key": ["p", "p"], "split": ["train", "test"]})
    with pytest.raises(SplitLeakError, match="1 patients"):
        check_no_leak(studies)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 500), st.integers(0, 1000), fraction_weights)
def test_split_fractions_hold_within_one_patient(n, seed, weights):
    fractions = fractions_of(weights)
    splits = assign_splits(pd.Series([f"p{i}" for i in range(n)]), fractions, seed)
    counts = splits.value_counts()
    assert counts.sum() == n and splits.notna().all() and splits.index.is_unique
    for name, frac in fractions.items():
        assert abs(counts.get(name, 0) - frac * n) <= 1
        if frac == 0:
            assert counts.get(name, 0) == 0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 60), min_size=1, max_size=120),
    st.integers(0, 1000),
    st.randoms(use_true_random=False),
)
def test_split_is_a_function_of_the_patient_set(patients, seed, rnd):
    """Duplicates and order of the input patient keys change nothing."""
    keys = pd.Series([f"p{p}" for p in patients])
    first = assign_splits(keys, PairParams().fractions, seed)
    shuffled = list(keys) + list(keys)
    rnd.shuffle(shuffled)
    pd.testing.assert_series_equal(
        first, assign_splits(pd.Series(shuffled), PairParams().fractions, seed)
    )
    assert sorted(first.index) == sorted(set(keys))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(5, 200),
    st.integers(0, 1000),
    st.lists(st.tuples(st.integers(0, 199), st.sampled_from(["val", "test"])), max_size=20),
)
def test_pinned_patients_keep_their_split_and_the_rest_share_the_others(n, seed, pins):
    keys = [f"p{i:03d}" for i in range(n)]
    pinned = {keys[i]: split for i, split in pins if i < n}
    fractions = PairParams().fractions
    splits = assign_splits(pd.Series(keys), fractions, seed, pinned)
    assert all(splits[k] == v for k, v in pinned.items())
    free = splits.drop(index=list(pinned))
    open_splits = [s for s in ("train", "val", "test") if s not in set(pinned.values())]
    assert set(free) <= set(open_splits)
    total = sum(fractions[s] for s in open_splits)
    counts = free.value_counts()
    for split in open_splits:
        assert abs(counts.get(split, 0) - fractions[split] / total * len(free)) <= 1


ROOT = "CheXpert-v1.0-small/train"


def chexpert_csv(folder: Path, n_patients: int = 60) -> Path:
    """A CheXpert-format train.csv (metadata only): 1-3 studies per patient, frontal + lateral."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(1, n_patients + 1):
        for s in range(1, int(rng.integers(1, 4)) + 1):
            for view, appa in (("frontal", "PA"), ("lateral", "")):
                rows.append(
                    {
                        "Path": f"{ROOT}/patient{p:05d}/study{s}/view1_{view}.jpg",
                        "Frontal/Lateral": view.capitalize(),
                        "AP/PA": appa,
                        **{
                            f: rng.choice(["1.0", "0.0", "", "-1.0"])
                            for f in (
                                "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                "Pleural Effusion", "Pneumonia", "Pneumothorax",
                            )
                        },
                    }
                )  # fmt: skip
    path = folder / "train.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def split_of_images(source: str, table: Path, salt: bytes) -> tuple[dict[str, str], set[str]]:
    """Image path -> split after ingest and pair with ``salt``, and the patient keys."""
    result = get_reader(source)(table, ReadOptions(verify_files=False, salt=salt))
    manifest = result.manifest
    studies, _, _ = pair_studies(manifest, PairParams(), seed=1337)
    by_path = dict(zip(studies["frontal_path"], studies["split"], strict=True))
    by_path |= {p: s for p, s in zip(studies["lateral_path"], studies["split"], strict=True) if p}
    return by_path, set(manifest["patient_key"])


def test_two_secret_salts_split_the_same_images_the_same_way(tmp_path: Path) -> None:
    table = chexpert_csv(tmp_path)
    a, keys_a = split_of_images("chexpert", table, b"one secret")
    b, keys_b = split_of_images("chexpert", table, b"another secret")
    assert a == b and len(set(a.values())) == 3
    assert not keys_a & keys_b  # the keys do change with the salt


@pytest.mark.parametrize(
    ("source", "name"),
    [("nih", "nih_cxr14_Data_Entry_sample50.csv"), ("chexpert", "chexpert_train_sample50.csv")],
)
def test_real_metadata_splits_do_not_depend_on_the_salt(real_cxr, source, name) -> None:
    table = real_cxr / "metadata_samples" / name
    a, keys_a = split_of_images(source, table, b"salt one")
    b, keys_b = split_of_images(source, table, b"salt two")
    assert a == b and len(a) > 20
    assert not keys_a & keys_b


def test_patient_order_is_the_source_and_first_path() -> None:
    manifest = pd.DataFrame(
        {
            "patient_key": ["k2", "k2", "k1"],
            "source": ["csv", "csv", "nih"],
            "path": ["b/2.png", "a/1.png", "z.png"],
        }
    )
    assert patient_order(manifest).to_dict() == {"k1": "nih\0z.png", "k2": "csv\0a/1.png"}


def test_the_order_decides_the_split_not_the_keys() -> None:
    keys = pd.Series([f"k{i:02d}" for i in range(40)])
    order = pd.Series([f"path{39 - i:02d}" for i in range(40)], index=keys)
    renamed = pd.Series([f"z{i:02d}" for i in range(40)])  # other keys, same order
    a = assign_splits(keys, PairParams().fractions, 3, order=order)
    b = assign_splits(renamed, PairParams().fractions, 3, order=order.set_axis(renamed))
    assert list(a.loc[keys]) == list(b.loc[renamed])


def test_pins_of_patients_without_a_study_are_ignored() -> None:
    """An official list naming a patient that kept no study must not fail the split."""
    keys = pd.Series(["a", "b", "c", "d"])
    splits = assign_splits(keys, PairParams().fractions, 0, {"a": "test", "gone": "test"})
    assert splits["a"] == "test" and "gone" not in splits.index
