"""CheXpert reader: real sample rows, uncertain and blank policies, image root, bad rows."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import SourceError
from pipelines.keys import make_key
from pipelines.labels import BLANK_POLICIES, CHEXPERT_TO_FINDINGS, FINDINGS
from pipelines.schema import MANIFEST_COLUMNS
from pipelines.sources import ReadOptions
from pipelines.sources.chexpert import read

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "real-cxr"
SAMPLE = REAL / "metadata_samples" / "chexpert_train_sample50.csv"
SALT = b"test-salt"
HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices\n"
)
UNMAPPED = [f for f in FINDINGS if f not in CHEXPERT_TO_FINDINGS.values()]
CHEXPERT_COLS = list(CHEXPERT_TO_FINDINGS.values())


def opts(**kw) -> ReadOptions:
    return ReadOptions(salt=SALT, **({"verify_files": False} | kw))


def sample() -> tuple[Path, list[dict[str, str]]]:
    if not SAMPLE.exists():
        pytest.skip(f"real data not available: {SAMPLE}")
    with SAMPLE.open(newline="") as fh:
        return SAMPLE, list(csv.DictReader(fh))


def check_invariant(result) -> None:
    assert result.n_inputs == len(result.manifest) + len(result.rejected)
    assert list(result.manifest.columns) == list(MANIFEST_COLUMNS)


def test_real_sample_views_keys_and_labels():
    table, raw = sample()
    result = read(table, opts())
    check_invariant(result)
    m = result.manifest
    assert len(m) == 50 and not result.rejected
    want_views = Counter(
        "LATERAL" if r["Frontal/Lateral"] == "Lateral" else r["AP/PA"] for r in raw
    )
    assert dict(Counter(m["view"])) == dict(want_views) == {"AP": 27, "PA": 11, "LATERAL": 12}
    assert m.loc[0, "view_raw"] == "Frontal/AP" and "Lateral" in set(m["view_raw"])
    # the CSV is not inside CheXpert-v1.0-small/: the root is its own folder
    assert result.data_root == str(table.parent)
    assert m["path"].tolist() == [r["Path"] for r in raw]
    studies = {"/".join(r["Path"].split("/")[2:4]) for r in raw}
    patients = {r["Path"].split("/")[2] for r in raw}
    assert m["study_key"].nunique() == len(studies)
    assert m["patient_key"].nunique() == len(patients)
    assert m.loc[0, "patient_key"] == make_key("patient", "chexpert:patient00001", SALT)
    assert m.loc[0, "study_key"] == make_key("study", "chexpert:patient00001/study1", SALT)
    image = "chexpert:patient00001/study1/view1_frontal.jpg"
    assert m.loc[0, "image_id"] == make_key("image", image, SALT)
    assert m[UNMAPPED].isna().all().all()  # not annotated by CheXpert
    # blank -> 0 (CheXpert: unmentioned = negative), 1 -> 1, 0 -> 0
    for column, finding in CHEXPERT_TO_FINDINGS.items():
        cells = np.array([r[column] for r in raw])
        values = m[finding].to_numpy()
        assert (values[cells == ""] == 0).all()
        assert (values[cells == "1.0"] == 1).all()
        assert (values[cells == "0.0"] == 0).all()
    assert int((m["Effusion"] == 1).sum()) == sum(r["Pleural Effusion"] == "1.0" for r in raw)


def test_uncertain_policy_changes_exactly_the_uncertain_cells():
    table, raw = sample()
    uncertain = np.array([[r[c] == "-1.0" for c in CHEXPERT_TO_FINDINGS] for r in raw], dtype=bool)
    assert uncertain.sum() == 20  # in the real sample
    cols = list(CHEXPERT_TO_FINDINGS.values())
    got = {
        p: read(table, opts(uncertain=p)).manifest[cols].to_numpy()
        for p in ("ignore", "ones", "zeros")
    }
    assert (np.isnan(got["ignore"]) == uncertain).all()
    assert (got["ones"][uncertain] == 1).all() and (got["zeros"][uncertain] == 0).all()
    certain = ~uncertain
    np.testing.assert_array_equal(got["ones"][certain], got["zeros"][certain])
    np.testing.assert_array_equal(got["ignore"][certain], got["zeros"][certain])
    assert not np.isnan(got["ones"]).any()


def write_dataset(root: Path, rows: list[str], folder: str = "CheXpert-v1.0-small") -> Path:
    table = root / folder / "train.csv"
    table.parent.mkdir(parents=True)
    table.write_text(HEADER + "".join(r + "\n" for r in rows))
    return table


def test_root_is_above_the_dataset_folder_and_files_verify(tmp_path):
    table = write_dataset(
        tmp_path,
        [
            "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,F,68,Frontal,PA,"
            + ",,1.0,,,,,,,,,,,",
            "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg,F,68,Lateral,,"
            + ",,1.0,,,,,,,,,,,",
        ],
    )
    for i, (name, size) in enumerate(
        [("view1_frontal.jpg", (9, 7)), ("view2_lateral.jpg", (5, 8))]
    ):
        path = tmp_path / "CheXpert-v1.0-small/train/patient00001/study1" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", size, color=i).save(path)
    result = read(table, opts(verify_files=True))
    check_invariant(result)
    assert result.data_root == str(tmp_path)  # the folder above CheXpert-v1.0-small
    m = result.manifest
    assert not result.rejected
    assert m[["width", "height"]].to_numpy().tolist() == [[9, 7], [5, 8]]
    assert m["view"].tolist() == ["PA", "LATERAL"] and m["study_key"].nunique() == 1
    assert m["Cardiomegaly"].tolist() == [1.0, 1.0]
    # an explicit image root wins
    other = read(table, opts(images=tmp_path / "elsewhere", verify_files=True))
    check_invariant(other)
    assert other.data_root == str(tmp_path / "elsewhere")
    assert {r.reason for r in other.rejected} == {"missing_file"}


def test_bad_rows(tmp_path):
    p = "CheXpert-v1.0-small/train/patient00009"
    table = write_dataset(
        tmp_path,
        [
            f"{p}/study1/view1_frontal.jpg,F,1,Frontal,AP,,,2.0,,,,,,,,,,,",  # out of domain
            f"{p}/view1_frontal.jpg,F,1,Frontal,AP,,,,,,,,,,,,,,",  # no study folder
            ",F,1,Frontal,AP,,,,,,,,,,,,,,",  # blank Path
            f"{p}/study2/view1_frontal.jpg,F,1,Frontal,,,,,,,,,,,,,,,",  # AP/PA blank: OTHER
            f"{p}/study2/view1_frontal.jpg,F,1,Frontal,PA,,,,,,,,,,,,,,",  # duplicate
            f"{p}/study3/view1_frontal.jpg,F,1,Frontal,LL,,,,,,,,,,,,,,",  # frontal + LL: OTHER
        ],
    )
    result = read(table, opts())
    check_invariant(result)
    got = [(r.path, r.reason) for r in result.rejected]
    assert got == [
        ("train.csv:2", "label_out_of_domain"),
        ("train.csv:3", "unparsable_path"),
        ("train.csv:4", "missing_value"),
        ("train.csv:6", "duplicate_image_id"),
    ]
    assert result.rejected[0].detail == "column 'Cardiomegaly' has value '2.0'"
    assert result.manifest["view"].tolist() == ["OTHER", "OTHER"]
    assert result.manifest["view_raw"].tolist() == ["Frontal", "Frontal/LL"]


def test_missing_label_column_is_named(tmp_path):
    table = tmp_path / "train.csv"
    table.write_text("Path,Frontal/Lateral,AP/PA,Cardiomegaly\nx,Frontal,AP,1\n")
    with pytest.raises(SourceError) as err:
        read(table, opts())
    msg = str(err.value)
    assert str(table) in msg and "'Pleural Effusion'" in msg and "'Edema'" in msg


def test_blank_policy_on_real_rows():
    table, raw = sample()
    cols = list(CHEXPERT_TO_FINDINGS.values())
    cells = np.array([[r[c] for c in CHEXPERT_TO_FINDINGS] for r in raw])
    is_blank = cells == ""
    no_finding = np.array([r["No Finding"] == "1.0" for r in raw])
    assert is_blank.sum() > 200 and no_finding.sum() > 0  # the real sample has both
    assert ReadOptions().blank == "zeros"
    got = {p: read(table, opts(blank=p)).manifest[cols].to_numpy() for p in BLANK_POLICIES}
    zeros, nan, mixed = got["zeros"], got["nan"], got["nan_unless_no_finding"]
    assert (zeros[is_blank] == 0).all()
    assert (np.isnan(nan) == (is_blank | (cells == "-1.0"))).all()  # blank or uncertain
    np.testing.assert_array_equal(nan[~is_blank], zeros[~is_blank])
    np.testing.assert_array_equal(mixed[~is_blank], zeros[~is_blank])
    healthy = is_blank & no_finding[:, None]
    assert healthy.sum() > 0 and (mixed[healthy] == 0).all()
    assert np.isnan(mixed[is_blank & ~no_finding[:, None]]).all()
    # the unmapped seven stay NaN, whatever the policy
    assert read(table, opts(blank="nan")).manifest[UNMAPPED].isna().all().all()


def test_blank_policy_on_generated_rows(tmp_path):
    p = "CheXpert-v1.0-small/train/patient00042"
    table = write_dataset(
        tmp_path,
        [
            f"{p}/study1/view1_frontal.jpg,F,50,Frontal,PA,1.0,,,,,,,,,0.0,,,,1.0",  # No Finding
            f"{p}/study2/view1_frontal.jpg,F,50,Frontal,PA,,,1.0,,,-1.0,,,,,,,,",
            f"{p}/study3/view1_frontal.jpg,F,50,Frontal,PA,0.0,,,,,,,,,,,,,",  # No Finding 0
        ],
    )
    m = {b: read(table, opts(blank=b)).manifest for b in BLANK_POLICIES}
    assert (m["zeros"].loc[0, CHEXPERT_COLS] == 0).all()
    assert (m["nan_unless_no_finding"].loc[0, CHEXPERT_COLS] == 0).all()
    assert m["nan"].loc[0, "Pneumothorax"] == 0 and m["nan"].loc[0, "Atelectasis"] != 0
    assert m["nan"].loc[0, CHEXPERT_COLS].isna().sum() == 6
    for b in ("nan", "nan_unless_no_finding"):
        row = m[b].loc[1, CHEXPERT_COLS]
        assert row["Cardiomegaly"] == 1 and row.drop("Cardiomegaly").isna().all(), b
        assert m[b].loc[2, CHEXPERT_COLS].isna().all(), b
    assert m["zeros"].loc[1, "Cardiomegaly"] == 1 and np.isnan(m["zeros"].loc[1, "Edema"])
    assert m["zeros"].loc[1, "Atelectasis"] == 0
    ones = read(table, opts(blank="nan", uncertain="ones")).manifest
    assert ones.loc[1, "Edema"] == 1 and np.isnan(ones.loc[1, "Atelectasis"])


def test_nan_unless_no_finding_needs_the_column(tmp_path):
    table = tmp_path / "train.csv"
    columns = ["Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_TO_FINDINGS]
    row = ["CheXpert-v1.0-small/train/patient1/study1/view1_frontal.jpg", "Frontal", "PA"]
    table.write_text(",".join(columns) + "\n" + ",".join(row + [""] * 7) + "\n")
    assert read(table, opts(blank="nan")).manifest[CHEXPERT_COLS].isna().all().all()
    with pytest.raises(SourceError) as err:
        read(table, opts(blank="nan_unless_no_finding"))
    assert str(table) in str(err.value) and "'No Finding'" in str(err.value)


def test_real_sample_sex_and_age_bands():
    table, raw = sample()
    m = read(table, opts()).manifest
    assert m["sex"].tolist() == [{"Female": "F", "Male": "M"}[r["Sex"]] for r in raw]
    assert dict(Counter(m["sex"])) == {"F": 37, "M": 13}
    decade = [int(r["Age"]) // 10 * 10 for r in raw]
    assert m["age_band"].tolist() == [f"{d}-{d + 9}" if d < 90 else "90+" for d in decade]
