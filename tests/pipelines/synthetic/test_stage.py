"""Tests for the synthesize stage (pipelines/synthetic/stage.py)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.keys import make_key
from pipelines.labels import FINDINGS
from pipelines.sources import ReadOptions
from pipelines.sources.dicom import read
from pipelines.synthetic.dicom_writer import SOP_CLASS
from pipelines.synthetic.params import SynthesizeParams
from pipelines.synthetic.plan import plan_studies
from pipelines.synthetic.render import render_view
from pipelines.synthetic.stage import main, synthesize
from pipelines.synthetic.style import SubgroupEffect

PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "StudyDate",
    "ReferringPhysicianName",
)
HEX16 = re.compile(r"^[0-9a-f]{16}$")


def small_params(out: Path, **kw) -> SynthesizeParams:
    base = dict(
        out=out,
        studies=8,
        max_studies_per_patient=3,
        size=64,
        lateral_missing=0.25,
        monochrome1=0.5,
        voi_lut=0.3,
        view_code=0.5,
        cr=0.5,
        workers=1,
        seed=3,
    )
    return SynthesizeParams(**(base | kw))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("syn") / "synthetic"
    summary = synthesize(small_params(out))
    return out, summary


def read_labels(out: Path) -> list[dict[str, str]]:
    with open(out / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------
# the files
# ---------------------------------------------------------------------------------------------
def test_files_are_valid_dicom_with_the_expected_tags(dataset):
    out, summary = dataset
    files = sorted((out / "dicom").rglob("*.dcm"))
    assert len(files) == summary["images"] == 8 + 8 - summary["lateral_missing"]
    labels = {row["study_uid"] for row in read_labels(out)}
    seen = {"photometric": set(), "voi": set(), "modality": set(), "code": set(), "bits": set()}
    sops, views_per_study = set(), {}
    for path in files:
        raw = path.read_bytes()
        assert raw[128:132] == b"DICM"  # preamble + prefix
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.Modality in ("DX", "CR")
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == SOP_CLASS[ds.Modality]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.BitsAllocated == 16 and 12 <= ds.BitsStored <= 16
        assert ds.HighBit == ds.BitsStored - 1 and ds.PixelRepresentation == 0
        assert ds.pixel_array.shape == (64, 64) and ds.pixel_array.max() < 2**ds.BitsStored
        assert ds.BodyPartExamined == "CHEST"
        assert ds.ViewPosition in ("PA", "LL")
        assert float(ds.RescaleSlope) > 0 and "RescaleIntercept" in ds
        assert ("VOILUTSequence" in ds) != ("WindowCenter" in ds)
        for kw in PHI_KEYWORDS:
            assert str(ds.get(kw, "")).strip(), f"{path.name} lacks {kw}"
        assert ds.StudyInstanceUID in labels
        sops.add(ds.SOPInstanceUID)
        views_per_study.setdefault(ds.StudyInstanceUID, []).append(ds.ViewPosition)
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["voi"].add("VOILUTSequence" in ds)
        seen["modality"].add(ds.Modality)
        seen["bits"].add(ds.BitsStored)
        if "ViewCodeSequence" in ds:
            code = ds.ViewCodeSequence[0]
            assert code.CodingSchemeDesignator == "SCT"
            assert code.CodeValue == {"PA": "399348003", "LL": "399173006"}[ds.ViewPosition]
            seen["code"].add(ds.ViewPosition)
    assert len(sops) == len(files)
    assert set(views_per_study) == labels
    assert all(sorted(v) in (["PA"], ["LL", "PA"]) for v in views_per_study.values())
    assert sum(v == ["PA"] for v in views_per_study.values()) == summary["lateral_missing"]
    # the mix the params ask for shows up even in 15 images
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["voi"] == {True, False} and seen["modality"] == {"DX", "CR"}
    assert seen["code"] and len(seen["bits"]) >= 2


def test_layout_and_labels_carry_no_phi_or_ids(dataset):
    out, _ = dataset
    secrets: set[str] = set()
    ids: set[str] = set()
    for path in (out / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for kw in PHI_KEYWORDS:
            value = str(ds.get(kw))
            secrets.add(value)
            secrets.update(p for p in value.split("^") if len(p) > 2)
        ids.update({ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID})
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        parts = rel.parts[1:] if rel.parts[0] == "dicom" else rel.parts
        for part in parts:
            stem = part.removesuffix(".dcm")
            named = part in ("labels.csv", "truth.csv", "regions.csv") or HEX16.match(stem)
            assert named, f"unexpected name {rel}"
            assert not any(s.lower() in part.lower() for s in secrets | ids), rel
    text = (out / "labels.csv").read_text()
    assert not [s for s in secrets if s in text]
    rows = read_labels(out)
    assert list(rows[0]) == ["study_uid", *FINDINGS]
    # the only id in labels.csv is the study UID (its join key), never series / SOP UIDs
    study_uids = {row["study_uid"] for row in rows}
    assert not [i for i in ids - study_uids if i in text]
    assert all(row[f] in ("0", "1", "") for row in rows for f in FINDINGS)  # "": unmentioned
    truth = (out / "truth.csv").read_text()
    assert not [s for s in secrets if s in truth]
    regions = (out / "regions.csv").read_text()  # keyed by the hex file names, no UID at all
    assert not [s for s in secrets | ids if s in regions]


def test_same_params_give_byte_identical_files_whatever_the_workers(tmp_path, dataset):
    out, _ = dataset
    again = tmp_path / "again"
    synthesize(small_params(again, workers=2))
    first, second = tree_hashes(out), tree_hashes(again)
    assert first == second and len(first) > 10
    other = tmp_path / "other"
    synthesize(small_params(other, seed=4))
    assert set(tree_hashes(other).values()).isdisjoint(first.values())


def test_rerun_replaces_but_refuses_a_foreign_folder(tmp_path):
    out = tmp_path / "syn"
    synthesize(small_params(out, studies=2))
    stale = out / "dicom" / "stale.dcm"
    stale.write_bytes(b"x")
    synthesize(small_params(out, studies=2))
    assert not stale.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a synthesize output"):
        synthesize(small_params(foreign, studies=1))
    assert (foreign / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# the study plan and the stage
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lateral_missing_share_and_prevalence_hold_on_200_studies(tmp_path):
    out = tmp_path / "syn"
    params = SynthesizeParams(out=out, studies=200, size=32, workers=2, seed=0, preset="easy")
    summary = synthesize(params)
    rows = read_labels(out)  # the easy preset: exact labels
    assert len(rows) == summary["studies"] == 200
    assert 1 < summary["patients"] < 200
    # binomial sd of a share over 200 studies: 0.021 (missing lateral), 0.028 (findings)
    assert abs(summary["lateral_missing"] / 200 - 0.1) < 3.5 * 0.021
    assert summary["images"] == 400 - summary["lateral_missing"]
    dicoms = list((out / "dicom").rglob("*.dcm"))
    assert len(dicoms) == summary["images"]
    for f in FINDINGS:
        positives = sum(row[f] == "1" for row in rows)
        assert positives == summary["positives"][f]
        assert abs(positives / 200 - 0.2) < 3.5 * 0.028 * 1.3, (f, positives)  # 1.3: patients


def test_main_writes_the_summary_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(
        "synthesize:\n  out: data/raw/synthetic\n  studies: 3\n  image_size: 32\n  workers: 1\n"
    )
    main()
    summary = json.loads(Path("metrics/synthesize.json").read_text())
    assert summary["studies"] == 3 and summary["images"] >= 3
    assert set(summary["positives"]) == set(FINDINGS)
    assert len(read_labels(Path("data/raw/synthetic"))) == 3
    Path("params.yaml").write_text("synthesize:\n  studies: 0\n")
    with pytest.raises(SystemExit, match="synthesize: .*studies"):
        main()


def test_report_labels_make_the_planted_errors_at_their_rates() -> None:
    """Label noise: missed findings, spurious ones and blanks, each near its rate."""
    from pipelines.synthetic.plan import report_labels
    from pipelines.synthetic.style import LabelNoise

    noise = LabelNoise(missed=0.2, spurious=0.05, unmentioned=0.1)
    rng = np.random.default_rng(0)
    n, present = 4000, ["Mass", "Edema"]
    rows = [report_labels(present, noise, rng) for _ in range(n)]
    labelled = [r for r in rows if r["Mass"] == r["Mass"]]
    assert abs(1 - len(labelled) / n - 0.1) < 0.015  # unmentioned: blank
    assert abs(sum(r["Mass"] == 0 for r in labelled) / len(labelled) - 0.2) < 0.02  # missed
    absent = [r["Nodule"] for r in rows if r["Nodule"] == r["Nodule"]]
    assert abs(sum(absent) / len(absent) - 0.05) < 0.012  # spurious
    exact = report_labels(present, LabelNoise(), np.random.default_rng(1))
    assert exact == {f: float(f in present) for f in FINDINGS}


def test_ingest_reads_back_each_studys_planned_sex_and_age_band(dataset):

    out, _ = dataset
    m = read(out / "dicom", ReadOptions(salt=b"s", workers=1)).manifest
    planned = {
        make_key("study", f"dicom:{j['study_uid']}", b"s"): j["attributes"]
        for j in plan_studies(small_params(out))
    }
    got = {k: {"sex": s, "age_band": a} for k, s, a in m[["study_key", "sex", "age_band"]].values}
    assert got == planned
    assert {a["sex"] for a in got.values()} <= {"F", "M"} and "" not in {
        a["age_band"] for a in got.values()
    }


def test_a_planted_subgroup_effect_draws_the_finding_fainter_in_that_group_only():

    effect = SubgroupEffect(finding="Effusion", attribute="sex", group="F", strength=0.3)
    base = small_params(Path("unused"), studies=60, preset="easy")
    plain, planted = (
        plan_studies(base),
        plan_studies(base.model_copy(update={"subgroup_effect": effect})),
    )
    for a, b in zip(plain, planted, strict=True):  # the effect draws nothing: same plan otherwise
        assert a["findings"] == b["findings"] and a["labels"] == b["labels"]
        assert a["images"] == b["images"] and a["attributes"] == b["attributes"]
        assert ("scale" in b) == (b["attributes"]["sex"] == "F") and "scale" not in a
    job = next(j for j in planted if j["attributes"]["sex"] == "F")
    style = base.style()
    seed = job["images"][0]["seed"]

    def image(findings, st):
        rng = np.random.default_rng(seed)
        return render_view(rng, 64, "PA", frozenset(findings), job["anatomy"], st)

    none = image([], style)
    full = np.abs(image(["Effusion"], style) - none).sum()
    faint = np.abs(image(["Effusion"], replace(style, scale=job["scale"])) - none).sum()
    assert 0 < faint < 0.6 * full
