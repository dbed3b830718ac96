"""The train stage: metrics, schedule, RNG state, end-to-end runs, kill + resume, 2-process DDP."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from pipelines.data import ShardDataset, shard_meta, shard_name, write_index, write_shard
from pipelines.errors import CheckpointError, UserError
from pipelines.labels import FINDINGS
from pipelines.model import ModelParams, load_model, to_model_input
from pipelines.train import (
    TrainParams,
    build_scheduler,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    train,
    val_auroc,
)

REPO = Path(__file__).resolve().parents[2]
SIZE = 64  # the train stage's minimum input size


def make_prepared(root: Path, counts: dict[str, int], size: int = SIZE, seed: int = 0) -> Path:
    """Tiny prepared shards: findings 0 and 1 brighten a frontal / lateral corner; some NaN."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in counts.items():
        labels = (rng.random((n, len(FINDINGS))) < 0.4).astype(np.float32)
        labels[:, 0] = np.arange(n) % 2  # both classes present for finding 0 and 1
        labels[:, 1] = (np.arange(n) // 2) % 2
        labels[rng.random((n, len(FINDINGS))) < 0.1] = np.nan
        labels[:, :2] = np.nan_to_num(labels[:, :2])
        has_lateral = np.arange(n) % 3 != 2
        images = rng.integers(0, 120, (n, 2, size, size), dtype=np.uint8)
        images[:, 0, :16, :16] += (80 * labels[:, 0]).astype(np.uint8)[:, None, None]
        images[:, 1, :16, :16] += (80 * labels[:, 1]).astype(np.uint8)[:, None, None]
        images[~has_lateral, 1] = 0
        studies = [f"{split}{i}" for i in range(n)]
        meta = shard_meta(studies, [f"p{s}" for s in studies], has_lateral, labels)
        splits[split] = [write_shard(root, shard_name(split, 0), images, meta)]
    write_index(root, size, splits)
    return root


def tiny_params(tmp: Path, **overrides) -> TrainParams:
    values = {
        "prepared": str(tmp / "data/prepared"),
        "augmented": str(tmp / "data/augmented"),
        "out": str(tmp / "models"),
        "metrics": str(tmp / "metrics/train.json"),
        "live": str(tmp / "dvclive/train"),
        "tensorboard": str(tmp / "runs/train"),
        "size": SIZE,
        "epochs": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "warmup_epochs": 0.5,
        "threads": 1,
        "progress": False,
        "patience": 0,
        "model": {"dropout": 0.1, "view_dropout": 0.2},
    }
    return TrainParams.model_validate(values | overrides)


# ---------------------------------------------------------------------------------- units


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


def test_scheduler_warms_up_linearly_then_decays_to_the_floor():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    params = TrainParams(epochs=2, lr=0.1, warmup_epochs=0.5, min_lr_ratio=0.1)
    sched = build_scheduler(opt, params, steps_per_epoch=10)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(lrs[:6], 0.1 * (0.01 + 0.99 * np.arange(6) / 5), rtol=1e-6)
    cosine = 0.01 + (0.1 - 0.01) * (1 + np.cos(np.pi * np.arange(16) / 15)) / 2
    np.testing.assert_allclose(lrs[5:], cosine, rtol=1e-6)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached gaussian in NumPy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state(gen)})
    want = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    gen.manual_seed(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"], gen)
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    torch.testing.assert_close(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2]
    torch.testing.assert_close(got[3], want[3])


class Payload:
    """Not a tensor or plain type: a weights_only load must refuse it."""


def test_checkpoints_load_weights_only(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "optimizer": Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot resume"):
        load_checkpoint(path)
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="not a train checkpoint"):
        load_checkpoint(path)


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no shard index"):
        train(tiny_params(tmp_path), seed=0)
    make_prepared(tmp_path / "data/prepared", {"train": 8})
    with pytest.raises(UserError, match="no studies in the val split"):
        train(tiny_params(tmp_path), seed=0)


def test_small_input_size_is_refused():
    with pytest.raises(ValueError, match="greater than or equal to 64"):
        TrainParams(size=32)


# ---------------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_train_writes_outputs_and_the_logged_auroc_is_the_best_models(tmp_path):
    prepared = make_prepared(tmp_path / "data/prepared", {"train": 12, "val": 8})
    make_prepared(tmp_path / "data/augmented", {"train": 4}, seed=5)
    params = tiny_params(tmp_path, precision="fp32")
    result = train(params, seed=11)
    summary = json.loads((tmp_path / "metrics/train.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["train_pairs"] == 16 and summary["val_pairs"] == 8  # originals + copies
    assert summary["epochs_run"] == 2 and summary["world_size"] == 1

    model, meta = load_model(tmp_path / "models/best.pt")
    assert meta["epoch"] == summary["best_epoch"] and meta["size"] == SIZE
    assert meta["findings"] == list(FINDINGS) and meta["model_params"]["view_dropout"] == 0.2
    val = ShardDataset(prepared, "val")
    batch = val.get_batch(range(len(val)))
    with torch.no_grad():
        logits = model(
            to_model_input(batch["frontal"], SIZE),
            to_model_input(batch["lateral"], SIZE),
            batch["has_lateral"],
        )
    macro, _ = val_auroc(batch["labels"].numpy(), logits.numpy())
    assert summary["val_macro_auroc"] == pytest.approx(macro, abs=1e-6)

    ckpt = load_checkpoint(tmp_path / "models/checkpoints/last.pt")
    assert ckpt["epochs_done"] == 2 and len(ckpt["history"]) == 2
    live = json.loads((tmp_path / "dvclive/train/metrics.json").read_text())
    assert live["step"] == 2
    tsv = pd.read_csv(tmp_path / "dvclive/train/plots/metrics/val/macro_auroc.tsv", sep="\t")
    np.testing.assert_allclose(tsv["macro_auroc"], [h["val/macro_auroc"] for h in ckpt["history"]])
    assert list((tmp_path / "runs/train").glob("events.out.tfevents.*"))


def _write_stage(tmp: Path, params: TrainParams, resume: bool = False) -> Path:
    raw = {"base": {"seed": 5}, "train": params.model_dump(by_alias=True) | {"resume": resume}}
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp


def _run_stage(cwd: Path) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.train"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_sigkill_then_resume_reaches_the_uninterrupted_result(tmp_path):
    """A run killed (SIGKILL) after its first checkpoint and resumed ends with the same weights
    as an uninterrupted run, bit for bit (tolerance 0; deterministic kernels, CPU, 1 thread),
    and the same per-epoch metrics (abs 1e-6)."""
    runs = {}
    for name in ("straight", "killed"):
        root = tmp_path / name
        make_prepared(root / "data/prepared", {"train": 12, "val": 6})
        runs[name] = _write_stage(root, tiny_params(root, epochs=3, precision="fp32"))

    straight = _run_stage(runs["straight"])
    out, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, out.decode()

    last = runs["killed"] / "models/checkpoints/last.pt"
    victim = _run_stage(runs["killed"])
    deadline = time.monotonic() + 600
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert load_checkpoint(last)["epochs_done"] < 3  # it really died mid-run

    _write_stage(runs["killed"], tiny_params(runs["killed"], epochs=3, precision="fp32"), True)
    resumed = _run_stage(runs["killed"])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out.decode()
    assert b"resuming from" in out

    a = load_checkpoint(runs["straight"] / "models/checkpoints/last.pt")
    b = load_checkpoint(last)
    assert a["epochs_done"] == b["epochs_done"] == 3
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    for ha, hb in zip(a["history"], b["history"], strict=True):
        for key in ("train/loss", "val/loss", "val/macro_auroc", "lr"):
            assert hb[key] == pytest.approx(ha[key], abs=1e-6), key
    sa = json.loads((runs["straight"] / "metrics/train.json").read_text())
    sb = json.loads((runs["killed"] / "metrics/train.json").read_text())
    assert sb["resumed_from_epoch"] in (1, 2) and sa["resumed_from_epoch"] is None
    assert sb["val_macro_auroc"] == pytest.approx(sa["val_macro_auroc"], abs=1e-6)
    live = pd.read_csv(runs["killed"] / "dvclive/train/plots/metrics/train/loss.tsv", sep="\t")
    assert list(live["step"]) == [1, 2, 3]  # the replayed history is complete


def test_resume_refuses_changed_params(tmp_path):
    path = tmp_path / "models/checkpoints/last.pt"
    make_prepared(tmp_path / "data/prepared", {"train": 8, "val": 4})
    params = tiny_params(tmp_path)
    meta = {"train": params.model_dump() | {"lr": 0.5}}
    save_checkpoint(path, {k: {} for k in ("model", "optimizer", "scheduler", "scaler")} | {
        "rng": [], "epochs_done": 1, "meta": meta})  # fmt: skip
    with pytest.raises(UserError, match=r"train params changed since the checkpoint \(lr\)"):
        train(tiny_params(tmp_path, resume=True), seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    result = train(tiny_params(Path(tmp), epochs=2, batch_size=3, precision="bf16"), seed=21)
    state = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
    torch.save({"state": state, "summary": result.summary}, Path(tmp) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_process_gloo_ddp_keeps_ranks_identical(tmp_path):
    make_prepared(tmp_path / "data/prepared", {"train": 12, "val": 7})
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True
    )
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["state"].keys() == r1["state"].keys()
    for key, value in r0["state"].items():
        torch.testing.assert_close(r1["state"][key], value, rtol=0, atol=0, msg=key)
    summary = json.loads((tmp_path / "metrics/train.json").read_text())
    assert summary["world_size"] == 2 and summary["val_pairs"] == 7
    assert summary["train_pairs"] == 12 and r1["summary"] == {}  # only rank 0 writes
    model, _ = load_model(tmp_path / "models/best.pt")  # saved from rank 0, unwrapped
    assert not any(k.startswith("module.") for k in model.state_dict())


def test_model_params_reach_the_model(tmp_path):
    params = tiny_params(tmp_path, model={"fusion": "max", "frontal_only": True})
    assert params.model == ModelParams(fusion="max", frontal_only=True)


@pytest.mark.parametrize(("native", "want"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cpu_uses_bf16_only_where_native(monkeypatch, native, want):
    import pipelines.train as train_module

    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: native)
    assert train_module.resolve_precision("auto", torch.device("cpu")) == want
    assert train_module.resolve_precision("fp16", torch.device("cpu")) == "fp16"


def test_main_refuses_an_unknown_section(tmp_path, monkeypatch, capsys):
    from pipelines.train import main

    (tmp_path / "params.yaml").write_text("base: {seed: 1}\ntrain: {}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["--section", "train_typo"])
    assert exc.value.code == 2
    assert "params.yaml: no section 'train_typo'" in capsys.readouterr().err


# ------------------------------------------------------------------- online augmentation


def test_online_augment_changes_training_inputs_only_and_keeps_missing_laterals_blank():
    from pipelines.augment import OnlineAugment
    from pipelines.model import build_model
    from pipelines.train import Trainer

    torch.manual_seed(0)
    model = build_model(ModelParams())
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    policy = OnlineAugment(rotation_deg=10.0, noise_std=0.05)
    trainer = Trainer(model, opt, sched, torch.nn.BCEWithLogitsLoss(), torch.device("cpu"))
    trainer.augment = policy.train()
    rng = np.random.default_rng(0)
    batch = {
        "frontal": torch.from_numpy(rng.integers(30, 220, (4, 1, SIZE, SIZE), dtype=np.uint8)),
        "lateral": torch.from_numpy(rng.integers(30, 220, (4, 1, SIZE, SIZE), dtype=np.uint8)),
        "has_lateral": torch.tensor([True, True, False, True]),
        "labels": torch.zeros(4, len(FINDINGS)),
    }
    batch["lateral"][2] = 0  # a missing lateral is stored blank
    plain = trainer.inputs(batch)
    again = trainer.inputs(batch)
    augmented = trainer.inputs(batch, augment=True)
    for a, b in zip(plain, again, strict=True):  # validation path: deterministic, untouched
        assert torch.equal(a, b)
    assert not torch.allclose(augmented[0], plain[0])  # frontal augmented
    assert not torch.allclose(augmented[1][[0, 1, 3]], plain[1][[0, 1, 3]])
    torch.testing.assert_close(augmented[1][2], plain[1][2])  # the missing lateral stays blank
    assert torch.equal(augmented[3], plain[3])


def test_train_with_online_augment(tmp_path):
    make_prepared(tmp_path / "data/prepared", {"train": 8, "val": 6})
    params = tiny_params(tmp_path, precision="fp32", epochs=1, online_augment=True)
    summary = train(params, seed=3).summary
    assert summary["epochs_run"] == 1 and summary["train_pairs"] == 8
    assert (tmp_path / "models/best.pt").is_file()
