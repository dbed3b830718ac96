"""Tests for the embedded synthetic dataset (pipelines/synthetic.py)."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.config import parse_section
from pipelines.errors import ConfigError
from pipelines.labels import FINDINGS
from pipelines.synthetic import (
    FRONTAL_ONLY_FINDINGS,
    LATERAL_ONLY_FINDINGS,
    SOP_CLASS,
    VISIBILITY,
    SynthesizeParams,
    _plan,
    main,
    next_study,
    render_view,
    sample_anatomy,
    synthesize,
    write_dicom,
)

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


def display(ds: pydicom.Dataset) -> np.ndarray:
    """Display image in [0, 1] by the DICOM rules, computed here independently of the writer."""
    ov = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        n, first, bits = item.LUTDescriptor
        n = n or 65536
        lut = (
            np.frombuffer(item.LUTData, dtype="<u2")
            if isinstance(item.LUTData, bytes)
            else (np.asarray(item.LUTData))
        )
        y = lut[np.clip(np.rint(ov - first).astype(int), 0, n - 1)] / (2**bits - 1)
    else:
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        y = np.clip((ov - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    return 1.0 - y if ds.PhotometricInterpretation == "MONOCHROME1" else y


def pydicom_display(ds: pydicom.Dataset) -> np.ndarray:
    """The same through pydicom's own modality + VOI LUT functions (what a reader may use)."""
    ov = apply_modality_lut(ds.pixel_array, ds)
    if "VOILUTSequence" in ds:
        y = apply_voi_lut(np.rint(ov).astype(np.int64), ds) / (
            2 ** ds.VOILUTSequence[0].LUTDescriptor[2] - 1
        )
    else:  # pydicom scales the window output to the modality output range
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        y_min, y_max = intercept, (2**ds.BitsStored - 1) * slope + intercept
        y = (apply_voi_lut(ov, ds) - y_min) / (y_max - y_min)
    return 1.0 - y if ds.PhotometricInterpretation == "MONOCHROME1" else y


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
            assert part == "labels.csv" or HEX16.match(stem), f"unexpected name {rel}"
            assert not any(s.lower() in part.lower() for s in secrets | ids), rel
    text = (out / "labels.csv").read_text()
    assert not [s for s in secrets if s in text]
    rows = read_labels(out)
    assert list(rows[0]) == ["study_uid", *FINDINGS]
    # the only id in labels.csv is the study UID (its join key), never series / SOP UIDs
    study_uids = {row["study_uid"] for row in rows}
    assert not [i for i in ids - study_uids if i in text]
    assert all(row[f] in ("0", "1") for row in rows for f in FINDINGS)


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
# the pixels as stored
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bits", "rescale", "lut"),
    [(12, (1.0, 0.0), False), (16, (1.0, -1024.0), False), (14, (2.0, 0.0), True)],
)
def test_monochrome1_stores_the_inversion_and_displays_the_same(tmp_path, bits, rescale, lut):
    rng = np.random.default_rng(0)
    image = render_view(rng, 48, "PA", frozenset({"Nodule"}), sample_anatomy(rng))
    uids = {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "SOPInstanceUID": "1.2.5"}
    common = dict(
        bits_stored=bits,
        view_position="PA",
        modality="DX",
        uids=uids,
        phi={"PatientID": "X"},
        voi_lut_sequence=lut,
        rescale=rescale,
        value_range=(0.05, 0.9),
    )
    write_dicom(tmp_path / "m2.dcm", image, photometric="MONOCHROME2", **common)
    write_dicom(tmp_path / "m1.dcm", image, photometric="MONOCHROME1", **common)
    m2, m1 = pydicom.dcmread(tmp_path / "m2.dcm"), pydicom.dcmread(tmp_path / "m1.dcm")
    top = 2**bits - 1
    np.testing.assert_array_equal(m1.pixel_array.astype(int), top - m2.pixel_array.astype(int))
    lo, hi = round(0.05 * top), round(0.9 * top)
    expected = lo + np.rint(image.astype(np.float64) * (hi - lo))
    np.testing.assert_array_equal(m2.pixel_array, expected)
    step = 1.0 / (hi - lo)
    for ds in (m1, m2):
        assert ("VOILUTSequence" in ds) == lut
        np.testing.assert_allclose(display(ds), image, atol=step / 2 + 2 / 65535)
        np.testing.assert_allclose(pydicom_display(ds), image, atol=step / 2 + 2 / 65535)


