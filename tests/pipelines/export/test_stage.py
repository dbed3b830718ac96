"""The export stage: every format loads in a fresh process and agrees with the eager model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.config import parse_section
from pipelines.errors import ConfigError, ParityError
from pipelines.export import ExportParams
from pipelines.export.formats import FILES, executorch_available
from pipelines.export.inference import CXRInference
from pipelines.export.stage import Tolerance, export_all
from pipelines.labels import FINDINGS
from pipelines.model import PIXEL_MEAN
from tests.pipelines.export.helpers import (
    PLANTED,
    SIZE,
    TinyNet,
    fitted_gate,
    fresh_process_probs,
    make_prepared,
)

CAL = {"method": "platt", "a": 0.5, "b": -0.2}

# --------------------------------------------------------------------------- params


def test_params_defaults_and_partial_tolerances():
    p = parse_section(
        ExportParams, "export", {"export": {"tolerances": {"int8": {"max_abs_prob": 0.2}}}}
    )
    assert p.tolerances["int8"] == Tolerance(
        max_abs_prob=0.2, max_auroc_drop=0.005, max_ood_shift=0.5
    )
    assert p.tolerances["onnx"] == Tolerance(max_abs_prob=1e-4, max_auroc_drop=1e-3)
    assert p.formats == ["torchscript", "onnx", "int8", "mobile", "executorch"]


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"formats": ["int8"]}, "list onnx too"),
        ({"formats": ["tflite"]}, "export.formats.0"),
        ({"tolerances": {"onnx": {"max_abs_prob": 0}}}, "max_abs_prob"),
        ({"parity_batch": 0}, "export.parity_batch"),
    ],
)
def test_params_errors_name_the_key(section, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_section(ExportParams, "export", {"export": section})


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The whole stage on the stand-in model, once for the module's tests."""
    tmp = tmp_path_factory.mktemp("export")
    prepared = make_prepared(tmp / "prepared")
    (tmp / "thresholds.json").write_text(
        json.dumps(
            {
                "youden": dict.fromkeys(FINDINGS, 0.4),
                "sensitivity": {"Edema": 0.1},
                "frontal_only": {"youden": dict.fromkeys(FINDINGS, 0.35)},
                "chosen_on": "val",
                "calibration": {"dual": {"method": "platt", "maps": {"Edema": CAL}}},
            }
        )
    )
    evaluation = {"test": {"macro_auroc": {"value": 0.81, "ci": [0.78, 0.84]}}}
    (tmp / "evaluate.json").write_text(json.dumps(evaluation))
    params = ExportParams(
        checkpoint="unused",
        prepared=str(prepared),
        thresholds=str(tmp / "thresholds.json"),
        evaluation=str(tmp / "evaluate.json"),
        calibration_studies=16,
        parity_batch=7,
        # the stand-in's 16 random features cluster tightly, so int8 moves its gate distances
        # by about its threshold (the demo DenseNet: 0.41, within the default 0.5)
        tolerances={"int8": {"max_ood_shift": 5.0}},
        out=str(tmp / "export"),
        metrics=str(tmp / "metrics" / "export.json"),
    )
    net = TinyNet()
    gate = fitted_gate(net, prepared)
    module = CXRInference(net, gate=gate).eval()
    meta = {"findings": list(FINDINGS), "size": SIZE, "model_params": {"fusion": "concat"}}
    metrics = export_all(module, meta, params, seed=1, gate=gate)
    return {"module": module, "params": params, "metrics": metrics, "tmp": tmp, "gate": gate}


@pytest.mark.slow
def test_stage_writes_every_format_card_and_metrics(exported):
    params, metrics = exported["params"], exported["metrics"]
    out = Path(params.out)
    made = {"torchscript", "onnx", "int8", "mobile"} | (
        {"executorch"} if executorch_available() else set()
    )
    assert set(metrics["parity"]) == made
    for fmt in made:
        assert (out / FILES[fmt]).stat().st_size == metrics["bytes"][fmt] > 0
    if not executorch_available():
        assert metrics["skipped"] == {"executorch": "the executorch package is not installed"}
    assert metrics["passed"] is True
    assert metrics["studies"] == 20 and metrics["with_lateral"] == 13
    on_disk = json.loads(Path(params.metrics).read_text())
    assert on_disk["parity"]["onnx"]["max_abs_prob"] == metrics["parity"]["onnx"]["max_abs_prob"]
    for fmt in ("torchscript", "onnx", "mobile"):
        assert metrics["parity"][fmt]["max_abs_prob"] < 1e-5
    assert 0 < metrics["parity"]["int8"]["max_abs_prob"] < 0.1  # int8 really is different
    for fmt in made:  # every file carries the gate, and computes its distances as eager does
        assert metrics["parity"][fmt]["max_ood_shift"] <= params.tolerances[fmt].max_ood_shift
    assert metrics["parity"]["onnx"]["max_ood_shift"] < 1e-4

    card = json.loads((out / "metadata.json").read_text())
    assert card["input"]["size"] == SIZE and card["input"]["dtype"] == "uint8"
    assert card["input"]["names"] == ["frontal", "lateral", "has_lateral"]
    assert card["input"]["normalisation"]["mean"] == PIXEL_MEAN
    assert card["input"]["photometric"]["monochrome1"].startswith("inverted")
    assert card["input"]["photometric"]["no_window"] == "bits"
    assert card["output"]["findings"] == list(FINDINGS)
    assert card["output"]["thresholds"]["youden"]["Edema"] == 0.4
    assert card["output"]["thresholds"]["sensitivity"] == {"Edema": 0.1}
    assert card["output"]["calibration"]["dual"]["maps"]["Edema"] == CAL
    gate = card["output"]["ood_gate"]
    assert gate["thresholds"] == pytest.approx(exported["gate"].thresholds())
    assert gate["output"] == "ood_distance" and gate["method"] == "mahalanobis"
    assert card["output"]["thresholds_frontal_only"]["youden"]["Edema"] == 0.35
    assert card["output"]["threshold_notes"] == {"chosen_on": "val"}
    assert card["metrics"]["test"]["test"]["macro_auroc"]["ci"] == [0.78, 0.84]
    assert card["versions"]["torch"] == torch.__version__
    assert card["files"]["onnx"]["dynamic_batch"] is True
    assert card["files"]["int8"]["calibration_studies"] == 16
    assert card["files"]["mobile"]["method"] in (
        "optimize_for_mobile",
        "_save_for_lite_interpreter",
    )
    train = card["training_data"]["splits"]["train"]
    assert train["studies"] == 24 and train["with_lateral"] == 16
    assert card["parity"]["test"]["int8"] == metrics["parity"]["int8"]


