"""The two-branch DenseNet-121: normalisation, gradients, fusion, weights, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import DenseNet121_Weights, densenet121

from pipelines.errors import CheckpointError
from pipelines.labels import FINDINGS
from pipelines.model import (
    PIXEL_MEAN,
    PIXEL_STD,
    ModelParams,
    build_model,
    densenet_trunk,
    load_model,
    normalize,
    to_model_input,
)

SIZE = 32  # eval-mode and >=2-sample training batches work down to 32 px


def views(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, batch, 1, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return normalize(images[0]), normalize(images[1])


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        fusion: build_model(ModelParams(fusion=fusion), len(FINDINGS))
        for fusion in ("concat", "mean", "max")
    }


def test_normalize_values():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).reshape(1, 1, 1, 3)
    got = normalize(x)
    assert got.dtype == torch.float32
    want = (np.array([0, 128, 255]) / 255.0 - PIXEL_MEAN) / PIXEL_STD
    np.testing.assert_allclose(got.flatten().numpy(), want, rtol=1e-6)


def test_to_model_input_resizes_and_keeps_constant_images_constant():
    x = torch.full((2, 1, 96, 96), 200, dtype=torch.uint8)
    out = to_model_input(x, 64)
    assert out.shape == (2, 1, 64, 64)
    np.testing.assert_allclose(out.numpy(), (200 / 255 - PIXEL_MEAN) / PIXEL_STD, rtol=1e-5)
    assert to_model_input(x).shape == (2, 1, 96, 96)


def _trunk_grads(model, name):
    trunk = getattr(model, name)
    return [p.grad for p in trunk.parameters()]


@pytest.mark.parametrize("fusion", ["concat", "mean", "max"])
def test_finite_gradients_for_both_views_and_a_missing_lateral(models, fusion):
    model = models[fusion].train()
    model.zero_grad(set_to_none=True)
    frontal, lateral = views(3)
    logits = model(frontal, lateral, torch.tensor([True, False, True]))
    assert logits.shape == (3, len(FINDINGS))
    logits.sum().backward()
    for name in ("frontal_encoder", "lateral_encoder"):
        grads = _trunk_grads(model, name)
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    assert torch.isfinite(model.head.weight.grad).all()


def test_batch_without_any_lateral_trains_with_zero_lateral_gradient(models):
    model = models["concat"].train()
    model.zero_grad(set_to_none=True)
    frontal, lateral = views(2)
    model(frontal, lateral, torch.tensor([False, False])).sum().backward()
    lateral_grads = _trunk_grads(model, "lateral_encoder")
    assert all(g is not None and (g == 0).all() for g in lateral_grads)  # used, but inert
    assert sum(g.abs().sum() for g in _trunk_grads(model, "frontal_encoder")) > 0


@pytest.mark.parametrize("fusion", ["concat", "mean", "max"])
def test_missing_lateral_ignores_lateral_pixels_and_present_lateral_uses_them(models, fusion):
    model = models[fusion].eval()
    frontal, lateral = views(2)
    _, other = views(2, seed=9)
    with torch.no_grad():
        absent = model(frontal, lateral, torch.tensor([False, False]))
        absent2 = model(frontal, other, torch.tensor([False, False]))
        present = model(frontal, lateral, torch.tensor([True, True]))
        present2 = model(frontal, other, torch.tensor([True, True]))
    torch.testing.assert_close(absent, absent2, rtol=0, atol=0)
    assert not torch.allclose(present, present2)


def test_fusion_formulas(models):
    frontal, lateral = views(2)
    mask = torch.tensor([True, False])
    with torch.no_grad():
        for fusion, model in models.items():
            model.eval()
            f = model.frontal_encoder(frontal)
            lat = model.lateral_encoder(lateral)
            m = mask.float().unsqueeze(1)
            fused = {
                "concat": torch.cat([f, lat * m, m], 1),
                "mean": torch.stack([(f[0] + lat[0]) / 2, f[1]]),
                "max": torch.stack([torch.maximum(f[0], lat[0]), f[1]]),
            }[fusion]
            torch.testing.assert_close(model(frontal, lateral, mask), model.head(fused))
    assert models["concat"].head.in_features == 2 * 1024 + 1
    assert models["mean"].head.in_features == 1024


def test_frontal_only_ignores_the_lateral_input():
    torch.manual_seed(3)
    model = build_model(ModelParams(frontal_only=True)).eval()
    assert model.lateral_encoder is None
    frontal, lateral = views(2)
    _, other = views(2, seed=5)
    with torch.no_grad():
        a = model(frontal, lateral, torch.tensor([True, True]))
        b = model(frontal, other, torch.tensor([True, False]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_shared_weights_has_one_trunk():
    torch.manual_seed(4)
    shared = build_model(ModelParams(shared_weights=True))
    separate = build_model(ModelParams())
    assert shared.lateral_encoder is None
    n_shared = sum(p.numel() for p in shared.parameters())
    n_trunk = sum(p.numel() for p in separate.frontal_encoder.parameters())
    assert sum(p.numel() for p in separate.parameters()) - n_shared == n_trunk
    frontal, lateral = views(2)
    shared.train()(frontal, lateral, torch.tensor([True, True])).sum().backward()
    assert torch.isfinite(shared.frontal_encoder[0].conv0.weight.grad).all()


def test_view_dropout_hides_laterals_in_training_only():
    torch.manual_seed(5)
    model = build_model(ModelParams(view_dropout=0.999999))
    frontal, lateral = views(2)
    model.train()(frontal, lateral, torch.tensor([True, True])).sum().backward()
    assert all((g == 0).all() for g in _trunk_grads(model, "lateral_encoder"))
    model.eval()
    with torch.no_grad():
        present = model(frontal, lateral, torch.tensor([True, True]))
        absent = model(frontal, lateral, torch.tensor([False, False]))
    assert not torch.allclose(present, absent)  # eval: no view dropout


def _tv_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return densenet121(weights=None).state_dict()


def test_local_weights_sum_rgb_kernels(tmp_path):
    state = _tv_state(6)
    path = tmp_path / "densenet121.pth"
    torch.save(state, path)
    trunk = densenet_trunk(str(path))
    features = trunk[0]
    torch.testing.assert_close(
        features.conv0.weight, state["features.conv0.weight"].sum(1, keepdim=True)
    )
    torch.testing.assert_close(
        features.denseblock3.denselayer7.conv2.weight,
        state["features.denseblock3.denselayer7.conv2.weight"],
    )
    torch.testing.assert_close(features.norm5.running_var, state["features.norm5.running_var"])


def test_local_weights_with_legacy_keys_and_wrapper(tmp_path):
    state = _tv_state(7)
    legacy = {  # old torchvision files: ``norm.1`` style names, no ``num_batches_tracked``
        k.replace("norm1", "norm.1").replace("conv2", "conv.2") if "denselayer" in k else k: v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": legacy}, path)
    model = build_model(ModelParams(weights=str(path)))
    for trunk in (model.frontal_encoder, model.lateral_encoder):
        torch.testing.assert_close(
            trunk[0].denseblock1.denselayer2.norm1.weight,
            state["features.denseblock1.denselayer2.norm1.weight"],
        )


def test_bad_weights_files_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pth: weights file not found"):
        densenet_trunk(str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth"):
        densenet_trunk(str(junk))
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    with pytest.raises(CheckpointError, match="resnet.pth: not a DenseNet-121"):
        densenet_trunk(str(other))


def test_imagenet_weights_come_from_the_torch_hub_cache_without_download(tmp_path, monkeypatch):
    state = _tv_state(8)
    url = DenseNet121_Weights.IMAGENET1K_V1.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("tests must never download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    trunk = densenet_trunk("imagenet")
    torch.testing.assert_close(
        trunk[0].conv0.weight, state["features.conv0.weight"].sum(1, keepdim=True)
    )


def test_load_model_round_trip(tmp_path):
    torch.manual_seed(9)
    params = ModelParams(fusion="max", dropout=0.3, shared_weights=True)
    model = build_model(params, 5).eval()
    meta = {"model_params": params.model_dump(), "findings": list(FINDINGS[:5]), "size": SIZE}
    path = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "meta": meta}, path)
    loaded, got_meta = load_model(path)
    assert not loaded.training and got_meta == meta
    frontal, lateral = views(2)
    mask = torch.tensor([True, False])
    with torch.no_grad():
        torch.testing.assert_close(loaded(frontal, lateral, mask), model(frontal, lateral, mask))


def test_load_model_refuses_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint not found"):
        load_model(tmp_path / "nope.pt")
    bare = tmp_path / "bare.pt"
    torch.save({"weights": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointError, match="bare.pt: not a cxr-dag checkpoint"):
        load_model(bare)


class Evil:
    """An arbitrary class: ``weights_only=True`` must refuse to unpickle it."""


def test_load_model_uses_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "meta": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_model(path)
