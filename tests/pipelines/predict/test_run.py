"""``cxr predict``: study discovery from DICOM headers, runtimes, outputs and clear errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image

from pipelines.augment import AugmentParams
from pipelines.errors import PredictError
from pipelines.export import CXRInference, export_onnx, export_torchscript, model_card, trace
from pipelines.export.card import gate_spec
from pipelines.imaging import prepare_image
from pipelines.io import write_json
from pipelines.labels import FINDINGS
from pipelines.ood import OodGate
from pipelines.predict import (
    collect_studies,
    find_study_views,
    format_predictions,
    predict,
    predict_command,
)
from pipelines.synthetic import write_dicom
from pipelines.tta import augment_views, draws_to_json, tta_draws
from tests.pipelines.export.helpers import TinyNet, fitted_gate, make_prepared

SIZE = 32
PATIENT_ID = "PHI-ID-4417"
PATIENT_NAME = "PLANTED^PATIENTNAME"
OTHER_ID = "PHI-ID-9902"
ACCESSION = "ACC-PLANTED-55"
PHI_STRINGS = (PATIENT_ID, PATIENT_NAME, OTHER_ID, ACCESSION, "PLANTED")


def picture(seed: int, shape: tuple[int, int] = (48, 40)) -> np.ndarray:
    """A smooth display image in [0, 1] (bright = dense)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    img = 0.3 + 0.4 * np.sin(3 * x + seed) * np.cos(2 * y) + 0.05 * rng.random(shape)
    return np.clip(img, 0, 1)


def write_view(
    path: Path,
    view: str,
    *,
    seed: int = 0,
    patient: str = PATIENT_ID,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    photometric: str = "MONOCHROME2",
    shape: tuple[int, int] = (48, 40),
    **phi: str,
) -> Path:
    """One synthetic DICOM radiograph with planted PHI."""
    write_dicom(
        path,
        picture(seed, shape),
        photometric=photometric,
        bits_stored=12,
        view_position=view,
        modality="DX",
        uids={
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": f"{study_uid}.{seed}",
            "SOPInstanceUID": f"{study_uid}.{seed}.1",
        },
        phi={
            "PatientName": PATIENT_NAME,
            "PatientID": patient,
            "AccessionNumber": ACCESSION,
            "PatientBirthDate": "19470101",
            "InstitutionName": "PLANTED GENERAL HOSPITAL",
        }
        | phi,
    )
    return path


def write_model(out: Path, net: torch.nn.Module, gate: OodGate | None, **extra) -> Path:
    """model.onnx + model.ts.pt of ``net`` (with ``gate`` inside), and a card written by the
    export's own code; ``extra`` entries join the thresholds (e.g. ``calibration``)."""
    module = CXRInference(net, gate=gate).eval()
    export_onnx(module, out / "model.onnx", SIZE)
    export_torchscript(trace(module, SIZE), out / "model.ts.pt")
    thresholds = {
        "thresholds": {
            "youden": {f: 0.3 + 0.02 * i for i, f in enumerate(FINDINGS)},
            "sensitivity": dict.fromkeys(FINDINGS, 0.05),
        },
        "thresholds_frontal_only": {"youden": dict.fromkeys(FINDINGS, 0.45)},
        "notes": {"chosen_on": "val"},
    } | extra
    card = model_card(
        meta={"findings": list(FINDINGS)},
        input_size=SIZE,
        files={},
        parity={},
        parity_summary={},
        thresholds=thresholds,
        default_policy="youden",
        test_metrics=None,
        data_summary=None,
        n_params=0,
        gate=gate_spec(gate, None),
    )
    write_json(out / "metadata.json", card)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The stand-in exported with a wide-open out-of-distribution gate (fitted, then widened a
    million times: these tests are about decoding and decisions; tests/pipelines/predict/
    test_gate.py tests the gate) and no calibration."""
    tmp = tmp_path_factory.mktemp("model")
    net = TinyNet(seed=2)
    gate = fitted_gate(net, make_prepared(tmp / "prepared"), widen=1e6)
    (tmp / "model").mkdir()
    return write_model(tmp / "model", net, gate)


@pytest.fixture(scope="module")
def reference(model_dir):
    """Independent probabilities: the eager stand-in on prepare_image's arrays."""
    module = CXRInference(TinyNet(seed=2)).eval()  # the probabilities only

    def probs(frontal: Path, lateral: Path | None) -> np.ndarray:
        f = torch.from_numpy(prepare_image(frontal, SIZE))[None, None]
        lat = torch.from_numpy(prepare_image(lateral, SIZE))[None, None] if lateral else f * 0
        with torch.no_grad():
            return module(f, lat, torch.tensor([lateral is not None])).numpy()[0]

    return probs


