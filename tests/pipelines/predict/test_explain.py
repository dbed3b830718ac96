"""``cxr predict --explain DIR``: overlays per positive or requested finding and view, named
without PHI, from the eager checkpoint; a clear line without one; none for untrained findings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.errors import PredictError
from pipelines.labels import FINDINGS
from pipelines.model import ModelParams, build_model
from pipelines.predict import predict, predict_command
from tests.pipelines.predict.test_run import PHI_STRINGS, model_dir, study  # noqa: F401

OVERLAY = 256


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A DenseNet checkpoint with the card's findings (the overlays need no trained weights)."""
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.manual_seed(0)
    params = ModelParams()
    model = build_model(params)
    meta = {"model_params": params.model_dump(), "findings": list(FINDINGS), "size": 64}
    torch.save({"model": model.state_dict(), "meta": meta}, path)
    return path


def test_missing_checkpoint_is_one_clear_line_before_predicting(study, model_dir, tmp_path):  # noqa: F811
    with pytest.raises(PredictError) as err:
        predict_command(
            [str(study)],
            model=model_dir / "model.onnx",
            explain=tmp_path / "out",
            checkpoint=tmp_path / "nope.pt",
        )
    msg = str(err.value)
    assert "\n" not in msg and "nope.pt: checkpoint not found" in msg and "--checkpoint" in msg
    assert not (tmp_path / "out").exists()


def test_positive_findings_get_one_overlay_per_view(study, model_dir, checkpoint, tmp_path):  # noqa: F811
    out = tmp_path / "overlays"
    predict_command(
        [str(study)], model=model_dir / "model.onnx", explain=out, checkpoint=checkpoint
    )
    df = predict(study, model=model_dir / "model.onnx")
    positive = df.loc[df["positive"].fillna(False).astype(bool), "finding"].tolist()
    assert positive  # the stand-in's thresholds call some findings
    want = {f"study001_{f}_{v}.png" for f in positive for v in ("frontal", "lateral")}
    assert {p.name for p in out.iterdir()} == want
    img = np.asarray(Image.open(out / sorted(want)[0]))
    assert img.shape == (OVERLAY, OVERLAY, 3) and img.dtype == np.uint8
    for p in out.iterdir():
        assert not any(s.lower() in p.name.lower() for s in PHI_STRINGS)
        assert "study-a" not in p.name  # the input folder's name is not used either


def test_requested_findings_frontal_only_and_untrained(study, model_dir, checkpoint, tmp_path):  # noqa: F811
    out = tmp_path / "req"
    predict_command(
        [str(study)],
        model=model_dir / "model.onnx",
        explain=out,
        checkpoint=checkpoint,
        explain_findings=["Mass"],
        frontal_only=True,
    )
    assert sorted(p.name for p in out.iterdir()) == ["study001_Mass_frontal.png"]
    # a finding the card says is not trained gets no overlay, even when asked for
    card = json.loads((model_dir / "metadata.json").read_text())
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    for name in ("model.onnx",):
        (untrained / name).write_bytes((model_dir / name).read_bytes())
    card["output"].setdefault("status", {})["Hernia"] = "not trained: 2 training positives"
    (untrained / "metadata.json").write_text(json.dumps(card))
    out2 = tmp_path / "req2"
    predict_command(
        [str(study)],
        model=untrained / "model.onnx",
        explain=out2,
        checkpoint=checkpoint,
        explain_findings=["Hernia", "Edema"],
    )
    assert sorted(p.name for p in out2.iterdir()) == [
        "study001_Edema_frontal.png",
        "study001_Edema_lateral.png",
    ]
    with pytest.raises(PredictError, match="unknown findings"):
        predict_command(
            [str(study)],
            model=model_dir / "model.onnx",
            explain=out2,
            checkpoint=checkpoint,
            explain_findings=["Fracture"],
        )


def test_explain_with_dicom_out_stores_each_overlay_as_a_valid_sc(
    study,  # noqa: F811
    model_dir,  # noqa: F811
    checkpoint,
    tmp_path,
):
    import pydicom

    from tests.pipelines.dicom_out.helpers import dciodvfy

    pngs, dicom = tmp_path / "png", tmp_path / "dicom"
    predict_command(
        [str(study)],
        model=model_dir / "model.onnx",
        explain=pngs,
        checkpoint=checkpoint,
        dicom_out=dicom,
    )
    overlays = {p.stem.split("_", 1)[1]: p for p in pngs.iterdir()}  # "<finding>_<view>"
    scs = {"_".join(p.stem.split("-")[-2:]): p for p in dicom.glob("sc-*.dcm")}
    assert overlays and scs.keys() == overlays.keys()
    assert len(list(dicom.glob("sr-*.dcm"))) == 1
    for name, sc in scs.items():
        ds = pydicom.dcmread(sc)
        assert np.array_equal(ds.pixel_array, np.asarray(Image.open(overlays[name])))
        assert "NOT FOR PRIMARY DIAGNOSIS" in str(ds.ImageComments).upper()
        assert dciodvfy(sc)[0] == [], sc.name


def test_the_real_cr_with_explain_and_dicom_out_gives_valid_scs(
    real_cxr,
    model_dir,  # noqa: F811
    checkpoint,
    tmp_path,
):
    """A real, JPEG-compressed CR chest radiograph (frontal only): its overlays become SCs."""
    import pydicom

    from tests.pipelines.dicom_out.helpers import dciodvfy

    (dcm,) = (real_cxr / "dicom").glob("*.dcm")
    folder = tmp_path / "real-study"
    folder.mkdir()
    (folder / dcm.name).symlink_to(dcm)
    dicom = tmp_path / "dicom"
    predict_command(
        [str(folder)],
        model=model_dir / "model.onnx",
        explain=tmp_path / "png",
        checkpoint=checkpoint,
        explain_findings=["Effusion"],
        dicom_out=dicom,
    )
    (sc,) = dicom.glob("sc-*-Effusion-frontal.dcm")
    assert len(list(dicom.glob("sr-*.dcm"))) == 1
    ds, source = pydicom.dcmread(sc), pydicom.dcmread(dcm, stop_before_pixels=True)
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert dciodvfy(sc)[0] == []
