"""Export stage: every format loads in a fresh process and agrees with the eager model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from pipelines.config import parse_section
from pipelines.data import shard_meta, shard_name, write_index, write_shard
from pipelines.errors import ConfigError, ParityError
from pipelines.evaluation.metrics import macro_auroc
from pipelines.export import (
    FILES,
    CXRInference,
    ExportParams,
    Tolerance,
    batchnorm_to_depthwise_conv,
    check_parity,
    executorch_available,
    export_all,
    parity_figures,
    read_thresholds,
)
from pipelines.labels import FINDINGS
from pipelines.model import PIXEL_MEAN, PIXEL_STD

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32
PLANTED = "PHI-PLANTED-7731"  # written into the shards' key columns: must never reach the card


class TinyNet(nn.Module):
    """A stand-in with the trained model's forward signature (normalised views, bool mask)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)

        def trunk() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(1, 8, 3, stride=2, padding=1),
                nn.BatchNorm2d(8),
                nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(1),
            )

        self.frontal_encoder, self.lateral_encoder = trunk(), trunk()
        self.head = nn.Linear(33, len(FINDINGS))
        with torch.no_grad():  # non-trivial BN statistics
            for bn in (m for m in self.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, frontal, lateral, has_lateral):
        m = has_lateral.to(torch.bool).to(frontal.dtype).unsqueeze(1)
        f, lat = self.frontal_encoder(frontal), self.lateral_encoder(lateral)
        return self.head(torch.cat([f, lat * m, m], dim=1))