@pytest.fixture
def study(tmp_path) -> Path:
    folder = tmp_path / "study-a"
    write_view(folder / "pa.dcm", "PA", seed=1)
    write_view(folder / "series2" / "lat.dcm", "LL", seed=2)
    (folder / "README.txt").write_text("not a DICOM file")
    return folder


def probabilities(df: pd.DataFrame, study: str | None = None) -> np.ndarray:
    rows = df if study is None else df[df["study"] == study]
    return rows.set_index("finding").loc[list(FINDINGS), "probability"].to_numpy()


# --------------------------------------------------------------------------- happy paths


@pytest.mark.slow
def test_dicom_study_folder_gives_14_probabilities_equal_to_the_eager_model(
    study, model_dir, reference
):
    df = predict(study, model=model_dir / "model.onnx")
    assert len(df) == len(FINDINGS) and list(df["finding"]) == list(FINDINGS)
    assert set(df["views"]) == {"frontal+lateral"}
    assert df["frontal"].iloc[0].endswith("pa.dcm") and df["lateral"].iloc[0].endswith("lat.dcm")
    p = probabilities(df)
    assert ((p >= 0) & (p <= 1)).all()
    want = reference(study / "pa.dcm", study / "series2" / "lat.dcm")
    np.testing.assert_allclose(p, want, atol=1e-5)
    youden = {f: 0.3 + 0.02 * i for i, f in enumerate(FINDINGS)}
    np.testing.assert_allclose(df["threshold"], [youden[f] for f in FINDINGS])
    assert (df["positive"] == (df["probability"] >= df["threshold"])).all()
    assert set(df["threshold_policy"]) == {"youden"}


@pytest.mark.slow
def test_monochrome1_study_predicts_like_its_monochrome2_twin(tmp_path, model_dir):
    mono2, mono1 = tmp_path / "m2", tmp_path / "m1"
    for folder, photometric in ((mono2, "MONOCHROME2"), (mono1, "MONOCHROME1")):
        write_view(folder / "pa.dcm", "PA", seed=4, photometric=photometric)
        write_view(folder / "ll.dcm", "LL", seed=5, photometric=photometric)
    a = probabilities(predict(mono2, model=model_dir / "model.onnx"))
    b = probabilities(predict(mono1, model=model_dir / "model.onnx"))
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_frontal_only_ignores_the_lateral_view(study, model_dir, reference):
    df = predict(study, model=model_dir / "model.onnx", frontal_only=True)
    assert set(df["views"]) == {"frontal"} and set(df["lateral"]) == {""}
    assert set(df["threshold"]) == {0.45}  # the card's frontal-only thresholds
    assert set(df["threshold_policy"]) == {"youden (frontal-only)"}
    np.testing.assert_allclose(probabilities(df), reference(study / "pa.dcm", None), atol=1e-5)