def test_write_dicom_rejects_bad_arguments(tmp_path):
    image = np.zeros((8, 8), np.float32)
    uids = {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3", "SOPInstanceUID": "1.4"}
    kw = dict(bits_stored=12, view_position="PA", modality="DX", uids=uids, phi={})
    with pytest.raises(ValueError, match="photometric"):
        write_dicom(tmp_path / "a.dcm", image, photometric="RGB", **kw)
    with pytest.raises(ValueError, match="values must lie"):
        write_dicom(tmp_path / "a.dcm", image + 2, photometric="MONOCHROME2", **kw)
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        write_dicom(tmp_path / "a.dcm", image, photometric="MONOCHROME2", **kw | {"phi": {"X": 1}})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# the renderer
# ---------------------------------------------------------------------------------------------
def test_visibility_table():
    assert set(VISIBILITY) == set(FINDINGS)
    assert len(LATERAL_ONLY_FINDINGS) >= 3
    for f in LATERAL_ONLY_FINDINGS:
        assert VISIBILITY[f] == {"frontal": False, "lateral": True}
    for f in FRONTAL_ONLY_FINDINGS:
        assert VISIBILITY[f] == {"frontal": True, "lateral": False}
    assert all(any(v.values()) for v in VISIBILITY.values())


def _pair(seed: int, view: str, findings: frozenset[str], size: int = 64) -> np.ndarray:
    anatomy = sample_anatomy(np.random.default_rng(seed))
    return render_view(np.random.default_rng(seed + 100), size, view, findings, anatomy)


@pytest.mark.parametrize("finding", FINDINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_each_finding_shows_where_it_is_visible_and_only_there(finding, seed):
    for view, key in (("PA", "frontal"), ("LATERAL", "lateral")):
        base = _pair(seed, view, frozenset())
        with_it = _pair(seed, view, frozenset({finding}))
        assert base.dtype == np.float32 and base.min() >= 0 and base.max() <= 1
        diff = np.abs(with_it - base)
        if VISIBILITY[finding][key]:
            # a region of clearly changed pixels, not a faint global shift
            assert diff.max() > 0.12, (view, diff.max())
            assert (diff > 0.05).sum() >= 6, (view, (diff > 0.05).sum())
        else:
            np.testing.assert_array_equal(with_it, base)


def test_findings_are_distinct_from_each_other():
    """The change each finding makes (over both views) differs from every other's."""
    changes = []
    for f in FINDINGS:
        d = [_pair(5, v, frozenset({f})) - _pair(5, v, frozenset()) for v in ("PA", "LATERAL")]
        changes.append(np.concatenate([x.ravel() for x in d]))
    corr = np.corrcoef(np.stack(changes))
    off = corr[~np.eye(len(FINDINGS), dtype=bool)]
    assert off.max() < 0.9, off.max()


def test_a_finding_seen_on_both_views_sits_at_the_same_level():
    for seed in range(3):
        levels = []
        for view in ("PA", "LATERAL"):
            diff = np.abs(
                _pair(seed, view, frozenset({"Nodule"}), 128) - _pair(seed, view, frozenset(), 128)
            )
            rows = diff.sum(axis=1)
            levels.append((rows * np.arange(128)).sum() / rows.sum())
        assert abs(levels[0] - levels[1]) < 0.1 * 128, levels


def test_render_view_is_deterministic_and_validates():
    an = sample_anatomy(np.random.default_rng(2))
    a = render_view(np.random.default_rng(9), 32, "LATERAL", frozenset({"Edema"}), an)
    b = render_view(np.random.default_rng(9), 32, "LATERAL", frozenset({"Edema"}), an)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (32, 32)
    # another study of the same patient keeps chronic geometry, varies the rest
    later = next_study(an, np.random.default_rng(1))
    assert later.patient_seed == an.patient_seed and later.study_seed != an.study_seed
    with pytest.raises(ValueError, match="unknown findings"):
        render_view(np.random.default_rng(0), 32, "PA", frozenset({"Fracture"}), an)
    with pytest.raises(ValueError, match="view"):
        render_view(np.random.default_rng(0), 32, "AP", frozenset(), an)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# the study plan and the stage
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lateral_missing_share_and_prevalence_hold_on_200_studies(tmp_path):
    out = tmp_path / "syn"
    summary = synthesize(SynthesizeParams(out=out, studies=200, size=32, workers=2, seed=0))
    rows = read_labels(out)
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


def test_shares_converge_over_many_planned_studies():
    jobs = _plan(SynthesizeParams(studies=2000, seed=5))
    assert abs(np.mean([not j["has_lateral"] for j in jobs]) - 0.1) < 0.02
    for f in FINDINGS:
        assert abs(np.mean([f in j["findings"] for j in jobs]) - 0.2) < 0.035, f


def test_per_finding_prevalence_and_patient_persistence():
    params = SynthesizeParams(
        studies=1000, prevalence={"Hernia": 0.05, "Edema": 0.5, "default": 0.2}, seed=2
    )
    jobs = _plan(params)
    share = {f: np.mean([f in j["findings"] for j in jobs]) for f in FINDINGS}
    assert abs(share["Hernia"] - 0.05) < 0.03
    assert abs(share["Edema"] - 0.5) < 0.05
    assert abs(share["Atelectasis"] - 0.2) < 0.04
    # chronic findings repeat within a patient more often than chance
    same, pairs = 0, 0
    for a, b in itertools.pairwise(jobs):
        if a["patient"] == b["patient"]:
            pairs += 1
            same += ("Cardiomegaly" in a["findings"]) == ("Cardiomegaly" in b["findings"])
    assert same / pairs > 0.68 + 0.1  # independent draws would agree 0.2^2 + 0.8^2 = 0.68


def test_params_validation():
    with pytest.raises(ConfigError, match="unknown findings"):
        parse_section(SynthesizeParams, "synthesize", {"synthesize": {"prevalence": {"X": 0.1}}})
    with pytest.raises(ConfigError, match="default"):
        parse_section(
            SynthesizeParams, "synthesize", {"synthesize": {"prevalence": {"Hernia": 0.1}}}
        )
    with pytest.raises(ConfigError, match="lateral_missing"):
        parse_section(SynthesizeParams, "synthesize", {"synthesize": {"lateral_missing": 2}})
    p = parse_section(SynthesizeParams, "synthesize", {"synthesize": {"prevalence": 0.3}})
    assert p.prevalences() == dict.fromkeys(FINDINGS, 0.3)


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
