"""The report's saliency: regions mapped to prepared images, localisation figures, galleries."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.data import ShardDataset, shard_meta, shard_name, write_index, write_shard
from pipelines.evaluation.saliency import (
    _select,
    _view_scores,
    evidence_by_view,
    galleries,
    localisation,
    prepared_regions,
)
from pipelines.explain import Explainer
from pipelines.labels import FINDINGS
from pipelines.model import FEATURE_DIM, ModelParams, build_model
from pipelines.regions import region_row, write_regions
from pipelines.schema import ROOTS_ATTR

SIZE = 64
MASS = FINDINGS.index("Mass")


def _write_set(root, n=4):
    """Prepared test shards, a studies table with each view's file, and regions for them."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 2, SIZE, SIZE), dtype=np.uint8)
    has_lateral = np.array([True] * (n - 1) + [False])
    labels = np.zeros((n, len(FINDINGS)), np.float32)
    labels[:, MASS] = [1, 1, 0, 1]
    keys = [f"key{i:02d}" for i in range(n)]
    meta = shard_meta(keys, [f"p{i}" for i in range(n)], has_lateral, labels)
    write_index(
        root / "prepared",
        SIZE,
        {"test": [write_shard(root / "prepared", shard_name("test", 0), images, meta)]},
    )
    studies = pd.DataFrame(
        {
            "study_key": keys,
            "source": "synthetic",
            "frontal_path": [f"s{i}/f.dcm" for i in range(n)],
            "lateral_path": [f"s{i}/l.dcm" if has_lateral[i] else "" for i in range(n)],
        }
    )
    studies.attrs[ROOTS_ATTR] = {"synthetic": str(root / "raw" / "dicom")}
    studies.to_parquet(root / "studies.parquet")
    rows = []
    for i in range(n):
        lat = np.zeros((40, 20), dtype=bool)  # a tall image: preprocess pads it to square
        lat[:20, :10] = True  # its top-left quarter
        if has_lateral[i] and labels[i, MASS] == 1:
            rows.append(region_row(f"s{i}/l.dcm", "LATERAL", "Mass", lat))
        pa = np.zeros((16, 16), dtype=bool)
        pa[8:, 8:] = True
        rows.append(region_row(f"s{i}/f.dcm", "PA", "Effusion", pa))
    write_regions(root / "raw" / "regions.csv", rows)
    return keys


def test_regions_map_to_the_prepared_geometry_and_join_on_the_files(tmp_path):
    keys = _write_set(tmp_path)
    regions = prepared_regions(
        tmp_path / "studies.parquet", tmp_path / "raw" / "regions.csv", keys[:3], SIZE
    )
    assert set(regions) == set(keys[:3])  # only the studies asked for
    lat = regions["key00"]["lateral"]["Mass"]
    # 40 x 20 -> 64 x 32 centred in 64 x 64: columns 16..48; the top-left quarter -> 16..32
    assert lat.shape == (SIZE, SIZE)
    assert lat[:30, 17:31].all() and not lat[:, :15].any() and not lat[:, 33:].any()
    assert not lat[34:].any()
    pa = regions["key00"]["frontal"]["Effusion"]
    assert pa[33:, 33:].all() and not pa[:31].any() and not pa[:, :31].any()
    assert "lateral" not in regions["key02"]  # no Mass drawn there


def _tied_to_lateral() -> Explainer:
    """Finding Mass reads only one lateral feature; every other head weight of it is 0."""
    torch.manual_seed(0)
    model = build_model(ModelParams()).eval()
    with torch.no_grad():
        model.head.weight[MASS].zero_()
        model.head.weight[MASS, FEATURE_DIM : 2 * FEATURE_DIM] = 0.01
    return Explainer(model, SIZE, FINDINGS)