@pytest.mark.slow
def test_a_card_with_test_time_augmentation_scores_the_mean_of_the_passes(tmp_path, study):
    draws = tta_draws(AugmentParams(noise_std=0.0, rotation_deg=10.0), 4, 2)
    net = TinyNet(seed=2)
    gate = fitted_gate(net, make_prepared(tmp_path / "prepared"), widen=1e6)
    (tmp_path / "tta").mkdir()
    model = write_model(tmp_path / "tta", net, gate, tta=draws_to_json(draws)) / "model.onnx"
    got = probabilities(predict(study, model=model))
    module = CXRInference(net).eval()
    f = torch.from_numpy(prepare_image(study / "pa.dcm", SIZE))[None, None]
    lat = torch.from_numpy(prepare_image(study / "series2" / "lat.dcm", SIZE))[None, None]
    passes = [(f, lat)] + [
        (augment_views(f, d["frontal"]), augment_views(lat, d["lateral"])) for d in draws
    ]
    with torch.no_grad():
        want = np.mean([module(a, b, torch.tensor([True])).numpy()[0] for a, b in passes], 0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    single = module(f, lat, torch.tensor([True])).detach().numpy()[0]
    assert np.abs(got - single).max() > 1e-4  # the passes were really averaged
    card = json.loads((tmp_path / "tta" / "metadata.json").read_text())
    card["output"]["tta"] = [{"frontal": {}}]
    (tmp_path / "tta" / "metadata.json").write_text(json.dumps(card))
    with pytest.raises(PredictError, match="metadata.json: test-time augmentation: draw 0"):
        predict(study, model=model)


@pytest.mark.slow
def test_torchscript_runtime_agrees_with_onnxruntime(study, model_dir):
    a = probabilities(predict(study, model=model_dir / "model.onnx"))
    b = probabilities(predict(study, model=model_dir / "model.ts.pt"))  # auto: TorchScript
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_view_choice_rule_prefers_pa_then_most_pixels(tmp_path):
    folder = tmp_path / "s"
    write_view(folder / "a_ap.dcm", "AP", seed=1, shape=(64, 64))
    write_view(folder / "b_pa.dcm", "PA", seed=2, shape=(40, 40))
    write_view(folder / "c_ll_small.dcm", "LL", seed=3, shape=(40, 40))
    write_view(folder / "d_ll_big.dcm", "LL", seed=4, shape=(60, 50))
    write_view(folder / "e_other.dcm", "", seed=5, SeriesDescription="CHEST OBLIQUE")
    chosen = find_study_views(folder)
    assert chosen.frontal.name == "b_pa.dcm" and chosen.frontal_view == "PA"
    assert chosen.lateral is not None and chosen.lateral.name == "d_ll_big.dcm"
    (folder / "b_pa.dcm").unlink()
    assert find_study_views(folder).frontal.name == "a_ap.dcm"


@pytest.mark.slow
def test_image_pair_and_csv_of_studies(tmp_path, model_dir, reference):
    front, lat = tmp_path / "front.png", tmp_path / "side.jpg"
    Image.fromarray((picture(7) * 255).astype(np.uint8)).save(front)
    Image.fromarray((picture(8) * 255).astype(np.uint8)).convert("RGB").save(lat, "PNG")
    pair = predict([front, lat], model=model_dir / "model.onnx")
    np.testing.assert_allclose(probabilities(pair), reference(front, lat), atol=1e-5)

    (tmp_path / "studies.csv").write_text(
        "study,frontal,lateral\nx,front.png,side.jpg\ny,front.png,\n"
    )
    df = predict(tmp_path / "studies.csv", model=model_dir / "model.onnx")
    assert len(df) == 2 * len(FINDINGS)
    np.testing.assert_allclose(probabilities(df, "x"), probabilities(pair), atol=1e-6)
    np.testing.assert_allclose(probabilities(df, "y"), reference(front, None), atol=1e-5)
    assert df.groupby("study")["views"].first().to_dict() == {
        "x": "frontal+lateral",
        "y": "frontal",
    }


@pytest.mark.slow
def test_outputs_render_as_table_json_and_csv(study, model_dir, tmp_path):
    model = model_dir / "model.onnx"
    as_json = json.loads(predict_command([str(study)], model=model, fmt="json"))
    (entry,) = as_json["studies"]
    assert entry["study"] == "study-a" and set(entry["findings"]) == set(FINDINGS)
    assert 0 <= entry["findings"]["Edema"]["probability"] <= 1
    out = tmp_path / "pred.csv"
    text = predict_command([str(study)], model=model, fmt="csv", out=out)
    assert out.read_text() == text
    assert len(pd.read_csv(out)) == len(FINDINGS)
    table = predict_command([str(study)], model=model, fmt="table", threshold="sensitivity")
    assert "Pleural_Thickening" in table and "thresholds: sensitivity" in table
    with pytest.raises(PredictError, match="unknown output format 'xml'"):
        predict_command([str(study)], model=model, fmt="xml")  # type: ignore[arg-type]


@pytest.mark.slow
def test_no_phi_in_any_output_or_error(study, model_dir, tmp_path, caplog):
    """PHI reaches no output, log or error; only the DICOM outputs (for the hospital's PACS)
    carry the source's identifiers, exactly."""
    caplog.set_level("INFO")
    model = model_dir / "model.onnx"
    dicom_out, out = tmp_path / "dicom-out", tmp_path / "outputs"
    texts = [
        predict_command([str(study)], model=model, fmt=f, out=out / f"p.{f}", dicom_out=dicom_out)
        for f in ("table", "json", "csv")
    ]
    texts += [p.read_text() for p in out.iterdir()] + [p.name for p in dicom_out.iterdir()]
    texts += [r.getMessage() for r in caplog.records]
    assert any("DICOM object(s)" in t for t in texts)  # the log was captured
    texts.append((model_dir / "metadata.json").read_text())
    source = pydicom.dcmread(study / "pa.dcm", stop_before_pixels=True)
    (sr,) = dicom_out.iterdir()
    written = pydicom.dcmread(sr)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        assert written[keyword].value == source[keyword].value != ""
    assert written.StudyInstanceUID == source.StudyInstanceUID
    assert "InstitutionName" not in written  # the source's equipment is not ours
    mixed = tmp_path / "mixed"
    write_view(mixed / "pa.dcm", "PA", seed=1)
    write_view(mixed / "ll.dcm", "LL", seed=2, patient=OTHER_ID)
    with pytest.raises(PredictError) as err:
        predict(mixed, model=model)
    texts.append(str(err.value))
    uids = (source.SOPInstanceUID, source.StudyInstanceUID)  # identifiers too (highdicom logs
    for text in texts:  # the instances it copies from by UID)
        for secret in (*PHI_STRINGS, *uids):
            assert secret not in text


# --------------------------------------------------------------------------- clear errors


@pytest.mark.slow
def test_folder_without_a_frontal_view(tmp_path, model_dir):
    write_view(tmp_path / "s" / "ll.dcm", "LL", seed=1)
    with pytest.raises(PredictError, match=r"no usable frontal view \(PA or AP\).*LATERAL x1"):
        predict(tmp_path / "s", model=model_dir / "model.onnx")


@pytest.mark.slow
def test_mixed_patients_are_refused_without_printing_ids(tmp_path, model_dir):
    write_view(tmp_path / "s" / "pa.dcm", "PA", seed=1)
    write_view(tmp_path / "s" / "ll.dcm", "LL", seed=2, patient=OTHER_ID)
    with pytest.raises(PredictError, match="2 different patients") as err:
        predict(tmp_path / "s", model=model_dir / "model.onnx")
    assert PATIENT_ID not in str(err.value) and OTHER_ID not in str(err.value)


def test_mixed_studies_are_refused(tmp_path):
    write_view(tmp_path / "s" / "pa.dcm", "PA", seed=1)
    write_view(tmp_path / "s" / "ll.dcm", "LL", seed=2, study_uid="1.2.826.0.1.3680043.8.498.2")
    with pytest.raises(PredictError, match="2 different studies"):
        find_study_views(tmp_path / "s")


@pytest.mark.slow
def test_non_chest_study_is_refused(tmp_path, model_dir):
    write_view(tmp_path / "knee" / "a.dcm", "PA", seed=1, BodyPartExamined="KNEE")
    with pytest.raises(PredictError, match="not a chest study: BodyPartExamined is KNEE"):
        predict(tmp_path / "knee", model=model_dir / "model.onnx")
    ct = write_view(tmp_path / "ct" / "a.dcm", "PA", seed=1)
    ds = pydicom.dcmread(ct)
    ds.Modality = "CT"
    ds.save_as(ct)
    with pytest.raises(PredictError, match="not a chest radiograph study: modality CT"):
        find_study_views(tmp_path / "ct")


@pytest.mark.slow
def test_unreadable_images_and_missing_inputs(tmp_path, model_dir):
    model = model_dir / "model.onnx"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(PredictError, match=r"bad\.png: cannot read the image"):
        predict(bad, model=model)
    broken = tmp_path / "broken"
    pa = write_view(broken / "pa.dcm", "PA", seed=1)
    pa.write_bytes(pa.read_bytes()[:-500])  # pixel data cut short
    with pytest.raises(PredictError, match=r"pa\.dcm: cannot read the image: truncated"):
        predict(broken, model=model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictError, match="no DICOM images found"):
        predict(tmp_path / "empty", model=model)
    with pytest.raises(PredictError, match="no such file or folder"):
        predict(tmp_path / "absent", model=model)
    with pytest.raises(PredictError, match="model file not found"):
        predict(bad, model=tmp_path / "none.onnx")
    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "model.onnx").write_bytes(b"")
    with pytest.raises(PredictError, match="model card not found"):
        predict(bad, model=tmp_path / "lonely" / "model.onnx")
    (tmp_path / "s.csv").write_text("path\nx.png\n")
    with pytest.raises(PredictError, match="needs a 'frontal' column"):
        collect_studies(tmp_path / "s.csv")
    with pytest.raises(PredictError, match="threshold policy 'f1' not in the model card"):
        predict(bad, model=model, threshold="f1")