@pytest.mark.slow
def test_int8_weights_stay_in_the_7_bit_range(exported):
    """Full-range int8 weights overflow the int16 pair sums of CPUs without VNNI (quantize.py)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(Path(exported["params"].out) / FILES["int8"]))
    weights = [
        numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.data_type == onnx.TensorProto.INT8
    ]
    assert len(weights) >= 3  # the convolutions and the head
    assert min(int(w.min()) for w in weights) >= -64
    assert max(int(w.max()) for w in weights) <= 64  # symmetric 7-bit: [-64, 64], not ±127


@pytest.mark.slow
def test_model_card_holds_no_keys_or_phi(exported):
    text = (Path(exported["params"].out) / "metadata.json").read_text()
    assert PLANTED not in text
    metrics = Path(exported["params"].metrics).read_text()
    assert PLANTED not in metrics


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "int8", "mobile", "executorch"])
def test_each_format_loads_in_a_fresh_process_and_agrees(exported, fmt):
    params = exported["params"]
    path = Path(params.out) / FILES[fmt]
    if not path.exists():
        pytest.skip(f"{fmt} not exported here (executorch not installed)")
    rng = np.random.default_rng(5)
    batch = {  # batch 5: not the batch the model was traced / exported with
        "frontal": rng.integers(0, 256, (5, 1, SIZE, SIZE), dtype=np.uint8),
        "lateral": rng.integers(0, 256, (5, 1, SIZE, SIZE), dtype=np.uint8),
        "has_lateral": np.array([True, False, True, True, False]),
    }
    with torch.no_grad():
        want = exported["module"](*(torch.from_numpy(v) for v in batch.values()))[0].numpy()
    runtime = {"onnx": "onnxruntime", "int8": "onnxruntime", "mobile": "lite"}.get(fmt, fmt)
    got, used_torch = fresh_process_probs(path, runtime, batch)
    assert got.shape == (5, len(FINDINGS))
    assert np.abs(got - want).max() <= params.tolerances[fmt].max_abs_prob
    if fmt in ("onnx", "int8"):
        assert not used_torch, "onnxruntime inference must not import torch"


@pytest.mark.slow
def test_parity_failure_fails_the_stage_with_a_clear_message(exported, tmp_path):
    params = exported["params"].model_copy(
        update={
            "formats": ["onnx", "int8"],
            "out": str(tmp_path / "export"),
            "metrics": str(tmp_path / "export.json"),
        }
    )
    params = ExportParams.model_validate(
        params.model_dump() | {"tolerances": {"int8": {"max_abs_prob": 1e-9}}}
    )
    with pytest.raises(ParityError, match=r"int8: max \|Δprobability\| .* > tolerance 1e-09"):
        export_all(exported["module"], {"findings": list(FINDINGS)}, params)
    written = json.loads((tmp_path / "export.json").read_text())
    assert written["passed"] is False and "int8" in written["error"]
    assert not (tmp_path / "export" / "metadata.json").exists()


def test_missing_prepared_data_is_a_clear_error(tmp_path):
    params = ExportParams(prepared=str(tmp_path / "nowhere"), out=str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="run the preprocess stage first"):
        export_all(CXRInference(TinyNet()), {}, params)


@pytest.mark.slow
def test_real_two_branch_densenet_exports_within_tolerance(tmp_path):
    """The real architecture (weights none, 32 px): every format, parity on test studies."""
    from pipelines.model import ModelParams, build_model

    prepared = make_prepared(tmp_path / "prepared", counts={"train": 8, "test": 6})
    params = ExportParams(
        prepared=str(prepared),
        thresholds=str(tmp_path / "none.json"),
        evaluation=str(tmp_path / "none.json"),
        formats=["torchscript", "onnx", "int8", "mobile"],
        calibration_studies=8,
        parity_batch=4,
        # random weights and random labels on 6 studies: AUROC says nothing here
        tolerances={"int8": {"max_auroc_drop": 1.0}},
        out=str(tmp_path / "export"),
        metrics=str(tmp_path / "export.json"),
    )
    torch.manual_seed(0)
    model = build_model(ModelParams()).eval()
    metrics = export_all(CXRInference(model), {"findings": list(FINDINGS)}, params)
    assert metrics["passed"] is True
    assert metrics["parity"]["onnx"]["max_abs_prob"] < 1e-4
    assert metrics["parity"]["torchscript"]["max_abs_prob"] < 1e-4
    assert metrics["parity"]["mobile"]["max_abs_prob"] < 1e-4
    assert 0 < metrics["parity"]["int8"]["max_abs_prob"] < 0.1
    card = json.loads((tmp_path / "export" / "metadata.json").read_text())
    assert card["output"]["thresholds"] == {}
    assert card["model"]["parameters"] == sum(p.numel() for p in model.parameters())
