"""Test-time augmentation: seeded draws, their JSON form, the pixels and the averaging runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.augment import AugmentParams, AugmentPolicy
from pipelines.runners import Scores
from pipelines.tta import (
    VIEWS,
    augment_views,
    draws_from_json,
    draws_to_json,
    tta_draws,
    tta_runner,
)
from tests.pipelines.test_augment import draw

S = 24


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:S, 0:S] / S
    base = 80 + 100 * np.sin(4 * x) * np.cos(3 * y)
    return torch.from_numpy(
        np.stack([np.clip(base + rng.normal(0, 9, (S, S)), 0, 255) for _ in range(n)]).astype(
            np.uint8
        )[:, None]
    )


def test_draws_are_seeded_per_view_and_do_not_depend_on_anything_else():
    params = AugmentParams()
    a, b = tta_draws(params, 7, 4), tta_draws(params, 7, 4)
    assert len(a) == 4 and a == b
    assert tta_draws(params, 7, 2) == a[:2]  # view k is the same whatever the count
    assert tta_draws(params, 8, 4) != a
    assert tta_draws(params.model_copy(update={"version": 2}), 7, 4) != a
    assert all(d["frontal"] != d["lateral"] for d in a)
    assert tta_draws(params, 7, 0) == []
    for d in a:  # within the policy's ranges
        f = d["frontal"]
        assert abs(f.angle) <= params.rotation_deg
        assert params.scale[0] <= f.scale <= params.scale[1]
        assert abs(f.brightness - 1) <= params.brightness


def test_json_round_trip_and_malformed_draws_are_refused():
    draws = tta_draws(AugmentParams(), 3, 3)
    back = draws_from_json(draws_to_json(draws))
    assert [{v: (d[v].angle, d[v].scale, d[v].gamma) for v in VIEWS} for d in back] == [
        {v: (d[v].angle, d[v].scale, d[v].gamma) for v in VIEWS} for d in draws
    ]
    good = draws_to_json(draws)
    with pytest.raises(ValueError, match="list of draws"):
        draws_from_json({"draws": good})
    with pytest.raises(ValueError, match="draw 1 is malformed"):
        draws_from_json([good[0], {"frontal": good[1]["frontal"]}])  # no lateral
    bad = [dict(good[0], frontal=dict(good[0]["frontal"], scale=0.0))]
    with pytest.raises(ValueError, match="draw 0 is malformed"):
        draws_from_json(bad)
    bad = [dict(good[0], lateral=dict(good[0]["lateral"], angle=float("nan")))]
    with pytest.raises(ValueError, match="draw 0 is malformed"):
        draws_from_json(bad)


def test_pixels_are_those_the_offline_augment_stage_writes():
    params = AugmentParams(noise_std=0.0, rotation_deg=10.0, hflip=True)
    policy = AugmentPolicy(params, 5)
    x = images()
    for d in tta_draws(params, 5, 3):
        out = augment_views(x, d["frontal"])
        assert out.dtype == torch.uint8 and out.shape == x.shape
        for i in range(len(x)):
            want = policy.apply(x[i, 0].numpy(), d["frontal"])
            np.testing.assert_array_equal(out[i, 0].numpy(), want)
        assert not torch.equal(out, x)


def test_identity_draw_keeps_the_image_and_blank_views_stay_blank():
    x = images()
    assert torch.equal(augment_views(x, draw()), x)  # test_augment.draw(): the identity
    blank = torch.zeros_like(x)
    for d in tta_draws(AugmentParams(), 1, 4):
        assert int(augment_views(blank, d["lateral"]).max()) == 0


def test_runner_averages_the_passes_and_keeps_the_gate_of_the_image_as_it_is():
    calls: list[np.ndarray] = []

    def runner(frontal: np.ndarray, lateral: np.ndarray, has: np.ndarray) -> Scores:
        calls.append(frontal.copy())
        p = np.stack([frontal.mean((1, 2, 3)) / 255, lateral.mean((1, 2, 3)) / 255], 1)
        return Scores(p.astype(np.float32), np.full((len(frontal), 2), float(len(calls))))

    draws = tta_draws(AugmentParams(noise_std=0.0), 2, 3)
    f, lat = images(2, 1).numpy(), images(2, 2).numpy()
    has = np.array([True, False])
    out = tta_runner(runner, draws)(f, lat, has)
    assert len(calls) == 4 and np.array_equal(calls[0], f)
    views = [(f, lat)] + [
        (
            augment_views(torch.from_numpy(f), d["frontal"]).numpy(),
            augment_views(torch.from_numpy(lat), d["lateral"]).numpy(),
        )
        for d in draws
    ]
    want = np.mean(
        [np.stack([a.mean((1, 2, 3)) / 255, b.mean((1, 2, 3)) / 255], 1) for a, b in views], 0
    )
    np.testing.assert_allclose(out.probabilities, want, rtol=1e-6)
    assert np.all(out.ood == 1.0)  # the first pass's distances
    assert tta_runner(runner, []) is runner