def test_for_processing_images_are_refused_or_skipped(tmp_path):
    """Raw detector images (ingest: for_processing) are never predicted on."""
    raw = {"PresentationIntentType": "FOR PROCESSING"}
    only = write_view(tmp_path / "raw" / "pa.dcm", "PA", seed=1, **raw)
    for given in (tmp_path / "raw", only):
        with pytest.raises(PredictError, match="FOR PROCESSING") as err:
            collect_studies(given)
        assert "\n" not in str(err.value) and PATIENT_ID not in str(err.value)
    # beside the processed images of the study, the raw ones are skipped (as ingest rejects
    # them), even a bigger one that the view choice would otherwise prefer
    both = tmp_path / "both"
    write_view(both / "a_raw_pa.dcm", "PA", seed=2, shape=(96, 80), **raw)
    write_view(both / "a_raw_ll.dcm", "LL", seed=3, shape=(96, 80), **raw)
    pa, ll = write_view(both / "pa.dcm", "PA", seed=4), write_view(both / "ll.dcm", "LL", seed=5)
    chosen = find_study_views(both)
    assert (chosen.frontal, chosen.lateral) == (pa, ll)
    # a pair given directly with a raw lateral is refused
    with pytest.raises(PredictError, match=r"a_raw_ll\.dcm: .*FOR PROCESSING"):
        collect_studies([pa, both / "a_raw_ll.dcm"])


