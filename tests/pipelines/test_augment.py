"""augment: the ops, the seeded offline policy (pixels, determinism, shards), the online path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.augment import (
    N_UNIFORMS,
    AugmentParams,
    AugmentPolicy,
    Draw,
    OnlineAugment,
    augment_shards,
    draw_from_uniforms,
    online_generator,
    run_augment,
    sample_seed,
    transform,
)
from pipelines.config import parse_section
from pipelines.data import ShardDataset, read_index
from pipelines.errors import ConfigError
from tests.pipelines.test_data import make_shards

S = 32
IDENTITY = {
    "rotation_deg": 0.0,
    "translate": 0.0,
    "scale": (1.0, 1.0),
    "brightness": 0.0,
    "contrast": 0.0,
    "gamma": (1.0, 1.0),
    "noise_std": 0.0,
}


def image() -> np.ndarray:
    """A non-symmetric test picture: gradient plus an off-centre bright square."""
    y, x = np.mgrid[0:S, 0:S]
    img = (40 + 3 * x + 2 * y).astype(np.float64)
    img[6:12, 18:26] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


def draw(**kw) -> Draw:
    base = dict(
        angle=0.0,
        translate=(0.0, 0.0),
        scale=1.0,
        flip=False,
        brightness=1.0,
        contrast=1.0,
        gamma=1.0,
        noise_seed=0,
    )
    return Draw(**(base | kw))


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def prepared(tmp_path) -> Path:
    make_shards(tmp_path / "prep", {"train": [3, 2], "val": [2]}, size=S)
    # give the shards real structure so the affine has something to move
    for f in (tmp_path / "prep").glob("train-*.images.npy"):
        arr = np.load(f)  # frontals, then the laterals of the studies that have one
        n = len(pd.read_parquet(str(f).replace(".images.npy", ".meta.parquet")))
        arr[:n] = np.maximum(arr[:n], image())
        arr[n:] = image().T
        np.save(f, arr)
    return tmp_path / "prep"


# ---------------------------------------------------------------------------------------------
# offline policy: pixels


def test_identity_draw_returns_input():
    policy = AugmentPolicy(AugmentParams(**IDENTITY), seed=0)
    np.testing.assert_array_equal(policy.apply(image(), draw()), image())


def test_translate_moves_right_and_fills_black():
    policy = AugmentPolicy(AugmentParams(**IDENTITY), seed=0)
    out = policy.apply(image(), draw(translate=(4 / S, 0.0)))
    np.testing.assert_array_equal(out[:, 4:], image()[:, :-4])
    assert (out[:, :4] == 0).all()


def test_intensity_ops_match_formulas():
    policy = AugmentPolicy(AugmentParams(**IDENTITY), seed=0)
    img = image().astype(np.float64) / 255
    out = policy.apply(image(), draw(brightness=1.2))
    np.testing.assert_allclose(out, np.rint(np.clip(img * 1.2, 0, 1) * 255), atol=1)
    out = policy.apply(image(), draw(gamma=1.5))
    np.testing.assert_allclose(out, np.rint(img**1.5 * 255), atol=1)
    out = policy.apply(image(), draw(contrast=0.5))
    mean = img.mean()
    np.testing.assert_allclose(out, np.rint(((img - mean) * 0.5 + mean) * 255), atol=1)


def test_noise_has_the_requested_std():
    params = AugmentParams(**(IDENTITY | {"noise_std": 0.05}))
    grey = np.full((64, 64), 128, dtype=np.uint8)
    out = AugmentPolicy(params, seed=0).apply(grey, draw(noise_seed=5))
    assert abs((out.astype(float) - 128).std() / 255 - 0.05) < 0.005


def test_draws_are_seeded_by_identity_not_order():
    params = AugmentParams(rotation_deg=10, translate=0.1, hflip=False)
    p = AugmentPolicy(params, seed=7)
    a = p.draw("s1", 1, "frontal")
    assert a == AugmentPolicy(params, seed=7).draw("s1", 1, "frontal")
    others = [
        p.draw("s2", 1, "frontal"),
        p.draw("s1", 2, "frontal"),
        p.draw("s1", 1, "lateral"),  # each view its own draw
        AugmentPolicy(params, seed=8).draw("s1", 1, "frontal"),
        AugmentPolicy(params.model_copy(update={"version": 2}), seed=7).draw("s1", 1, "frontal"),
    ]
    assert all(o != a for o in others)
    assert len({sample_seed(0, 1, "k", c, "frontal") for c in range(100)}) == 100
    draws = [p.draw(f"s{i}", 1, "frontal") for i in range(300)]
    assert all(abs(d.angle) <= 10 and max(map(abs, d.translate)) <= 0.1 for d in draws)
    assert all(0.93 <= d.scale <= 1.07 and 0.9 <= d.gamma <= 1.1 for d in draws)
    assert not any(d.flip for d in draws)  # hflip off by default
    flips = [AugmentPolicy(params.model_copy(update={"hflip": True}), 0).draw(f"s{i}", 1, "f")
             for i in range(100)]  # fmt: skip
    assert 20 < sum(d.flip for d in flips) < 80


# ---------------------------------------------------------------------------------------------
# offline stage


def test_copies_written_and_byte_identical(prepared, tmp_path):
    params = AugmentParams(copies=2)
    summary = augment_shards(prepared, tmp_path / "a", params, seed=3)
    augment_shards(prepared, tmp_path / "b", params, seed=3)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")  # bit-identical
    augment_shards(prepared, tmp_path / "c", params, seed=4)
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    assert summary["studies"] == 10 and summary["shards"] == 4

    ds = ShardDataset(tmp_path / "a", "train")
    orig = ShardDataset(prepared, "train")
    assert len(ds) == 10 and ds.meta["copy"].tolist() == [1] * 5 + [2] * 5
    assert len(ShardDataset(tmp_path / "a", "val")) == 0  # only train is augmented
    policy = AugmentPolicy(params, seed=3)
    for i in range(10):
        src = orig[i % 5]
        key = orig.meta["study_key"][i % 5]
        pair = np.stack([src["frontal"][0].numpy(), src["lateral"][0].numpy()])
        expected = policy.augment_pair(pair, bool(src["has_lateral"]), key, 1 + i // 5)
        got = ds[i]
        np.testing.assert_array_equal(got["frontal"][0].numpy(), expected[0])
        np.testing.assert_array_equal(got["lateral"][0].numpy(), expected[1])
        assert not np.array_equal(expected[0], pair[0])  # it did change
        if not bool(src["has_lateral"]):
            assert got["lateral"].sum() == 0  # a missing lateral stays black
        torch.testing.assert_close(got["labels"], src["labels"], equal_nan=True)
    both = ShardDataset([prepared, tmp_path / "a"], "train")
    assert len(both) == 15


def test_zero_copies_gives_an_empty_valid_index(prepared, tmp_path):
    summary = augment_shards(prepared, tmp_path / "z", AugmentParams(copies=0), seed=0)
    assert summary["studies"] == 0
    index = read_index(tmp_path / "z")
    assert index["splits"]["train"] == [] and index["size"] == S
    assert len(ShardDataset([prepared, tmp_path / "z"], "train")) == 5


def test_run_augment_writes_preview_and_metrics(prepared, tmp_path):
    params = AugmentParams(prepared=str(prepared), out=str(tmp_path / "aug"), preview=2)
    run_augment(params, seed=1, metrics=tmp_path / "m.json", preview=tmp_path / "p.png")
    from PIL import Image

    with Image.open(tmp_path / "p.png") as im:
        assert im.size[0] >= 400
    assert (tmp_path / "m.json").read_text().count('"copies": 1') == 1


def test_params_validation():
    with pytest.raises(ConfigError, match=r"augment\.scale"):
        parse_section(AugmentParams, "augment", {"augment": {"scale": [1.2, 0.8]}})
    with pytest.raises(ConfigError, match=r"augment\.copies"):
        parse_section(AugmentParams, "augment", {"augment": {"copies": -1}})


def test_offline_draws_follow_numpys_uniforms():
    """The shared uniforms -> draw mapping gives what numpy's Generator.uniform gave."""
    params = AugmentParams(rotation_deg=10, translate=0.1, hflip=True)
    policy = AugmentPolicy(params, seed=7)
    for key in ("s1", "s2", "s3", "s4"):
        rng = np.random.default_rng(sample_seed(7, params.version, key, 1, "frontal"))
        u = rng.uniform(-1.0, 1.0, size=4)
        want = Draw(
            angle=float(u[0] * params.rotation_deg),
            translate=(float(u[1] * params.translate), float(u[2] * params.translate)),
            scale=float(rng.uniform(*params.scale)),
            flip=bool(params.hflip and u[3] > 0),
            brightness=float(rng.uniform(1 - params.brightness, 1 + params.brightness)),
            contrast=float(rng.uniform(1 - params.contrast, 1 + params.contrast)),
            gamma=float(rng.uniform(*params.gamma)),
            noise_seed=int(rng.integers(2**63)),
        )
        assert policy.draw(key, 1, "frontal") == want


