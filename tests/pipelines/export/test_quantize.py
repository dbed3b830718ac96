"""export.quantize: the BatchNorm rewrite and the calibration reader."""

from __future__ import annotations

import numpy as np

from pipelines.data import ShardDataset
from pipelines.export.quantize import ShardCalibrationReader, batchnorm_to_depthwise_conv
from tests.pipelines.export.helpers import SIZE, make_prepared


def test_batchnorm_rewritten_as_an_equal_depthwise_convolution():
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


def test_calibration_reader_yields_seeded_batches_then_rewinds(tmp_path):
    make_prepared(tmp_path, counts={"train": 10})
    ds = ShardDataset(tmp_path, "train")
    reader = ShardCalibrationReader(ds, n_studies=7, batch=3, seed=1)
    again = ShardCalibrationReader(ds, n_studies=7, batch=3, seed=1)
    np.testing.assert_array_equal(reader.indices, again.indices)
    assert len(reader.indices) == 7 and list(reader.indices) == sorted(reader.indices)
    batches = list(iter(reader.get_next, None))
    assert [len(b["frontal"]) for b in batches] == [3, 3, 1]
    assert set(batches[0]) == {"frontal", "lateral", "has_lateral"}
    assert batches[0]["frontal"].shape[1:] == (1, SIZE, SIZE)
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["frontal"], batches[0]["frontal"])
    assert len(ShardCalibrationReader(ds, n_studies=50, batch=4, seed=0).indices) == 10