def test_swapped_dicom_pair_is_refused(tmp_path):
    pa = write_view(tmp_path / "pa.dcm", "PA", seed=1)
    ll = write_view(tmp_path / "ll.dcm", "LL", seed=2)
    with pytest.raises(PredictError, match="LATERAL view, given as the frontal one"):
        collect_studies([ll, pa])
    assert collect_studies([pa, ll])[0].frontal_view == "PA"


def known_frame() -> pd.DataFrame:
    """Two findings of one study: Edema trained and positive, Mass not trained."""
    df = pd.DataFrame(
        {
            "study": ["s", "s"],
            "frontal": ["f.dcm"] * 2,
            "lateral": [""] * 2,
            "views": ["frontal"] * 2,
            "finding": ["Edema", "Mass"],
            "status": ["trained", "not trained"],
            "reason": ["", "too few labelled training studies (0 positive, 0 negative)"],
            "probability": [0.75, float("nan")],
            "threshold": [0.5, float("nan")],
            "positive": [True, None],
            "threshold_policy": ["youden", ""],
        }
    )
    df.attrs["notice"] = "Trained on synthetic data. Not for clinical use."
    return df


def test_format_predictions_of_a_known_frame():
    df = known_frame()
    data = json.loads(format_predictions(df, "json"))
    assert data["notice"].startswith("Trained on synthetic data")
    (study,) = data["studies"]
    assert study["threshold_policy"] == "youden"
    assert study["findings"]["Edema"] == {
        "status": "trained",
        "probability": 0.75,
        "threshold": 0.5,
        "positive": True,
    }
    assert study["findings"]["Mass"] == {
        "status": "not trained",
        "reason": "too few labelled training studies (0 positive, 0 negative)",
        "probability": None,
        "threshold": None,
        "positive": None,
    }
    table = format_predictions(df, "table")
    assert table.startswith("NOTICE: Trained on synthetic data")
    assert "0.750" in table and "yes" in table
    mass = next(line for line in table.splitlines() if line.strip().startswith("Mass"))
    assert "not trained" in mass and "0." not in mass
    assert "Mass: not trained, no decision: too few labelled" in table
    csv = pd.read_csv(io.StringIO(format_predictions(df, "csv")), keep_default_na=False)
    row = csv.set_index("finding").loc["Mass"]
    assert (row["status"], row["probability"], row["threshold"], row["positive"]) == (
        "not trained",
        "",
        "",
        "",
    )
    assert csv.set_index("finding").loc["Edema", "positive"] == "True"