# ---------------------------------------------------------------------------------------------
# online


def _batch(n: int = 4) -> torch.Tensor:
    return torch.from_numpy(np.stack([image()] * n))[:, None]


def test_online_identity_and_eval_mode():
    aug = OnlineAugment(AugmentParams(**IDENTITY))
    x = _batch()
    torch.testing.assert_close(aug(x), x.float() / 255, atol=1e-5, rtol=0)
    aug2 = OnlineAugment(AugmentParams()).eval()
    torch.testing.assert_close(aug2(x), x.float() / 255)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(aug2(x, generator=gen), x.float() / 255)  # eval: the identity


def test_the_ops_match_torchvision_geometry():
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    x = _batch(2).float() / 255
    y0 = transform(x[0], draw(angle=90.0))
    tv0 = F.affine(x[0], angle=90.0, translate=[0, 0], scale=1.0, shear=[0.0, 0.0],
                   interpolation=InterpolationMode.BILINEAR, fill=0.0)  # fmt: skip
    torch.testing.assert_close(y0, tv0, atol=1e-5, rtol=0)
    torch.testing.assert_close(y0[0], torch.rot90(x[0, 0], k=-1), atol=1e-5, rtol=0)
    y1 = transform(x[1], draw(translate=(4 / S, -2 / S)))
    shifted = torch.zeros_like(x[1, 0])
    shifted[: S - 2, 4:] = x[1, 0, 2:, : S - 4]
    torch.testing.assert_close(y1[0], shifted, atol=1e-5, rtol=0)
    flipped = transform(x[1], draw(flip=True))
    torch.testing.assert_close(flipped[0], x[1, 0].flip(-1), atol=1e-5, rtol=0)


