"""Grad-CAM per view and finding: the library's maps equal a direct computation, each view's
share of the evidence follows the head's weights, heatmaps and overlays have the images' sizes."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.explain import (
    Explainer,
    evidence_share,
    overlay,
    png_bytes,
    split_trunk,
)
from pipelines.labels import FINDINGS
from pipelines.model import FEATURE_DIM, ModelParams, build_model, to_model_input

SIZE = 64  # the last dense block's grid is 2 x 2


def _model(channel: int | None = None, lateral: bool = False, **kw) -> torch.nn.Module:
    """A random DenseNet pair; with ``channel``, finding 0's logit reads only that feature of
    the frontal (or lateral) trunk: every other head weight of finding 0 is 0."""
    torch.manual_seed(0)
    model = build_model(ModelParams(**kw)).eval()
    if channel is not None:
        with torch.no_grad():
            model.head.weight[0].zero_()
            model.head.weight[0, channel + (FEATURE_DIM if lateral else 0)] = 3.0
    return model


def _views(seed: int = 0, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = torch.randint(0, 256, (n, 1, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return f, torch.randint(0, 256, (n, 1, SIZE, SIZE), dtype=torch.uint8, generator=g)


def _direct_cams(model, frontal, lateral, has_lateral, k):
    """Grad-CAM written out: block outputs A, d logit / dA, channel weights = mean gradient."""
    body_f, rest_f = split_trunk(model.frontal_encoder)
    body_l, rest_l = split_trunk(model._lateral_trunk())
    with torch.no_grad():
        a_f = body_f(to_model_input(frontal, SIZE)).requires_grad_(True)
        a_l = body_l(to_model_input(lateral, SIZE)).requires_grad_(True)
    logits = model.fuse(rest_f(a_f), rest_l(a_l), has_lateral)
    g_f, g_l = torch.autograd.grad(logits[:, k].sum(), [a_f, a_l])
    cam = lambda a, g: torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach().numpy()  # noqa: E731
    return cam(a_f, g_f), cam(a_l, g_l)


@pytest.mark.parametrize("shared", [False, True])
def test_monai_maps_equal_a_direct_grad_cam_for_both_views(shared):
    model = _model(shared_weights=shared)
    explainer = Explainer(model, SIZE, FINDINGS)
    frontal, lateral = _views()
    has = torch.tensor([True, True])
    blocks = explainer.blocks(frontal, lateral, has)
    for k in (1, 5):
        cf, cl = explainer.cams(blocks, FINDINGS[k])
        want_f, want_l = _direct_cams(model, frontal, lateral, has, k)
        assert cf.shape == cl.shape == (2, SIZE // 32, SIZE // 32)
        np.testing.assert_allclose(cf, want_f, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(cl, want_l, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # the probabilities are the model's
        want = torch.sigmoid(
            model(to_model_input(frontal, SIZE), to_model_input(lateral, SIZE), has)
        )
    np.testing.assert_allclose(blocks.probs, want.numpy(), rtol=1e-5, atol=1e-6)
    assert not model.training


@pytest.mark.parametrize("lateral", [False, True])
def test_view_share_follows_the_view_the_head_reads(lateral):
    # find a channel with positive evidence on this input, then tie finding 0 to it
    frontal, lat = _views(seed=3, n=1)
    probe = Explainer(_model(), SIZE, FINDINGS)
    blocks = probe.blocks(frontal, lat, torch.tensor([True]))
    feats = blocks.lateral if lateral else blocks.frontal
    channel = int(torch.relu(feats).mean((0, 2, 3)).argmax())
    explainer = Explainer(_model(channel, lateral=lateral), SIZE, FINDINGS)
    sal = explainer.explain(frontal[0, 0].numpy(), lat[0, 0].numpy(), [FINDINGS[0]])[FINDINGS[0]]
    silent, lit = (sal.frontal, sal.lateral) if lateral else (sal.lateral, sal.frontal)
    assert sal.frontal_share == (0.0 if lateral else 1.0)
    assert sal.lateral_share == (1.0 if lateral else 0.0)
    assert silent.max() == 0.0 and lit.max() == pytest.approx(1.0)


def test_no_lateral_view_has_no_lateral_heatmap_and_heatmaps_take_each_image_size():
    explainer = Explainer(_model(), SIZE, FINDINGS)
    rng = np.random.default_rng(0)
    frontal = rng.integers(0, 256, (80, 80), dtype=np.uint8)
    lateral = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    both = explainer.explain(frontal, lateral, FINDINGS[:4])
    assert list(both) == list(FINDINGS[:4])
    for sal in both.values():
        assert sal.frontal.shape == (80, 80) and sal.lateral.shape == (48, 48)
        assert sal.frontal.dtype == np.float32 and sal.frontal.min() >= 0
        peak = max(sal.frontal.max(), sal.lateral.max())
        assert peak == pytest.approx(1.0) or peak == 0.0
        assert 0.0 <= sal.frontal_share <= 1.0 or math.isnan(sal.frontal_share)
    alone = explainer.explain(frontal, None, FINDINGS[:4])
    for sal in alone.values():
        assert sal.lateral is None
        assert sal.frontal_share == 1.0 or math.isnan(sal.frontal_share)
    frontal_only = Explainer(_model(frontal_only=True), SIZE, FINDINGS)
    assert not frontal_only.two_views
    sal = frontal_only.explain(frontal, lateral, [FINDINGS[2]])[FINDINGS[2]]
    assert sal.lateral is None and sal.frontal.shape == (80, 80)


def test_evidence_share_values():
    assert evidence_share(np.array([[1.0, 1.0]]), np.array([[2.0, 0.0]])) == 0.5
    assert evidence_share(np.array([[3.0]]), None) == 1.0
    assert math.isnan(evidence_share(np.zeros((2, 2)), np.zeros((2, 2))))


def test_overlay_colours_where_the_heatmap_is_hot_and_png_round_trips():
    image = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))  # (32, 32) ramp
    heat = np.zeros((2, 2), dtype=np.float32)
    heat[0, 1] = 1.0  # the top-right cell
    rgb = overlay(image, heat)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    cold = overlay(image, np.zeros((2, 2)))
    np.testing.assert_array_equal(cold, np.repeat(image[..., None], 3, axis=2))
    diff = np.abs(rgb.astype(int) - cold.astype(int)).sum(2)
    assert diff[:8, 24:].mean() > 10 * diff[24:, :8].mean()
    assert overlay(image, heat, size=64).shape == (64, 64, 3)
    data = png_bytes(rgb)
    assert data == png_bytes(rgb)  # same pixels, same bytes
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)