# --------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_pa_lateral_pair(real_cxr, model_dir):
    pairs = pd.read_csv(real_cxr / "pa_lateral_pairs" / "pairs.csv")
    first = pairs[pairs["pair_id"] == pairs["pair_id"].iloc[0]].set_index("view")
    frontal_view = "PA" if "PA" in first.index else "AP"
    root = real_cxr / "pa_lateral_pairs"
    df = predict(
        [root / first.loc[frontal_view, "file"], root / first.loc["L", "file"]],
        model=model_dir / "model.onnx",
    )
    p = probabilities(df)
    assert p.shape == (14,) and ((p >= 0) & (p <= 1)).all()
    assert set(df["views"]) == {"frontal+lateral"}


@pytest.mark.slow
def test_real_siim_dicom_frontal_only(real_cxr, model_dir, tmp_path):
    (dcm,) = (real_cxr / "dicom").glob("*.dcm")
    df = predict(dcm, model=model_dir / "model.onnx", frontal_only=True)
    p = probabilities(df)
    assert p.shape == (14,) and ((p >= 0) & (p <= 1)).all()
    folder = tmp_path / "siim-study"  # the same file as a one-image study folder
    folder.mkdir()
    (folder / dcm.name).symlink_to(dcm)
    chosen = find_study_views(folder)
    assert chosen.frontal_view == "PA" and chosen.lateral is None
    np.testing.assert_allclose(
        probabilities(predict(folder, model=model_dir / "model.onnx")), p, atol=1e-6
    )