def test_online_gives_the_offline_pixels_for_the_same_draw():
    params = AugmentParams(rotation_deg=15, translate=0.1, hflip=True, noise_std=0.0)
    offline, online = AugmentPolicy(params, seed=0), OnlineAugment(params)
    draws = [offline.draw(f"s{i}", 1, "frontal") for i in range(12)]
    assert any(d.flip for d in draws) and not all(d.flip for d in draws)
    x = torch.from_numpy(image()).float().div(255.0)[None]
    for d in draws:
        want = offline.apply(image(), d).astype(np.float64)
        got = online.augment_view(x, d).numpy()[0].astype(np.float64) * 255
        assert np.abs(got - want).max() <= 0.5 + 1e-3  # offline rounds to uint8, nothing else
    # and the batch path applies, per sample, the draws its generator gives
    batch = _batch(5)
    out = online(batch, generator=torch.Generator().manual_seed(4))
    replay = online.draws(5, "cpu", torch.Generator().manual_seed(4))
    assert len({d.angle for d in replay}) == 5  # each sample its own draw
    for i, d in enumerate(replay):
        want = offline.apply(image(), d).astype(np.float64)
        assert np.abs(out[i, 0].numpy() * 255 - want).max() <= 0.5 + 1e-3


def test_online_draws_follow_the_policy_ranges():
    params = AugmentParams(rotation_deg=10, translate=0.1)
    draws = OnlineAugment(params).draws(300, "cpu", torch.Generator().manual_seed(0))
    assert all(abs(d.angle) <= 10 and max(map(abs, d.translate)) <= 0.1 for d in draws)
    assert all(0.93 <= d.scale <= 1.07 and 0.9 <= d.gamma <= 1.1 for d in draws)
    assert all(0.92 <= d.brightness <= 1.08 and 0.9 <= d.contrast <= 1.1 for d in draws)
    assert not any(d.flip for d in draws)  # hflip off by default
    assert draw_from_uniforms(params, [0.5] * N_UNIFORMS).angle == 0.0


def test_online_random_is_seeded_bounded_and_masked():
    aug = OnlineAugment(AugmentParams(noise_std=0.02))
    x = _batch(6)
    mask = torch.tensor([True, True, False, True, False, True])
    a = aug(x, mask=mask, generator=torch.Generator().manual_seed(0))
    b = aug(x, mask=mask, generator=torch.Generator().manual_seed(0))
    c = aug(x, mask=mask, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a[~mask], x[~mask].float() / 255)  # unmasked untouched
    assert not torch.allclose(a[0], a[1])  # each sample its own draw


def test_online_noise_has_the_requested_std():
    params = AugmentParams(**(IDENTITY | {"noise_std": 0.05}))
    grey = torch.full((2, 1, 64, 64), 128, dtype=torch.uint8)
    out = OnlineAugment(params)(grey, generator=torch.Generator().manual_seed(0))
    assert abs((out * 255 - 128).std().item() / 255 - 0.05) < 0.005


def test_online_generator_is_seeded_by_seed_and_rank():
    def first(seed: int, rank: int) -> torch.Tensor:
        return torch.rand(4, generator=online_generator(seed, rank, "cpu"))

    assert torch.equal(first(3, 0), first(3, 0))
    assert not torch.equal(first(3, 0), first(3, 1)) and not torch.equal(first(3, 0), first(4, 0))
    torch.manual_seed(3)
    assert not torch.equal(first(3, 0), torch.rand(4))  # apart from the global stream


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_online_on_cuda_is_seeded_and_matches_the_cpu_ops():
    params = AugmentParams(rotation_deg=15, translate=0.1, hflip=True, noise_std=0.0)
    aug = OnlineAugment(params)
    x = _batch(4).cuda()
    a = aug(x, generator=online_generator(0, 0, "cuda"))
    b = aug(x, generator=online_generator(0, 0, "cuda"))
    assert a.device.type == "cuda" and torch.equal(a, b)
    replay = aug.draws(4, "cuda", online_generator(0, 0, "cuda"))
    cpu = torch.stack([aug.augment_view(x[i].cpu().float() / 255, d) for i, d in enumerate(replay)])
    torch.testing.assert_close(a.cpu(), cpu, atol=1e-4, rtol=0)
