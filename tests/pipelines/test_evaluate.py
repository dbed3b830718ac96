"""evaluate stage: a tiny checkpoint scores tiny shards in both modes; outputs and their numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.augment import AugmentParams
from pipelines.data import ShardDataset, shard_meta, shard_name, write_index, write_shard
from pipelines.errors import CheckpointError, UserError
from pipelines.evaluate import (
    EvaluateParams,
    evaluate,
    predictions_frame,
    score_dataset,
)
from pipelines.evaluation.metrics import auroc_per_finding
from pipelines.evaluation.outputs import render_report
from pipelines.evaluation.table import FRONTAL_ONLY_METHOD
from pipelines.labels import FINDINGS
from pipelines.model import ModelParams, build_model, to_model_input
from pipelines.tta import augment_views, draws_to_json, tta_draws

SIZE = 32  # eval-mode batch norm uses running statistics: 32 px is enough


def _write_prepared(root, counts={"train": 4, "val": 14, "test": 18}, seed=0):  # noqa: B006
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in counts.items():
        images = rng.integers(0, 256, (n, 2, SIZE, SIZE), dtype=np.uint8)
        has_lateral = np.arange(n) % 3 != 0
        images[~has_lateral, 1] = 0
        labels = (rng.random((n, len(FINDINGS))) < 0.4).astype(np.float32)
        labels[rng.random(labels.shape) < 0.1] = np.nan
        studies = [f"{split}-s{i:03d}" for i in range(n)]
        patients = [f"{split}-p{i // 2:03d}" for i in range(n)]
        meta = shard_meta(studies, patients, has_lateral, labels)
        splits[split] = [write_shard(root, shard_name(split, 0), images, meta)]
    write_index(root, SIZE, splits)


def _write_checkpoint(path, **model_kw):
    torch.manual_seed(0)
    params = ModelParams(**model_kw)
    model = build_model(params)
    meta = {
        "model_params": params.model_dump(),
        "findings": list(FINDINGS),
        "size": SIZE,
        "epoch": 3,
        "val_macro_auroc": 0.61,
        "params": {},
    }
    torch.save({"model": model.state_dict(), "meta": meta}, path)
    return model.eval()


class TinyDual(torch.nn.Module):
    """Stand-in with the model contract: ``(frontal, lateral, has_lateral) -> logits (B, F)``.

    Like the concat fusion, an absent lateral view contributes nothing.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.front = torch.nn.Linear(2, len(FINDINGS))
        self.lat = torch.nn.Linear(2, len(FINDINGS))

    def view_features(self, frontal, lateral):
        def feats(x):
            return torch.stack([x.mean((1, 2, 3)), x[..., : SIZE // 2, :].std((1, 2, 3))], 1)

        return feats(frontal), feats(lateral)

    def fuse(self, f, lat, present):
        return self.front(f) + self.lat(lat) * present.float()[:, None]

    def forward(self, frontal, lateral, has_lateral):
        return self.fuse(*self.view_features(frontal, lateral), has_lateral)


def _params(tmp, **kw):
    return EvaluateParams(
        **{
            "checkpoint": str(tmp / "best.pt"),
            "prepared": str(tmp / "prepared"),
            "batch_size": 5,
            "bootstrap_resamples": 60,
            "seed": 3,
            "device": "cpu",
            "out": str(tmp / "outputs"),
            "metrics": str(tmp / "metrics" / "evaluate.json"),
            "findings_metrics": str(tmp / "metrics" / "evaluate_findings.json"),
            "plots": str(tmp / "plots"),
            "saliency": False,  # stand-in models are no DenseNet; the slow tests turn it on
            "localisation_metrics": str(tmp / "metrics" / "evaluate_localisation.json"),
            "subgroups_metrics": str(tmp / "metrics" / "evaluate_subgroups.json"),
            "ood_gate": str(tmp / "outputs" / "ood_gate.npz"),
            "ood_metrics": str(tmp / "metrics" / "evaluate_ood.json"),
            "studies": str(tmp / "studies.parquet"),
            "regions": str(tmp / "regions.csv"),
        }
        | kw
    )


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    """The stage on tiny shards with a stand-in model (``load_model`` patched)."""
    tmp = tmp_path_factory.mktemp("evaluate")
    _write_prepared(tmp / "prepared")
    model = TinyDual().eval()
    meta = {"findings": list(FINDINGS), "size": SIZE, "epoch": 3, "model_params": {}}
    params = _params(tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("pipelines.evaluate.load_model", lambda path, map_location: (model, meta))
        metrics = evaluate(params, versions={"code": {"sources_sha256": "0" * 16}})
    return tmp, params, model, metrics


def test_predictions_have_both_modes_for_val_and_test(stage_run):
    tmp, params, _model, _ = stage_run
    pred = pd.read_parquet(tmp / "outputs" / "predictions.parquet")
    assert len(pred) == 2 * (14 + 18)
    assert set(pred["split"]) == {"val", "test"}  # train is never scored
    assert pred.groupby(["split", "mode"]).size().to_dict() == {
        ("test", "dual"): 18,
        ("test", "frontal_only"): 18,
        ("val", "dual"): 14,
        ("val", "frontal_only"): 14,
    }
    expected = ["split", "study_key", "patient_key", "has_lateral", "mode"]
    expected += [f"y_{f}" for f in FINDINGS] + [f"p_{f}" for f in FINDINGS]
    assert list(pred.columns) == expected
    assert pred.attrs["model"]["epoch"] == 3
    assert pred.attrs["frontal_only"] == FRONTAL_ONLY_METHOD
    # labels are the shards' labels (NaN kept)
    ds = ShardDataset(params.prepared, "test")
    dual = pred[(pred["split"] == "test") & (pred["mode"] == "dual")]
    np.testing.assert_array_equal(dual[[f"y_{f}" for f in FINDINGS]].to_numpy(), ds.labels)
    assert list(dual["study_key"]) == list(ds.meta["study_key"])


def _stage_and_direct_scores(
    outputs: Path, prepared: str, model: torch.nn.Module
) -> tuple[np.ndarray, ...]:
    """Test-split probabilities from the stage (dual, frontal-only) and from calling the model
    directly (with the lateral, and with it masked as the stage does), plus ``has_lateral``."""
    pred = pd.read_parquet(outputs / "predictions.parquet")
    test = pred[pred["split"] == "test"]
    pcols = [f"p_{f}" for f in FINDINGS]
    dual = test[test["mode"] == "dual"][pcols].to_numpy()
    front = test[test["mode"] == "frontal_only"][pcols].to_numpy()
    ds = ShardDataset(prepared, "test")
    x_f = to_model_input(torch.from_numpy(_images(ds, 0)), SIZE)
    x_l = to_model_input(torch.from_numpy(_images(ds, 1)), SIZE)
    blank = to_model_input(torch.zeros_like(torch.from_numpy(_images(ds, 1))), SIZE)
    with torch.no_grad():
        want_dual = torch.sigmoid(model(x_f, x_l, torch.from_numpy(ds.has_lateral))).numpy()
        off = torch.zeros(len(ds), dtype=torch.bool)
        want_front = torch.sigmoid(model(x_f, blank, off)).numpy()
    return dual, front, want_dual, want_front, ds.has_lateral


def test_scores_equal_a_direct_model_call_and_masking_only_changes_lateral_studies(stage_run):
    tmp, params, model, _ = stage_run
    dual, front, want_dual, want_front, lateral = _stage_and_direct_scores(
        tmp / "outputs", params.prepared, model
    )
    np.testing.assert_allclose(dual, want_dual, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(front, want_front, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(dual[~lateral], front[~lateral])
    assert np.abs(dual[lateral] - front[lateral]).max() > 1e-4


def test_metrics_json_values_and_files(stage_run):
    tmp, _params, _, metrics = stage_run
    headline = json.loads((tmp / "metrics" / "evaluate.json").read_text())
    details = json.loads((tmp / "metrics" / "evaluate_findings.json").read_text())
    on_disk = {**headline, **details}
    full = json.loads(json.dumps(metrics))
    assert {k: v for k, v in on_disk.items() if k not in ("auroc", "lateral_delta")} == full
    assert on_disk["test_studies"] == 18 and on_disk["test_patients"] == 9
    assert on_disk["bootstrap"] == {"unit": "patient", "resamples": 60, "ci_level": 0.95, "seed": 3}
    for name, row in full["findings"].items():
        assert headline["auroc"][name] == row.get("auroc", "not estimable")
    pred = pd.read_parquet(tmp / "outputs" / "predictions.parquet")
    test = pred[(pred["split"] == "test") & (pred["mode"] == "dual")]
    auc = auroc_per_finding(
        test[[f"y_{f}" for f in FINDINGS]].to_numpy(), test[[f"p_{f}" for f in FINDINGS]].to_numpy()
    )
    for f, name in enumerate(FINDINGS):
        row = on_disk["findings"][name]
        if np.isnan(auc[f]):
            assert row["status"] == "not estimable" and "auroc" not in row
        else:
            assert row["auroc"] == pytest.approx(auc[f], abs=1e-6)
    assert on_disk["macro_auroc"] == pytest.approx(np.nanmean(auc), abs=1e-6)
    assert on_disk["lateral_gain"]["studies"] == 12  # the test studies with a lateral view
    thresholds = json.loads((tmp / "outputs" / "thresholds.json").read_text())
    assert thresholds["chosen_on"] == "val"
    assert set(thresholds["youden"]) == set(FINDINGS)
    assert set(thresholds["sensitivity_target"]) == set(FINDINGS)
    assert set(thresholds["frontal_only"]) == {"youden", "sensitivity_target"}
    for name in ("report.html", "report.md"):
        assert (tmp / "outputs" / name).stat().st_size > 0
    roc = pd.read_csv(tmp / "plots" / "roc" / "Atelectasis.csv")
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert roc["fpr"].iloc[0] == 0 and roc["tpr"].iloc[-1] == 1
    assert (tmp / "plots" / "pr" / "Atelectasis.csv").is_file()
    assert (tmp / "plots" / "calibration" / "Atelectasis.csv").is_file()


def test_report_rerendered_from_saved_predictions_matches_the_stage(stage_run, tmp_path):
    tmp, _params, _, metrics = stage_run
    out = render_report(
        tmp / "outputs" / "predictions.parquet",
        tmp_path,
        {"bootstrap_resamples": 60, "seed": 3},
    )
    assert out["metrics"] == json.loads(json.dumps(metrics))
    html = (tmp_path / "report.html").read_text()
    assert "epoch" in html  # model summary carried in the predictions' attrs


def test_test_time_augmentation_scores_are_the_mean_and_the_report_says_if_it_helps(
    stage_run, tmp_path
):
    plain_dir, _params0, model, _ = stage_run
    augment = AugmentParams(noise_std=0.0, rotation_deg=8.0)
    draws = tta_draws(augment, 11, 2)
    params = _params(tmp_path, tta_views=2)
    (tmp_path / "prepared").symlink_to(plain_dir / "prepared")
    meta = {"findings": list(FINDINGS), "size": SIZE, "epoch": 3, "model_params": {}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("pipelines.evaluate.load_model", lambda path, map_location: (model, meta))
        metrics = evaluate(params, versions={}, augment=augment, seed=11)
    pred = pd.read_parquet(tmp_path / "outputs" / "predictions.parquet")
    plain = pd.read_parquet(plain_dir / "outputs" / "predictions.parquet")
    p_cols = [f"p_{f}" for f in FINDINGS]
    s_cols = [f"s_{f}" for f in FINDINGS]
    # the single pass is exactly the plain evaluation; the TTA mean is not
    np.testing.assert_allclose(pred[s_cols].to_numpy(), plain[p_cols].to_numpy(), rtol=1e-6)
    assert np.abs(pred[p_cols].to_numpy() - plain[p_cols].to_numpy()).max() > 1e-4
    # the mean over the study as it is and both draws, by hand
    ds = ShardDataset(params.prepared, "test", list(FINDINGS))
    f = torch.stack([ds[i]["frontal"] for i in range(len(ds))])
    lat = torch.stack([ds[i]["lateral"] for i in range(len(ds))])
    has = torch.as_tensor(ds.has_lateral)
    passes = [(f, lat)] + [
        (augment_views(f, d["frontal"]), augment_views(lat, d["lateral"])) for d in draws
    ]
    with torch.no_grad():
        want = np.mean(
            [
                torch.sigmoid(model(to_model_input(a, SIZE), to_model_input(b, SIZE), has)).numpy()
                for a, b in passes
            ],
            0,
        )
    test = pred[(pred["split"] == "test") & (pred["mode"] == "dual")]
    np.testing.assert_allclose(test[p_cols].to_numpy(), want, rtol=1e-5, atol=1e-6)
    # metrics, thresholds (what the card and cxr predict apply) and the report
    assert metrics["tta"]["views"] == 2 and "macro_delta" in metrics["tta"]
    n = sum(metrics["tta"][f"n_{v}"] for v in ("helps", "hurts", "neutral"))
    assert n == len(FINDINGS)
    headline = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert set(headline["tta_delta"]) == set(FINDINGS)
    thresholds = json.loads((tmp_path / "outputs" / "thresholds.json").read_text())
    assert thresholds["tta"] == {"views": 2, "draws": draws_to_json(draws)}
    assert "Test-time augmentation" in (tmp_path / "outputs" / "report.html").read_text()
    assert "Test-time augmentation (2 views)" in (tmp_path / "outputs" / "report.md").read_text()
    again = render_report(tmp_path / "outputs" / "predictions.parquet", tmp_path / "again",
                          {"bootstrap_resamples": 60, "seed": 3})  # fmt: skip
    assert again["metrics"]["tta"] == json.loads(json.dumps(metrics["tta"]))
    assert json.loads((tmp_path / "again" / "thresholds.json").read_text())["tta"]["views"] == 2
    assert "tta" not in json.loads((plain_dir / "outputs" / "thresholds.json").read_text())


@pytest.mark.slow
def test_real_checkpoint_end_to_end(tmp_path):
    """A real DenseNet checkpoint through ``load_model``: probabilities equal a direct call."""
    _write_prepared(tmp_path / "prepared", {"val": 4, "test": 6})
    model = _write_checkpoint(tmp_path / "best.pt")
    params = _params(tmp_path, bootstrap_resamples=20, saliency=True, gallery_studies=2)
    evaluate(params, versions={})
    # saliency on real data: no regions, so no localisation, but the galleries are there
    loc = json.loads((tmp_path / "metrics" / "evaluate_localisation.json").read_text())
    assert loc["measurable"] is False and "no finding regions" in loc["reason"]
    html = (tmp_path / "outputs" / "report.html").read_text()
    assert "Not measurable: no finding regions" in html
    assert html.count('alt="frontal and overlay"') >= 2 and "salted study keys only" in html
    dual, front, want_dual, want_front, lateral = _stage_and_direct_scores(
        tmp_path / "outputs", params.prepared, model
    )
    np.testing.assert_allclose(dual, want_dual, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(front, want_front, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dual[~lateral], front[~lateral], rtol=1e-5, atol=1e-6)
    assert np.abs(dual[lateral] - front[lateral]).max() > 1e-5


def _images(ds, view):
    return np.stack([ds[i]["frontal" if view == 0 else "lateral"].numpy() for i in range(len(ds))])


@pytest.mark.slow
def test_frontal_only_model_is_scored_once(tmp_path):
    _write_prepared(tmp_path / "prepared", {"val": 4, "test": 6})
    _write_checkpoint(tmp_path / "best.pt", frontal_only=True)
    metrics = evaluate(_params(tmp_path, bootstrap_resamples=20), versions={})
    pred = pd.read_parquet(tmp_path / "outputs" / "predictions.parquet")
    assert set(pred["mode"]) == {"dual"}
    assert "lateral_gain" not in metrics and "frontal_only" not in metrics
    assert "no lateral branch" in (tmp_path / "outputs" / "report.html").read_text()


def test_errors_name_the_input(tmp_path):
    checkpoint = str(tmp_path / "best.pt")
    params = EvaluateParams(checkpoint=checkpoint, prepared=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nope"):
        evaluate(params, versions={})
    prepared = tmp_path / "prepared"
    _write_prepared(prepared, {"val": 3})
    params = EvaluateParams(checkpoint=checkpoint, prepared=str(prepared))
    with pytest.raises(UserError, match="no studies in the test split"):
        evaluate(params, versions={})
    _write_prepared(prepared, {"val": 3, "test": 3})
    params = EvaluateParams(checkpoint=checkpoint, prepared=str(prepared))
    with pytest.raises(CheckpointError, match="best.pt"):
        evaluate(params, versions={})


def test_score_dataset_without_masking(stage_run):
    model = stage_run[2]

    class Tiny(torch.utils.data.Dataset):
        findings = FINDINGS

        def __len__(self):
            return 3

        def __getitem__(self, i):
            x = torch.full((1, SIZE, SIZE), 40 * i, dtype=torch.uint8)
            return {"frontal": x, "lateral": x, "has_lateral": torch.tensor(True)}

    scores = score_dataset(model, Tiny(), SIZE, batch_size=2, frontal_only=False)
    dual = scores.dual
    assert dual.shape == (3, len(FINDINGS)) and scores.masked is None
    assert scores.frontal.shape == scores.lateral.shape == (3, 2)
    assert ((dual > 0) & (dual < 1)).all()


def test_predictions_frame_layout(tmp_path):
    _write_prepared(tmp_path, {"test": 4})
    ds = ShardDataset(tmp_path, "test")
    p = np.full((4, len(FINDINGS)), 0.25, np.float32)
    df = predictions_frame(ds, "test", p, p + 0.5)
    assert len(df) == 8 and list(df["mode"]) == ["dual"] * 4 + ["frontal_only"] * 4
    assert df.loc[df["mode"] == "frontal_only", "p_Hernia"].eq(0.75).all()
