"""export.inference: the inference module normalises, resizes and masks inside."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.data import ShardDataset
from pipelines.export.inference import CXRInference, eager_runner, example_inputs, stack_studies
from pipelines.labels import FINDINGS
from pipelines.model import PIXEL_MEAN, PIXEL_STD, to_model_input
from tests.pipelines.export.helpers import SIZE, TinyNet, fitted_gate, make_prepared


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


def test_example_inputs_are_deterministic_uint8_with_mixed_laterals():
    a, b = example_inputs(SIZE, batch=3), example_inputs(SIZE, batch=3)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert a[0].dtype == torch.uint8 and a[0].shape == (3, 1, SIZE, SIZE)
    assert a[2].tolist() == [True, False, True]


def test_eager_runner_is_the_module_on_numpy(tmp_path):
    module = CXRInference(TinyNet()).eval()
    make_prepared(tmp_path, counts={"test": 5})
    frontal, lateral, has, labels = stack_studies(ShardDataset(tmp_path, "test"), np.arange(5))
    assert frontal.dtype == np.uint8 and has.dtype == bool and labels.shape == (5, len(FINDINGS))
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in (frontal, lateral, has))).numpy()
    got = eager_runner(module)(frontal, lateral, has)
    np.testing.assert_array_equal(got.probabilities, want)
    assert got.ood is None  # no gate, no second output


def test_the_gate_inside_the_module_gives_the_gates_own_distances(tmp_path):
    net = TinyNet(seed=1)
    prepared = make_prepared(tmp_path)
    gate = fitted_gate(net, prepared)
    plain, gated = CXRInference(net).eval(), CXRInference(net, gate=gate).eval()
    frontal, lateral, has, _ = stack_studies(ShardDataset(prepared, "test"), np.arange(20))
    out = eager_runner(gated)(frontal, lateral, has)
    np.testing.assert_array_equal(
        out.probabilities, eager_runner(plain)(frontal, lateral, has).probabilities
    )
    with torch.no_grad():
        f, lat = net.view_features(
            to_model_input(torch.from_numpy(frontal), None),
            to_model_input(torch.from_numpy(lateral), None),
        )
    want = gate.distances(f.numpy(), lat.numpy())
    want[~has, 1] = 0  # an unread lateral is never measured
    np.testing.assert_allclose(out.ood, want, rtol=1e-4)
    assert (out.ood[has, 1] > 0).all() and out.ood.shape == (20, 2)
