"""The Trainer: validation AUROC, the batch -> inputs path with and without online augment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipelines.augment import AugmentParams, OnlineAugment
from pipelines.labels import FINDINGS
from pipelines.model import ModelParams, build_model
from pipelines.train.trainer import EpochStats, Trainer, val_auroc

SIZE = 64  # the train stage's minimum input size


def test_macro_auroc_matches_sklearn_and_skips_unscorable_findings():
    labels = np.full((6, len(FINDINGS)), np.nan, dtype=np.float32)
    labels[:, 0] = [1, 0, 1, 0, 1, 0]
    labels[:, 1] = [1, 0, np.nan, np.nan, 0, 1]
    labels[:, 2] = [1, 1, 1, 1, np.nan, 1]  # one class only
    scores = np.random.default_rng(1).normal(size=labels.shape)
    macro, per = val_auroc(labels, scores)
    a0 = roc_auc_score(labels[:, 0], scores[:, 0])
    a1 = roc_auc_score([1, 0, 0, 1], scores[[0, 1, 4, 5], 1])
    assert per[FINDINGS[0]] == pytest.approx(a0) and per[FINDINGS[1]] == pytest.approx(a1)
    assert per[FINDINGS[2]] is None and per[FINDINGS[3]] is None
    assert macro == pytest.approx((a0 + a1) / 2)
    assert math.isnan(val_auroc(labels[:, 2:], scores[:, 2:])[0])


def test_epoch_stats_throughput():
    assert EpochStats(loss=0.5, pairs=30, seconds=2.0).pairs_per_s == 15.0
    assert EpochStats(loss=0.5, pairs=30, seconds=0.0).pairs_per_s == 0.0


def _trainer(augment: OnlineAugment | None = None, seed: int = 0) -> Trainer:
    torch.manual_seed(0)
    model = build_model(ModelParams())
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    trainer = Trainer(model, opt, sched, torch.nn.BCEWithLogitsLoss(), torch.device("cpu"))
    if augment is not None:
        trainer.augment = augment.train()
        trainer.augment_generator = torch.Generator().manual_seed(seed)
    return trainer


def _batch() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    batch = {
        "frontal": torch.from_numpy(rng.integers(30, 220, (4, 1, SIZE, SIZE), dtype=np.uint8)),
        "lateral": torch.from_numpy(rng.integers(30, 220, (4, 1, SIZE, SIZE), dtype=np.uint8)),
        "has_lateral": torch.tensor([True, True, False, True]),
        "labels": torch.zeros(4, len(FINDINGS)),
    }
    batch["lateral"][2] = 0  # a missing lateral is stored blank
    return batch


def test_online_augment_changes_training_inputs_only_and_keeps_missing_laterals_blank():
    policy = OnlineAugment(AugmentParams(rotation_deg=10.0, noise_std=0.05))
    trainer = _trainer(policy)
    batch = _batch()
    plain = trainer.inputs(batch)
    again = trainer.inputs(batch)
    augmented = trainer.inputs(batch, augment=True)
    for a, b in zip(plain, again, strict=True):  # validation path: deterministic, untouched
        assert torch.equal(a, b)
    assert not torch.allclose(augmented[0], plain[0])  # frontal augmented
    assert not torch.allclose(augmented[1][[0, 1, 3]], plain[1][[0, 1, 3]])
    torch.testing.assert_close(augmented[1][2], plain[1][2])  # the missing lateral stays blank
    assert torch.equal(augmented[3], plain[3])


def test_online_augment_draws_from_the_trainers_generator():
    policy = OnlineAugment(AugmentParams(rotation_deg=10.0))
    batch = _batch()
    a = _trainer(policy, seed=1).inputs(batch, augment=True)
    b = _trainer(policy, seed=1).inputs(batch, augment=True)
    c = _trainer(policy, seed=2).inputs(batch, augment=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
