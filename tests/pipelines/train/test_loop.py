"""The train stage: schedule, end-to-end runs, kill + resume, 2-process DDP, online augment."""

from __future__ import annotations

import json
import os
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

from pipelines.checkpoint import Checkpoint, LoopState
from pipelines.data import ShardDataset, shard_meta, shard_name, write_index, write_shard
from pipelines.errors import UserError
from pipelines.io import without_run_facts
from pipelines.labels import FINDINGS
from pipelines.model import ModelParams, load_model, to_model_input
from pipelines.train import TrainParams, build_scheduler, train
from pipelines.train.trainer import val_auroc

REPO = Path(__file__).resolve().parents[3]
SIZE = 64  # the train stage's minimum input size


def make_prepared(
    root: Path, counts: dict[str, int], size: int = SIZE, seed: int = 0, blank: tuple[int, ...] = ()
) -> Path:
    """Tiny prepared shards: findings 0 and 1 brighten a frontal / lateral corner; some NaN;
    the findings of ``blank`` are never annotated (as CheXpert leaves 7 of the 14)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in counts.items():
        labels = (rng.random((n, len(FINDINGS))) < 0.4).astype(np.float32)
        labels[:, 0] = np.arange(n) % 2  # both classes present for finding 0 and 1
        labels[:, 1] = (np.arange(n) // 2) % 2
        labels[rng.random((n, len(FINDINGS))) < 0.1] = np.nan
        labels[:, :2] = np.nan_to_num(labels[:, :2])
        labels[:, list(blank)] = np.nan
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
        "min_positives": 3,  # toy splits of 12 studies
        "min_negatives": 3,
        "model": {"dropout": 0.1, "view_dropout": 0.2},
    }
    return TrainParams.model_validate(values | overrides)


# ---------------------------------------------------------------------------------- units


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


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no shard index"):
        train(tiny_params(tmp_path), seed=0)
    make_prepared(tmp_path / "data/prepared", {"train": 8})
    with pytest.raises(UserError, match="no studies in the val split"):
        train(tiny_params(tmp_path), seed=0)
    make_prepared(tmp_path / "data/prepared", {"train": 8, "val": 4})
    with pytest.raises(UserError, match="no finding has 20 labelled positive and 3 negative"):
        train(tiny_params(tmp_path, min_positives=20), seed=0)


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
    # the DVC metric is the run's summary less its timings (the same commit and data give
    # the same file on every machine)
    assert summary == without_run_facts(json.loads(json.dumps(result.summary)))
    assert "seconds" in result.summary and "seconds" not in summary
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
    macro, _ = val_auroc(batch["labels"].numpy(), logits.numpy(), FINDINGS, meta["untrained"])
    assert summary["val_macro_auroc"] == pytest.approx(macro, abs=1e-6)

    ckpt = Checkpoint.load(tmp_path / "models/checkpoints/last.pt")
    assert ckpt.loop.epochs_done == 2 and len(ckpt.loop.history) == 2
    live = json.loads((tmp_path / "dvclive/train/metrics.json").read_text())
    assert live["step"] == 2
    tsv = pd.read_csv(tmp_path / "dvclive/train/plots/metrics/val/macro_auroc.tsv", sep="\t")
    logged = [h["val/macro_auroc"] for h in ckpt.loop.history]
    np.testing.assert_allclose(tsv["macro_auroc"], logged)
    assert list((tmp_path / "runs/train").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_label_coverage_and_untrained_findings_reach_the_checkpoint(tmp_path):
    """A head of three findings, one never annotated: the meta and metrics say which learned."""
    edema = FINDINGS.index("Edema")
    make_prepared(tmp_path / "data/prepared", {"train": 12, "val": 8}, blank=(edema,))
    chosen = ["Edema", "Cardiomegaly", "Atelectasis"]  # any order: the head keeps FINDINGS'
    params = tiny_params(tmp_path, epochs=1, findings=chosen, min_positives=3, min_negatives=3)
    train(params, seed=3)
    model, meta = load_model(tmp_path / "models/best.pt")
    assert meta["findings"] == ["Atelectasis", "Cardiomegaly", "Edema"]
    assert model.head.out_features == 3
    train_cov = meta["label_coverage"]["train"]
    assert train_cov["Atelectasis"] == {"positives": 6, "negatives": 6, "unannotated": 0}
    assert train_cov["Edema"] == {"positives": 0, "negatives": 0, "unannotated": 12}
    assert meta["label_coverage"]["val"]["Edema"]["unannotated"] == 8
    assert set(meta["untrained"]) == {"Edema"}
    assert meta["untrained"]["Edema"].startswith("too few labelled training studies (0 positive")
    summary = json.loads((tmp_path / "metrics/train.json").read_text())
    assert summary["findings"] == meta["findings"] and summary["not_trained"] == meta["untrained"]
    assert set(summary["val_auroc"]) == set(meta["findings"])
    assert summary["val_auroc"]["Edema"] is None  # never annotated: not estimable
    scored = [summary["val_auroc"][f] for f in ("Atelectasis", "Cardiomegaly")]
    assert summary["val_macro_auroc"] == pytest.approx(np.mean(scored), abs=1e-6)
    with pytest.raises(ValueError, match="must be distinct names"):
        TrainParams(findings=["Edema", "Pneumonitis"])


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
    assert Checkpoint.load(last).loop.epochs_done < 3  # it really died mid-run

    _write_stage(runs["killed"], tiny_params(runs["killed"], epochs=3, precision="fp32"), True)
    resumed = _run_stage(runs["killed"])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out.decode()
    assert b"resuming from" in out

    a = Checkpoint.load(runs["straight"] / "models/checkpoints/last.pt")
    b = Checkpoint.load(last)
    assert a.loop.epochs_done == b.loop.epochs_done == 3
    for key, value in a.model.items():
        torch.testing.assert_close(b.model[key], value, rtol=0, atol=0, msg=key)
    for ha, hb in zip(a.loop.history, b.loop.history, strict=True):
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
    empty: dict = {}
    Checkpoint(empty, empty, empty, empty, rng=[], meta=meta, loop=LoopState(epochs_done=1)).save(
        path
    )
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


def test_main_refuses_an_unknown_section(tmp_path, monkeypatch, capsys):
    from pipelines.train import main

    (tmp_path / "params.yaml").write_text("base: {seed: 1}\ntrain: {}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["--section", "train_typo"])
    assert exc.value.code == 2
    assert "params.yaml: no section 'train_typo'" in capsys.readouterr().err


# ------------------------------------------------------------------- online augmentation


def test_train_with_online_augment(tmp_path):
    make_prepared(tmp_path / "data/prepared", {"train": 8, "val": 6})
    params = tiny_params(tmp_path, precision="fp32", epochs=1, online_augment=True)
    summary = train(params, seed=3).summary
    assert summary["epochs_run"] == 1 and summary["train_pairs"] == 8
    assert (tmp_path / "models/best.pt").is_file()
    # the draws come from a seeded generator whose state the resume checkpoint keeps
    assert "augment" in Checkpoint.load(tmp_path / "models/checkpoints/last.pt").rng[0]
    first, _ = load_model(tmp_path / "models/best.pt")
    train(params, seed=3)
    again, _ = load_model(tmp_path / "models/best.pt")
    for key, value in first.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0, msg=key)