def make_prepared(root: Path, size: int = SIZE, counts: dict | None = None) -> Path:
    """A prepared folder with smooth random views, mixed lateral presence and labels."""
    counts = counts or {"train": 24, "val": 8, "test": 20}
    rng = np.random.default_rng(3)
    splits = {}
    for split, n in counts.items():
        base = rng.normal(size=(n, 2, size // 4, size // 4))
        images = np.kron(base, np.ones((1, 1, 4, 4)))
        images = np.clip(128 + 50 * images + rng.normal(0, 8, images.shape), 0, 255)
        images = images.astype(np.uint8)
        has_lateral = np.arange(n) % 3 != 0
        images[~has_lateral, 1] = 0
        labels = (rng.random((n, len(FINDINGS))) < 0.4).astype(np.float32)
        labels[rng.random(labels.shape) < 0.1] = np.nan
        studies = [f"{PLANTED}-s{i}" for i in range(n)]
        patients = [f"{PLANTED}-p{i}" for i in range(n)]
        meta = shard_meta(studies, patients, has_lateral, labels)
        splits[split] = [write_shard(root, shard_name(split, 0), images, meta)]
    write_index(root, size, splits)
    return root


def fresh_process_probs(model: Path, runtime: str, batch: dict) -> tuple[np.ndarray, bool]:
    """Load ``model`` in a new interpreter through predict's runtime code; (probs, torch used)."""
    work = model.parent / f"fresh-{model.name}"
    np.savez(work.with_suffix(".npz"), **batch)
    code = (
        "import sys, numpy as np\n"
        "from pipelines.runners import load_runner\n"
        "d = np.load(sys.argv[1])\n"
        "run = load_runner(sys.argv[2], sys.argv[3], threads=1)\n"
        "np.save(sys.argv[4], run(d['frontal'], d['lateral'], d['has_lateral']))\n"
        "print('torch' in sys.modules)\n"
    )
    out = work.with_suffix(".npy")
    done = subprocess.run(
        [sys.executable, "-c", code, str(work.with_suffix(".npz")), str(model), runtime, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(out), done.stdout.strip().splitlines()[-1] == "True"


# --------------------------------------------------------------------------- params


def test_params_defaults_and_partial_tolerances():
    p = parse_section(
        ExportParams, "export", {"export": {"tolerances": {"int8": {"max_abs_prob": 0.2}}}}
    )
    assert p.tolerances["int8"] == Tolerance(max_abs_prob=0.2, max_auroc_drop=0.005)
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


# --------------------------------------------------------------------------- the module


def test_inference_module_normalises_inside_and_applies_sigmoid():
    net = TinyNet()
    module = CXRInference(net).eval()
    rng = np.random.default_rng(0)
    f = torch.from_numpy(rng.integers(0, 256, (3, 1, SIZE, SIZE), dtype=np.uint8))
    lat = torch.from_numpy(rng.integers(0, 256, (3, 1, SIZE, SIZE), dtype=np.uint8))
    has = torch.tensor([True, False, True])
    norm_f = (f.numpy().astype(np.float64) / 255.0 - PIXEL_MEAN) / PIXEL_STD
    norm_l = (lat.numpy().astype(np.float64) / 255.0 - PIXEL_MEAN) / PIXEL_STD
    with torch.no_grad():
        logits = net(torch.tensor(norm_f).float(), torch.tensor(norm_l).float(), has).numpy()
        probs = module(f, lat, has).numpy()
        as_float = module(f.float(), lat.float(), has).numpy()  # uint8-valued float works too
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-6)
    np.testing.assert_allclose(as_float, probs, atol=1e-7)
    assert probs.shape == (3, len(FINDINGS))


def test_frontal_only_entry_ignores_lateral_pixels():
    module = CXRInference(TinyNet()).eval()
    f = torch.full((2, 1, SIZE, SIZE), 90, dtype=torch.uint8)
    no = torch.tensor([False, False])
    with torch.no_grad():
        a = module(f, torch.zeros_like(f), no)
        b = module(f, torch.full_like(f, 255), no)
        c = module(f, torch.full_like(f, 255), torch.tensor([True, True]))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (a - c).abs().max() > 1e-4


def test_resizes_to_the_trained_size_inside():
    net = TinyNet()
    f = torch.randint(0, 256, (2, 1, SIZE, SIZE), dtype=torch.uint8)
    has = torch.tensor([False, False])
    with torch.no_grad():
        got = CXRInference(net, size=16)(f, f, has)
        small = torch.nn.functional.interpolate(
            (f.float() / 255 - PIXEL_MEAN) / PIXEL_STD,
            size=(16, 16),
            mode="bilinear",
            antialias=True,
        )
        want = torch.sigmoid(net(small, small, has))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_batchnorm_rewritten_as_an_equal_depthwise_convolution(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    c = 5
    scale, bias, mean = (rng.normal(size=c).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.2, 2.0, c).astype(np.float32)
    inits = [
        numpy_helper.from_array(v, n)
        for v, n in zip((scale, bias, mean, var), ("s", "b", "m", "v"), strict=True)
    ]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    graph = helper.make_graph(
        [node],
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, c, 3, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.normal(size=(2, c, 3, 4)).astype(np.float32)
    want = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3) * scale[
        :, None, None
    ] + bias[:, None, None]
    assert batchnorm_to_depthwise_conv(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    assert {i.name for i in model.graph.initializer} == {"bn0.dw_weight", "bn0.dw_bias"}
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], want, atol=1e-5)


# --------------------------------------------------------------------------- parity figures


def test_parity_figures_against_independent_computation():
    rng = np.random.default_rng(1)
    labels = (rng.random((40, len(FINDINGS))) < 0.5).astype(np.float32)
    labels[:5, 0] = np.nan
    labels[:, 13] = 0.0  # one class only: not estimable, left out of the macro mean
    ref = rng.random((40, len(FINDINGS))).astype(np.float32)
    other = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1).astype(np.float32)
    fig = parity_figures(ref, other, labels)
    want_ref = np.mean(
        [roc_auc_score(labels[5:, 0], ref[5:, 0])]
        + [roc_auc_score(labels[:, j], ref[:, j]) for j in range(1, 13)]
    )
    assert fig["macro_auroc_eager"] == pytest.approx(want_ref, abs=1e-12)
    assert fig["max_abs_prob"] == pytest.approx(np.abs(ref - other).max(), abs=1e-7)
    assert fig["auroc_drop"] == pytest.approx(fig["macro_auroc_eager"] - fig["macro_auroc"])
    assert np.isnan(macro_auroc(np.zeros((4, 2)), np.zeros((4, 2))))


def test_check_parity_names_the_format_and_the_figure():
    tol = {
        "onnx": Tolerance(max_abs_prob=1e-4),
        "int8": Tolerance(max_abs_prob=0.05, max_auroc_drop=0.005),
    }
    ok = {"max_abs_prob": 1e-6, "auroc_drop": 0.0}
    check_parity({"onnx": ok}, tol)
    with pytest.raises(ParityError, match=r"onnx: max \|Δprobability\| 0\.002 > tolerance 0\.0001"):
        check_parity({"onnx": {"max_abs_prob": 2e-3, "auroc_drop": 0.0}}, tol)
    with pytest.raises(ParityError, match=r"int8: test macro AUROC drop 0\.0100 > tolerance"):
        check_parity({"onnx": ok, "int8": {"max_abs_prob": 0.01, "auroc_drop": 0.01}}, tol)
    with pytest.raises(ParityError, match="onnx: max"):  # NaN never passes
        check_parity({"onnx": {"max_abs_prob": float("nan"), "auroc_drop": 0.0}}, tol)


@pytest.mark.parametrize(
    "payload",
    [
        {  # what evaluate writes
            "chosen_on": "val",
            "frontal_only": {"youden": {"Atelectasis": 0.25}},
            "rule": "positive when probability >= threshold",
            "sensitivity_target": {"Atelectasis": 0.1},
            "target_sensitivity": 0.9,
            "validation": {"studies": 35, "n_pos": {"Atelectasis": 4}},
            "youden": {"Atelectasis": 0.3, "Hernia": None, "Unknown": 0.2},
        },
        {
            "thresholds": {"youden": {"Atelectasis": 0.3, "Hernia": None}},
            "frontal_only": {"youden": {"Atelectasis": 0.25}},
        },
    ],
)
def test_read_thresholds_accepts_evaluates_layout(tmp_path, payload):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(payload))
    got = read_thresholds(path)
    assert got["thresholds"]["youden"] == {"Atelectasis": 0.3, "Hernia": None}
    assert "validation" not in got["thresholds"] and "frontal_only" not in got["thresholds"]
    assert got["thresholds_frontal_only"] == {"youden": {"Atelectasis": 0.25}}
    if "rule" in payload:
        assert got["thresholds"]["sensitivity_target"] == {"Atelectasis": 0.1}
        assert got["notes"]["target_sensitivity"] == 0.9 and got["notes"]["chosen_on"] == "val"
    assert read_thresholds(tmp_path / "absent.json")["thresholds"] == {}


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
        out=str(tmp / "export"),
        metrics=str(tmp / "metrics" / "export.json"),
    )
    module = CXRInference(TinyNet()).eval()
    meta = {"findings": list(FINDINGS), "size": SIZE, "model_params": {"fusion": "concat"}}
    metrics = export_all(module, meta, params, seed=1)
    return {"module": module, "params": params, "metrics": metrics, "tmp": tmp}


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

    card = json.loads((out / "metadata.json").read_text())
    assert card["input"]["size"] == SIZE and card["input"]["dtype"] == "uint8"
    assert card["input"]["names"] == ["frontal", "lateral", "has_lateral"]
    assert card["input"]["normalisation"]["mean"] == PIXEL_MEAN
    assert card["input"]["photometric"]["monochrome1"].startswith("inverted")
    assert card["input"]["photometric"]["no_window"] == "bits"
    assert card["output"]["findings"] == list(FINDINGS)
    assert card["output"]["thresholds"]["youden"]["Edema"] == 0.4
    assert card["output"]["thresholds"]["sensitivity"] == {"Edema": 0.1}
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
        want = exported["module"](*(torch.from_numpy(v) for v in batch.values())).numpy()
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
