"""``cxr predict`` with the model card's calibration maps and out-of-distribution gate.

The stand-in's gate is fitted as evaluate fits one, on its own training images (smooth random
views, :func:`tests.pipelines.export.helpers.make_prepared`): images like those are scored, and
real images of something else (a CT slice and an ultrasound frame saved as PNG, a photograph)
are refused on their pixels, with no header to go by.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipelines.data import ShardDataset
from pipelines.errors import PredictError
from pipelines.evaluation.gate import reference_path
from pipelines.export import CXRInference
from pipelines.imaging import prepare_image, read_image
from pipelines.labels import FINDINGS
from pipelines.model import to_model_input
from pipelines.predict import REFUSED, predict, predict_command
from pipelines.predict.decisions import NO_GATE
from tests.pipelines.export.helpers import TinyNet, fitted_gate, make_prepared
from tests.pipelines.predict.test_run import SIZE, write_model

CALIBRATION = {
    "dual": {"method": "platt", "maps": {"Edema": {"method": "platt", "a": 0.5, "b": -1.0}}},
    "frontal_only": {"method": "platt", "maps": {"Edema": {"method": "platt", "a": 2.0, "b": 0.5}}},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("gate")
    net = TinyNet(seed=2)
    prepared = make_prepared(tmp / "prepared")
    gate = fitted_gate(net, prepared)
    (tmp / "gated").mkdir()
    (tmp / "bare").mkdir()
    gated = write_model(tmp / "gated", net, gate, calibration=CALIBRATION)
    bare = write_model(tmp / "bare", net, None)
    images = tmp / "images"
    images.mkdir()
    return {
        "net": net,
        "gate": gate,
        "gated": gated / "model.onnx",
        "bare": bare / "model.onnx",
        "inside": _inside_pair(net, gate, prepared, images),
        "outside": _outside(images),
    }


def _inside_pair(net, gate, prepared: Path, folder: Path) -> tuple[Path, Path]:
    """The test study of the stand-in's own data nearest its training features, as two PNGs."""
    ds = ShardDataset(prepared, "test")
    batch = ds.get_batch(np.flatnonzero(ds.has_lateral))
    with torch.no_grad():
        f, lat = net.view_features(
            to_model_input(batch["frontal"], None), to_model_input(batch["lateral"], None)
        )
    i = int(np.argmin(gate.distances(f.numpy(), lat.numpy()).max(axis=1)))
    paths = (folder / "in-frontal.png", folder / "in-lateral.png")
    for view, path in zip(("frontal", "lateral"), paths, strict=True):
        Image.fromarray(batch[view][i, 0].numpy()).save(path)
    return paths


def _outside(folder: Path) -> dict[str, Path]:
    """Real images that are not chest radiographs, saved as 8-bit PNG (no DICOM header)."""
    out = {}
    for name, package, inner in (
        ("ct", "pydicom.data", "test_files/CT_small.dcm"),
        ("us", "pydicom.data", "test_files/examples_rgb_color.dcm"),
        ("photo", "sklearn.datasets", "images/china.jpg"),
    ):
        pixels = read_image(reference_path(package, inner))
        out[name] = folder / f"{name}.png"
        Image.fromarray((pixels * 255).round().astype(np.uint8)).save(out[name])
    return out


def test_images_like_the_training_ones_are_scored_and_calibrated(setup):
    frontal, lateral = setup["inside"]
    df = predict([frontal, lateral], model=setup["gated"]).set_index("finding")
    assert (df["status"] == "trained").all()
    raw = _raw(setup["net"], frontal, lateral)
    edema = FINDINGS.index("Edema")
    z = math.log(raw[edema] / (1 - raw[edema]))
    assert df.loc["Edema", "probability"] == pytest.approx(1 / (1 + math.exp(-(0.5 * z - 1))))
    assert df.loc["Edema", "positive"] == (df.loc["Edema", "probability"] >= 0.3 + 0.02 * edema)
    other = FINDINGS.index("Mass")  # no map: as the model gave it
    assert df.loc["Mass", "probability"] == pytest.approx(raw[other], abs=1e-6)
    alone = predict([frontal], model=setup["gated"]).set_index("finding")  # the frontal-only map
    z = math.log(
        _raw(setup["net"], frontal, None)[edema] / (1 - _raw(setup["net"], frontal, None)[edema])
    )
    assert alone.loc["Edema", "probability"] == pytest.approx(1 / (1 + math.exp(-(2 * z + 0.5))))


def _raw(net, frontal: Path, lateral: Path | None) -> np.ndarray:
    module = CXRInference(net).eval()
    f = torch.from_numpy(prepare_image(frontal, SIZE))[None, None]
    lat = torch.from_numpy(prepare_image(lateral, SIZE))[None, None] if lateral else f * 0
    with torch.no_grad():
        return module(f, lat, torch.tensor([lateral is not None])).numpy()[0].astype(np.float64)


@pytest.mark.parametrize("kind", ["ct", "us", "photo"])
def test_a_single_study_of_something_else_is_refused_in_one_line(setup, kind):
    image = setup["outside"][kind]
    with pytest.raises(PredictError, match="refused: the frontal view is unlike") as err:
        predict_command([str(image), str(image)], model=setup["gated"])
    assert "\n" not in str(err.value)
    result = CliRunner().invoke(
        app, ["predict", str(image), "--model", str(setup["gated"])], catch_exceptions=False
    )
    assert result.exit_code == 2 and "refused" in result.output
    assert result.output.strip().count("\n") == 0


def test_in_a_batch_each_refused_study_says_so_and_the_others_are_scored(setup, tmp_path):
    frontal, lateral = setup["inside"]
    rows = [("in", frontal, lateral)] + [(k, p, p) for k, p in setup["outside"].items()]
    csv = tmp_path / "studies.csv"
    csv.write_text("study,frontal,lateral\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    df = predict(csv, model=setup["gated"])
    status = df.groupby("study")["status"].agg(set).to_dict()
    assert status == {"in": {"trained"}, "ct": {REFUSED}, "us": {REFUSED}, "photo": {REFUSED}}
    refused = df[df["status"] == REFUSED]
    assert refused["probability"].isna().all() and refused["positive"].isna().all()
    text = predict_command([str(csv)], model=setup["gated"], fmt="json")  # no exit: a batch
    studies = {s["study"]: s for s in json.loads(text)["studies"]}
    assert studies["ct"]["findings"]["Edema"]["status"] == REFUSED
    assert studies["ct"]["findings"]["Edema"]["probability"] is None
    assert studies["in"]["findings"]["Edema"]["probability"] is not None


def test_a_model_exported_without_a_gate_refuses_every_study(setup):
    frontal, lateral = setup["inside"]
    df = predict([frontal, lateral], model=setup["bare"])
    assert (df["status"] == REFUSED).all() and set(df["reason"]) == {NO_GATE}
    with pytest.raises(PredictError, match="no out-of-distribution gate"):
        predict_command([str(frontal), str(lateral)], model=setup["bare"])
