"""The patient-wise split: fractions, pins, no leak, and independence from the secret salt."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.errors import SplitLeakError, UserError
from pipelines.pair import PairParams, pair_studies
from pipelines.schema import conform_manifest
from pipelines.sources import ReadOptions, get_reader
from pipelines.split import (
    Pins,
    assign_splits,
    check_no_leak,
    holdout_pins,
    official_pins,
    patient_order,
)

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


# --- official split files, the manifest's official_split column, a held-out source ------------


def mimic_manifest(n_patients: int = 6, source: str = "mimic") -> pd.DataFrame:
    """Two images per patient, MIMIC-JPG style paths: files/pNN/pXXXX/sYYYY/<dicom_id>.jpg."""
    rows = []
    for p in range(n_patients):
        for i in range(2):
            dicom = f"{p:02d}aa{i}-bde0afdd"
            rows.append(
                {
                    "image_id": f"{source}-img{p}-{i}",
                    "patient_key": f"{source}-pat{p}",
                    "study_key": f"{source}-st{p}",
                    "source": source,
                    "path": f"files/p10/p100000{p:02d}/s5000{p:02d}/{dicom}.jpg",
                    "view": "PA" if i == 0 else "LATERAL",
                    "view_raw": "PA",
                    "width": 10,
                    "height": 10,
                    "bits": 8,
                    "photometric": "MONOCHROME2",
                }
            )
    return conform_manifest(pd.DataFrame(rows))


def split_table(path: Path, rows: list[tuple[str, str]], key: str = "dicom_id") -> Path:
    frame = pd.DataFrame(rows, columns=[key, "split"])
    if key == "dicom_id":  # the released file's other columns
        frame.insert(1, "study_id", "50414267")
        frame.insert(2, "subject_id", "10000032")
    frame.to_csv(path, index=False)  # compressed by the suffix when it is .gz
    return path


def test_mimic_split_table_gz_pins_patients_and_validate_is_val(tmp_path: Path) -> None:
    m = mimic_manifest()
    table = split_table(
        tmp_path / "mimic-cxr-2.0.0-split.csv.gz",
        [("00aa0-bde0afdd", "train"), ("01aa1-bde0afdd", "validate"), ("02aa0-bde0afdd", "TEST"),
         ("02aa1-bde0afdd", "test"), ("03aa0-bde0afdd", "Validate")],
    )  # fmt: skip
    assert table.read_bytes()[:2] == b"\x1f\x8b"  # really gzip
    pins = official_pins(m, str(table))
    assert pins.split == {
        "mimic-pat0": "train",
        "mimic-pat1": "val",
        "mimic-pat2": "test",
        "mimic-pat3": "val",
    }
    assert pins.files == {
        str(table): {
            "rows": 5, "matched": 5, "unmatched": 0, "images_pinned": 5, "patients_pinned": 4,
            "by_split": {
                "train": {"rows": 1, "matched": 1, "images_pinned": 1, "patients_pinned": 1},
                "val": {"rows": 2, "matched": 2, "images_pinned": 2, "patients_pinned": 2},
                "test": {"rows": 2, "matched": 2, "images_pinned": 2, "patients_pinned": 1},
            },
        }
    }  # fmt: skip
    assert pins.manifest_column is None and pins.per_split() == {"train": 1, "val": 2, "test": 1}


def test_a_partial_match_is_logged_with_its_counts(tmp_path: Path, caplog) -> None:
    table = split_table(
        tmp_path / "split.csv",
        [("00aa0-bde0afdd", "test"), ("99aa0-gone", "test"), ("98aa0-gone", "train")],
    )
    with caplog.at_level(logging.WARNING, logger="pipelines.split"):
        pins = official_pins(mimic_manifest(), str(table))
    assert pins.split == {"mimic-pat0": "test"}
    assert pins.files[str(table)]["matched"] == 1 and pins.files[str(table)]["unmatched"] == 2
    assert pins.files[str(table)]["by_split"]["train"] == {
        "rows": 1, "matched": 0, "images_pinned": 0, "patients_pinned": 0
    }  # fmt: skip
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "split.csv: 1 of 3 official split rows match" in record.getMessage()
    assert "2 unmatched" in record.getMessage()


def test_a_file_matching_no_image_is_refused(tmp_path: Path) -> None:
    table = split_table(tmp_path / "split.csv.gz", [("x", "test"), ("y", "train"), ("z", "val")])
    with pytest.raises(UserError, match=r"split\.csv\.gz: .*0 of 3 rows matched.*00000001_000"):
        official_pins(mimic_manifest(), str(table))
    listing = tmp_path / "test_list.txt"
    listing.write_text("00000001_000.png\n")
    with pytest.raises(UserError, match=r"test_list\.txt: .*0 of 1 rows matched"):
        official_pins(mimic_manifest(), {"test": str(listing)})


def test_a_generic_table_names_images_by_file_name_or_path(tmp_path: Path) -> None:
    m = mimic_manifest()
    by_name = split_table(
        tmp_path / "nih.csv",
        [("00aa0-bde0afdd.jpg", "valid"), ("01aa1-bde0afdd.jpg", "Test")],
        key="Image Index",
    )
    assert official_pins(m, str(by_name)).split == {"mimic-pat0": "val", "mimic-pat1": "test"}
    by_path = split_table(
        tmp_path / "paths.csv",
        [("files/p10/p10000004/s500004/04aa1-bde0afdd.jpg", "validation"), ("01aa1", "test")],
        key="path",
    )  # a path matches the manifest path; a stem does not match outside a dicom_id column
    pins = official_pins(m, str(by_path))
    assert pins.split == {"mimic-pat4": "val"} and pins.files[str(by_path)]["matched"] == 1


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([("00aa0-bde0afdd", "holdout"), ("01aa0-bde0afdd", "train"), ("x", "holdout")],
         r"bad\.csv: the split value 'holdout' in 2 of 3 rows is not train, val"),
        ([("00aa0-bde0afdd", "")], r"bad\.csv: the split value '' in 1 of 1 rows"),
    ],
)  # fmt: skip
def test_a_bad_split_value_names_the_file_the_value_and_its_rows(tmp_path, rows, match) -> None:
    with pytest.raises(UserError, match=match):
        official_pins(mimic_manifest(), str(split_table(tmp_path / "bad.csv", rows)))


def test_a_table_needs_a_split_and_a_name_column(tmp_path: Path) -> None:
    no_split = tmp_path / "a.csv"
    no_split.write_text("dicom_id,study_id\n00aa0-bde0afdd,1\n")
    with pytest.raises(UserError, match=r"a\.csv: .*no 'split' column.*SPLIT=LIST"):
        official_pins(mimic_manifest(), str(no_split))
    no_name = tmp_path / "b.csv"
    no_name.write_text("study_id,split\n1,test\n")
    with pytest.raises(UserError, match=r"b\.csv: .*none of the columns dicom_id, path, image"):
        official_pins(mimic_manifest(), str(no_name))
    with pytest.raises(UserError, match=r"nope\.csv: official split table not found"):
        official_pins(mimic_manifest(), str(tmp_path / "nope.csv"))


def test_one_image_in_two_splits_of_a_table_is_a_leak(tmp_path: Path) -> None:
    table = split_table(
        tmp_path / "t.csv", [("00aa0-bde0afdd", "test"), ("00aa0-bde0afdd", "train")]
    )
    with pytest.raises(SplitLeakError, match=r"t\.csv: 1 image\(s\) are listed in two splits"):
        official_pins(mimic_manifest(), str(table))


def test_gz_lists_and_a_patient_in_two_lists(tmp_path: Path) -> None:
    test_list = tmp_path / "test_list.txt.gz"
    with gzip.open(test_list, "wt") as fh:
        fh.write("00aa0-bde0afdd.jpg\n01aa0-bde0afdd.jpg\n")
    train_list = tmp_path / "train_val_list.txt"
    train_list.write_text("02aa1-bde0afdd.jpg\n\n")
    pins = official_pins(mimic_manifest(), {"test": str(test_list), "train": str(train_list)})
    assert pins.split == {"mimic-pat0": "test", "mimic-pat1": "test", "mimic-pat2": "train"}
    assert pins.files[str(test_list)]["by_split"] == {
        "test": {"rows": 2, "matched": 2, "images_pinned": 2, "patients_pinned": 2}
    }
    train_list.write_text("00aa1-bde0afdd.jpg\n")  # the other image of a test patient
    with pytest.raises(SplitLeakError, match=r"train_val_list\.txt: 1 patient.*'test' by .*test"):
        official_pins(mimic_manifest(), {"test": str(test_list), "train": str(train_list)})


def with_official_column(m: pd.DataFrame, values: dict[int, str]) -> pd.DataFrame:
    """``m`` with an ``official_split`` column: ``values`` by row, blank elsewhere."""
    column = pd.Series("", index=m.index, dtype=object)
    for row, value in values.items():
        column.iloc[row] = value
    return m.assign(official_split=column)


def test_the_manifest_official_split_column_pins_its_patients(tmp_path: Path) -> None:
    m = with_official_column(mimic_manifest(), {0: "test", 1: "test", 4: "Valid", 6: "train"})
    pins = official_pins(m, None)
    assert pins.split == {"mimic-pat0": "test", "mimic-pat2": "val", "mimic-pat3": "train"}
    assert pins.manifest_column == {
        "images_pinned": 4, "patients_pinned": 3,
        "by_split": {"train": {"images_pinned": 1, "patients_pinned": 1},
                     "val": {"images_pinned": 1, "patients_pinned": 1},
                     "test": {"images_pinned": 2, "patients_pinned": 1}},
    }  # fmt: skip
    assert official_pins(mimic_manifest(), None).manifest_column is None  # no column: no pins
    # with a list: agreeing pins combine, a conflict names both
    listing = tmp_path / "test_list.txt"
    listing.write_text("05aa0-bde0afdd.jpg\n")
    assert official_pins(m, {"test": str(listing)}).per_split() == {"train": 1, "val": 1, "test": 2}
    listing.write_text("03aa0-bde0afdd.jpg\n")
    with pytest.raises(SplitLeakError, match=r"official_split column: 1 patient.*'train' there.*"
                       r"'test' by .*test_list\.txt"):  # fmt: skip
        official_pins(m, {"test": str(listing)})
    with pytest.raises(UserError, match=r"official_split column: the split value 'x' in 1 of 1"):
        official_pins(with_official_column(mimic_manifest(), {0: "x"}), None)
    with pytest.raises(SplitLeakError, match="official_split column"):
        official_pins(with_official_column(mimic_manifest(), {0: "test", 1: "train"}), None)


def two_sources() -> pd.DataFrame:
    return pd.concat([mimic_manifest(40, "mimic"), mimic_manifest(10, "chexpert")])


def test_holdout_pins_every_patient_of_the_source_to_test(tmp_path: Path) -> None:
    m = two_sources()
    pins = official_pins(m, None)
    assert holdout_pins(m, "chexpert", pins) == 10
    assert pins.split == {f"chexpert-pat{p}": "test" for p in range(10)}
    with pytest.raises(UserError, match=r"no source 'padchest'; its sources are chexpert, mimic"):
        holdout_pins(m, "padchest", official_pins(m, None))
    with pytest.raises(UserError, match="'mimic' is the manifest's only source"):
        holdout_pins(mimic_manifest(), "mimic", Pins())
    # a held-out patient an official list puts in train is a leak
    listing = tmp_path / "train_list.txt"
    listing.write_text("01aa0-bde0afdd.jpg\n")  # the file name is in both sources
    pins = official_pins(m, {"train": str(listing)})
    with pytest.raises(SplitLeakError, match=r"holdout_source 'chexpert': 1 patient.*'train' by"):
        holdout_pins(m, "chexpert", pins)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 300), st.integers(1, 40), st.integers(0, 1000), fraction_weights)
def test_a_closed_split_takes_no_free_patient(n_free, n_held, seed, weights):
    """Held out: test holds the pinned patients only; train:val follows the fractions."""
    fractions = fractions_of(weights)
    keys = [f"f{i}" for i in range(n_free)] + [f"h{i}" for i in range(n_held)]
    pinned = {f"h{i}": "test" for i in range(n_held)}
    splits = assign_splits(pd.Series(keys), fractions, seed, pinned, closed=("test",))
    assert (splits[list(pinned)] == "test").all()
    free = splits.drop(index=list(pinned))
    assert "test" not in set(free)
    assert free.notna().all()
    share = fractions["train"] + fractions["val"]
    for split in ("train", "val"):
        want = fractions[split] / share * n_free if share else n_free / 2  # 0 and 0: equally
        assert abs((free == split).sum() - want) <= 1


def test_free_patients_get_a_split_when_the_open_splits_have_no_fraction() -> None:
    keys = pd.Series([f"k{i}" for i in range(10)])
    fractions = {"train": 0.0, "val": 0.0, "test": 1.0}
    splits = assign_splits(keys, fractions, 0, {"k0": "test"})
    assert splits.value_counts().to_dict() == {"train": 4, "val": 5, "test": 1}  # round(4.5)
    held = assign_splits(keys, PairParams().fractions, 0, {"k0": "test"}, closed=("test",))
    assert held.value_counts().to_dict() == {"train": 7, "val": 2, "test": 1}  # 9 * 0.7 / 0.85


def test_mimic_reader_and_its_released_split_file(tmp_path: Path) -> None:
    """The MIMIC reader's manifest and mimic-cxr-2.0.0-split.csv.gz: pinned by dicom_id."""
    meta, labels, split = [], [], []
    for p in range(12):
        subject, study = f"100000{p:02d}", f"5000{p:04d}"
        labels.append({"subject_id": subject, "study_id": study, "Edema": "1.0"})
        for i, view in enumerate(("PA", "LATERAL")):
            dicom = f"{p:02d}{i}-abc"
            meta.append(
                {"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": view}
            )
            split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject,
                          "split": ("train", "validate", "test")[p % 3]})  # fmt: skip
    folder = tmp_path / "mimic"
    folder.mkdir()
    pd.DataFrame(meta).to_csv(folder / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    label_file = folder / "mimic-cxr-2.0.0-chexpert.csv.gz"
    pd.DataFrame(labels).reindex(
        columns=["subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation",
                 "Edema", "Pleural Effusion", "Pneumonia", "Pneumothorax"]
    ).to_csv(label_file, index=False)  # blank cells: not mentioned  # fmt: skip
    table = folder / "mimic-cxr-2.0.0-split.csv.gz"
    pd.DataFrame(split).to_csv(table, index=False)
    options = ReadOptions(verify_files=False, salt=b"s", labels=label_file)
    manifest = get_reader("mimic")(folder, options).manifest
    studies, _, summary = pair_studies(manifest, PairParams(official_split=str(table)), seed=3)
    want = {f"5000{p:04d}": ("train", "val", "test")[p % 3] for p in range(12)}
    got = studies.set_index(studies["frontal_path"].str.split("/").str[3].str[1:])["split"]
    assert got.to_dict() == want
    assert summary["official_split"]["files"][str(table)]["images_pinned"] == 24
    assert summary["official_split"]["patients_pinned"] == {"train": 4, "val": 4, "test": 4}