def test_localisation_figures_and_the_lateral_share(tmp_path):
    keys = _write_set(tmp_path)
    ds = ShardDataset(tmp_path / "prepared", "test", FINDINGS)
    regions = prepared_regions(
        tmp_path / "studies.parquet", tmp_path / "raw" / "regions.csv", keys, SIZE
    )
    loc = localisation(_tied_to_lateral(), ds, regions, ["Mass", "Effusion", "Nodule"], 5)
    assert loc["measurable"] and "Nodule" not in loc["findings"]  # no region: not measured
    mass = loc["findings"]["Mass"]
    assert mass["studies"] == 2 and "frontal" not in mass  # drawn on the lateral view only
    assert mass["lateral_share"] == 1.0  # its logit reads the lateral trunk alone
    evidence = mass["evidence"]  # 2 showing it; 1 not (key02; key03 has no lateral view)
    assert (evidence["positives"], evidence["negatives"]) == (2, 1)
    assert evidence["frontal"] == 0.0 and evidence["lateral_share"] in (1.0, None)
    lat = mass["lateral"]
    assert lat["n"] == 2 and lat["baseline"] == pytest.approx(32 * 16 / SIZE**2, abs=0.01)
    assert 0 <= lat["mass_inside"] <= 1 and lat["pointing"] in (0.0, 0.5, 1.0)
    eff = loc["findings"]["Effusion"]
    assert eff["studies"] == 4 and eff["frontal"]["baseline"] == pytest.approx(0.25, abs=0.02)
    assert set(loc["mean"]) == {"frontal", "lateral"}
    capped = localisation(_tied_to_lateral(), ds, regions, ["Effusion"], 1)
    assert capped["findings"]["Effusion"]["studies"] == 1
    none = localisation(_tied_to_lateral(), ds, {}, ["Mass"], 5)
    assert none == {"measurable": False, "reason": "no test study shows a finding with a region"}


def test_view_scores_of_known_maps():
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True
    heat = np.zeros((4, 4))
    heat[0, 0], heat[3, 3] = 3.0, 1.0
    s = _view_scores(heat, mask)
    assert s == {
        "mass_inside": 0.75,
        "baseline": 0.25,
        "pointing": 1.0,
        "pointing_baseline": 0.25,
        "no_evidence": 0.0,
    }
    cold = _view_scores(np.zeros((4, 4)), mask)
    assert cold["mass_inside"] == 0.0 and cold["pointing"] == 0.0 and cold["no_evidence"] == 1.0


def test_gallery_selection_and_tiles(tmp_path):
    y = np.array([1, 1, 0, 0, 1, 0], dtype=np.float32)
    p = np.array([0.9, 0.2, 0.8, 0.1, 0.6, 0.7])
    picks = _select(y, p, 0.5, 2)
    assert picks == {"tp": [0, 4], "fp": [2, 5], "fn": [1]}
    keys = _write_set(tmp_path)
    ds = ShardDataset(tmp_path / "prepared", "test", FINDINGS)
    probs = np.tile(np.array([[0.9], [0.2], [0.8], [0.7]]), (1, len(FINDINGS)))
    shown = galleries(_tied_to_lateral(), ds, probs, {"Mass": 0.5}, 3, 32)
    kinds = shown[0]["kinds"]
    assert [t["study"] for t in kinds["tp"]] == ["key00", "key03"]
    assert [t["study"] for t in kinds["fp"]] == ["key02"] and len(kinds["fn"]) == 1
    assert kinds["fn"][0]["study"] == "key01"
    assert all(t["frontal"].startswith("data:image/png;base64,") for t in kinds["tp"])
    assert kinds["tp"][1]["lateral"] is None  # key03 has no lateral view
    assert kinds["tp"][0]["lateral_share"] == "100%"
    assert set(keys) >= {t["study"] for k in kinds.values() for t in k}


class _StubCache:
    """Grad-CAM masses given per study: frontal ``f[i]``, lateral ``l[i]`` on a 1 x 1 grid."""

    def __init__(self, f, lat, present):
        self.f, self.l, self.present = np.asarray(f), np.asarray(lat), np.asarray(present)
        self.explainer = self

    def get(self, rows):
        return SimpleNamespace(rows=rows, present=torch.as_tensor(self.present[rows]))

    def cams(self, sub, finding):
        return self.f[sub.rows][:, None, None], self.l[sub.rows][:, None, None]


def test_evidence_by_view_keeps_what_the_finding_adds():
    # every study has frontal mass 5 (anatomy); showing the finding adds 2 on the lateral
    cache = _StubCache([5, 5, 5, 5, 9], [3, 3, 1, 1, 0], [True, True, True, True, False])
    e = evidence_by_view(cache, "Mass", positives=[0, 1, 4], negatives=[2, 3])
    assert e == {"frontal": 0.0, "lateral": 2.0, "lateral_share": 1.0, "positives": 2,
                 "negatives": 2}  # fmt: skip
    both = evidence_by_view(_StubCache([6, 4], [2, 1], [True, True]), "Mass", [0], [1])
    assert both["lateral_share"] == pytest.approx(1 / 3)
    none = evidence_by_view(_StubCache([4, 6], [1, 2], [True, True]), "Mass", [0], [1])
    assert none["lateral_share"] is None  # the finding adds nothing to either view
    assert evidence_by_view(cache, "Mass", positives=[4], negatives=[2]) is None
