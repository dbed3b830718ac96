"""The report's saliency: galleries of test studies and, on the synthetic set, localisation.

Both use :class:`pipelines.explain.Explainer` (Grad-CAM per view of the checkpoint) on the
prepared test arrays, through one trunk pass per study (:meth:`~pipelines.explain.Explainer.
blocks`) shared by every finding.

**Galleries** (:func:`galleries`): per trained finding, up to ``gallery_studies`` test studies
of each kind at the validation-chosen Youden threshold (0.5 without one): the true positives
with the highest scores, the most confident false positives (highest scores of negatives) and
false negatives (lowest scores of positives). Each shows both views, each beside its overlay
(:func:`pipelines.explain.overlay`), as PNG data URIs. Studies are named by their salted keys.

**Localisation** (:func:`localisation`): where the synthesize stage recorded each finding's
region (``regions.csv``, :mod:`pipelines.regions`), the regions are mapped to the prepared
images (:func:`prepared_regions`), and for up to ``localisation_studies`` test studies per
finding whose pixels show it (the truth, not the noisy labels; the first in test order):

- **mass inside**: the share of the view's heatmap mass (at the prepared resolution) that lies
  inside the region, against the **random-map baseline**: the region's area share (the mass
  inside of a uniform map, and the mean of a random one);
- **pointing game**: whether the heatmap's maximum falls inside the region's bounding box,
  against the box's area share (a random point);
- **lateral share**: the mean share of the evidence on the lateral view, over the studies with
  one (:func:`pipelines.explain.evidence_share`): a finding drawn only on the lateral view
  should be explained by it (share above 0.5);
- **evidence by view** (:func:`evidence_by_view`): the mean Grad-CAM mass of each view on
  studies showing the finding minus on as many studies not showing it, and the lateral view's
  share of that gain: what the finding adds to each view's evidence, beyond what every study
  shows there.

A view whose heatmap has no positive mass counts as 0 inside and a miss ("no evidence").
"""

from __future__ import annotations

import base64
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from pipelines.config import StageParams
from pipelines.data import ShardDataset
from pipelines.explain import Blocks, Explainer, overlay, png_bytes, scaled_heatmaps, upsample
from pipelines.imaging import to_square
from pipelines.regions import decode_mask, read_regions
from pipelines.schema import ImageRoots

log = logging.getLogger(__name__)

VIEWS: tuple[str, ...] = ("frontal", "lateral")
KINDS: tuple[tuple[str, str], ...] = (
    ("tp", "true positives, highest scores"),
    ("fp", "false positives, most confident"),
    ("fn", "false negatives, most confident"),
)
#: study key -> view -> finding -> boolean (S, S) mask at the prepared size.
Regions = dict[str, dict[str, dict[str, np.ndarray]]]


class SaliencyParams(StageParams):
    """The saliency keys of the ``evaluate`` section.

    Attributes:
        saliency: compute the galleries and the localisation (false: the report says so).
        studies: the pair stage's studies table (each view's file, for the regions' join).
        regions: the synthesize stage's ``regions.csv``; missing (real data): localisation is
            reported as not measurable, the galleries are still shown.
        localisation_studies: test studies per finding (those that show it) at most.
        gallery_studies: studies per gallery kind (true / false positives, false negatives).
        gallery_px: side in pixels of each image of a gallery.
        localisation_metrics: the DVC metrics JSON of the localisation.
    """

    saliency: bool = True
    studies: str = "data/studies/studies.parquet"
    regions: str = "data/raw/synthetic/regions.csv"
    localisation_studies: int = Field(20, ge=1)
    gallery_studies: int = Field(3, ge=0)
    gallery_px: int = Field(96, ge=16)
    localisation_metrics: str = "metrics/evaluate_localisation.json"


def prepared_regions(
    studies_path: str | Path, regions_path: str | Path, study_keys: Sequence[str], size: int
) -> Regions:
    """The recorded finding regions of some studies, on their prepared (size x size) images.

    Each view's file (the studies table's ``frontal_path`` / ``lateral_path`` under its
    source's image root) is matched to the regions file's ``file`` (under the ``dicom/`` folder
    beside it) by its resolved path; a mask goes through :func:`pipelines.imaging.to_square`,
    the geometry preprocess gives its image (aspect kept, padded, resized).

    Raises:
        FileNotFoundError: no studies table or no regions file.
    """
    studies = pd.read_parquet(studies_path)
    regions = read_regions(regions_path)
    roots = ImageRoots.from_attrs(studies.attrs)
    base = Path(regions_path).parent / "dicom"
    by_file: dict[str, list[tuple[str, str, int, int]]] = {}
    for r in regions.itertuples(index=False):
        if r.area > 0:
            key = os.path.realpath(base / r.file)
            by_file.setdefault(key, []).append((r.finding, r.rle, r.rows, r.cols))
    wanted = set(study_keys)
    out: Regions = {}
    for row in studies[studies["study_key"].astype(str).isin(wanted)].itertuples(index=False):
        views: dict[str, dict[str, np.ndarray]] = {}
        for view in VIEWS:
            rel = str(getattr(row, f"{view}_path") or "")
            path = os.path.realpath(roots.resolve(str(row.source), rel)) if rel else ""
            masks = {
                finding: to_square(decode_mask(rle, h, w).astype(np.float32), size) >= 128
                for finding, rle, h, w in by_file.get(path, [])
            }
            if masks:
                views[view] = masks
        if views:
            out[str(row.study_key)] = views
    return out


class BlockCache:
    """Each study's last-block outputs, computed once (in batches) and shared by every finding,
    the localisation and the galleries alike."""

    def __init__(self, explainer: Explainer, dataset: ShardDataset, batch: int = 32):
        self.explainer, self.dataset, self.batch = explainer, dataset, max(1, batch)
        self._rows: dict[int, Blocks] = {}

    def get(self, rows: Sequence[int]) -> Blocks:
        """The blocks of these studies (rows of the dataset), in this order."""
        missing = [int(r) for r in dict.fromkeys(rows) if int(r) not in self._rows]
        for start in range(0, len(missing), self.batch):
            chunk = missing[start : start + self.batch]
            b = self.dataset.get_batch(chunk)
            blocks = self.explainer.blocks(b["frontal"], b["lateral"], b["has_lateral"])
            self._rows.update({r: blocks.take([j]) for j, r in enumerate(chunk)})
        return Blocks.concat([self._rows[int(r)] for r in rows])


def _view_scores(heat: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mass inside the region, the pointing game and their baselines for one view."""
    ys, xs = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    mass = float(heat.sum())
    inside = float(heat[mask].sum()) / mass if mass > 0 else 0.0
    hit = bool(box.flat[int(np.argmax(heat))]) if mass > 0 else False
    return {
        "mass_inside": inside,
        "baseline": float(mask.mean()),
        "pointing": float(hit),
        "pointing_baseline": float(box.mean()),
        "no_evidence": float(mass <= 0),
    }


def _finding_localisation(
    cache: BlockCache, finding: str, rows: list[int], masks: list[dict]
) -> dict[str, Any]:
    """Localisation of one finding on its studies (``rows`` of the dataset)."""
    sub = cache.get(rows)
    cf, cl = cache.explainer.cams(sub, finding)
    per_view: dict[str, list[dict[str, float]]] = {v: [] for v in VIEWS}
    shares = []
    present = sub.present.cpu().numpy()
    for j, views in enumerate(masks):
        maps = {"frontal": cf[j], "lateral": cl[j] if cl is not None and present[j] else None}
        if maps["lateral"] is not None:
            mf, ml = float(cf[j].sum()), float(maps["lateral"].sum())
            if mf + ml > 0:
                shares.append(ml / (mf + ml))
        for view, mask in views.items():
            if maps.get(view) is not None:
                heat = np.maximum(upsample(maps[view], mask.shape), 0)
                per_view[view].append(_view_scores(heat, mask))
    result: dict[str, Any] = {
        "studies": len(rows),
        "lateral_share": float(np.mean(shares)) if shares else None,
    }
    for view, scores in per_view.items():
        if scores:
            mean = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
            result[view] = {"n": len(scores), **mean}
    return result


def _view_masses(cache: BlockCache, finding: str, rows: list[int]) -> np.ndarray:
    """Per study with a lateral view of ``rows``: (frontal, lateral) Grad-CAM mass, (n, 2)."""
    if not rows:
        return np.zeros((0, 2))
    sub = cache.get(rows)
    cf, cl = cache.explainer.cams(sub, finding)
    if cl is None:
        return np.zeros((0, 2))
    present = sub.present.cpu().numpy().astype(bool)
    return np.stack([cf[present].sum(axis=(1, 2)), cl[present].sum(axis=(1, 2))], axis=1)


def evidence_by_view(
    cache: BlockCache, finding: str, positives: list[int], negatives: list[int]
) -> dict[str, float] | None:
    """Which view carries the finding's evidence: the mean Grad-CAM mass of each view on
    studies showing the finding minus that on studies not showing it (both with a lateral), and
    the lateral view's share of the positive part of that gain. A view's mass also holds what
    any study shows (anatomy, devices); the difference keeps what the finding adds. None: no
    lateral branch, or no study on one side."""
    pos, neg = _view_masses(cache, finding, positives), _view_masses(cache, finding, negatives)
    if len(pos) == 0 or len(neg) == 0:
        return None
    gain_f, gain_l = (pos.mean(axis=0) - neg.mean(axis=0)).tolist()
    up_f, up_l = max(gain_f, 0.0), max(gain_l, 0.0)
    share = up_l / (up_f + up_l) if up_f + up_l > 0 else None
    return {"frontal": gain_f, "lateral": gain_l, "lateral_share": share,
            "positives": len(pos), "negatives": len(neg)}  # fmt: skip


def localisation(
    explainer: Explainer,
    dataset: ShardDataset,
    regions: Regions,
    findings: Sequence[str],
    max_studies: int,
    cache: BlockCache | None = None,
) -> dict[str, Any]:
    """Localisation figures per finding and view (see the module docstring).

    Args:
        explainer: of the checkpoint.
        dataset: the prepared test studies.
        regions: from :func:`prepared_regions`.
        findings: those to measure (the trained ones).
        max_studies: studies per finding at most.
        cache: the studies' block outputs (None: computed here).

    Returns:
        The metrics: ``measurable``, ``studies_per_finding``, ``findings`` (per finding:
        ``studies``, ``lateral_share``, ``evidence`` (:func:`evidence_by_view`), per view drawn
        on: ``n``, ``mass_inside``, ``baseline``, ``pointing``, ``pointing_baseline``,
        ``no_evidence``) and ``mean`` (per view, the means
        over findings of ``mass_inside`` and ``baseline``).
    """
    keys = dataset.meta["study_key"].astype(str).tolist()
    chosen: dict[str, list[int]] = {}
    for f in findings:
        rows = [i for i, k in enumerate(keys) if any(f in v for v in regions.get(k, {}).values())]
        if rows:
            chosen[f] = rows[:max_studies]
    if not chosen:
        return {"measurable": False, "reason": "no test study shows a finding with a region"}
    cache = cache or BlockCache(explainer, dataset)
    out: dict[str, Any] = {}
    for f, rows in chosen.items():
        masks = [{v: m[f] for v, m in regions[keys[i]].items() if f in m} for i in rows]
        out[f] = _finding_localisation(cache, f, rows, masks)
        shows = {i for i, k in enumerate(keys) if any(f in v for v in regions.get(k, {}).values())}
        negatives = [i for i in range(len(keys)) if i not in shows][:max_studies]
        out[f]["evidence"] = evidence_by_view(cache, f, rows, negatives)
    mean = {}
    for view in VIEWS:
        vals = [r[view] for r in out.values() if view in r]
        if vals:
            keys = ("mass_inside", "baseline")
            mean[view] = {k: float(np.mean([v[k] for v in vals])) for k in keys}
    return {"measurable": True, "studies_per_finding": max_studies, "findings": out, "mean": mean}


def _select(y: np.ndarray, p: np.ndarray, threshold: float, k: int) -> dict[str, list[int]]:
    """Row indices of each gallery kind (ties broken by row order)."""
    order_hi = np.argsort(-p, kind="stable")
    order_lo = np.argsort(p, kind="stable")
    pos, neg, called = y == 1, y == 0, p >= threshold
    return {
        "tp": [int(i) for i in order_hi if pos[i] and called[i]][:k],
        "fp": [int(i) for i in order_hi if neg[i] and called[i]][:k],
        "fn": [int(i) for i in order_lo if pos[i] and not called[i]][:k],
    }


def _uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def _tile(
    images: dict[str, np.ndarray], maps: dict[str, np.ndarray | None], px: int
) -> dict[str, str | None]:
    """Per view, the image beside its overlay (one PNG), or None without the view."""
    hf, hl = scaled_heatmaps(
        maps["frontal"], maps["lateral"], images["frontal"].shape, images["lateral"].shape
    )
    out: dict[str, str | None] = {}
    for view, heat in (("frontal", hf), ("lateral", hl)):
        if heat is None:
            out[view] = None
            continue
        plain = overlay(images[view], np.zeros_like(heat), px)  # the grey image, as RGB
        out[view] = _uri(np.concatenate([plain, overlay(images[view], heat, px)], axis=1))
    return out


def _finding_gallery(
    cache: BlockCache,
    finding: str,
    picks: dict[str, list[int]],
    probs: np.ndarray,
    px: int,
) -> dict[str, list[dict[str, Any]]]:
    rows = sorted({i for ids in picks.values() for i in ids})
    if not rows:
        return {kind: [] for kind, _ in KINDS}
    dataset = cache.dataset
    batch = dataset.get_batch(rows)
    cf, cl = cache.explainer.cams(cache.get(rows), finding)
    keys = dataset.meta["study_key"].astype(str).to_numpy()
    tiles: dict[int, dict[str, Any]] = {}
    for j, i in enumerate(rows):
        has = bool(batch["has_lateral"][j])
        images = {v: batch[v][j, 0].numpy() for v in VIEWS}
        maps = {"frontal": cf[j], "lateral": cl[j] if cl is not None and has else None}
        share = math.nan
        if maps["lateral"] is not None and float(cf[j].sum() + cl[j].sum()) > 0:
            share = float(cl[j].sum() / (cf[j].sum() + cl[j].sum()))
        tiles[i] = {
            "study": str(keys[i])[:12],
            "probability": f"{probs[i]:.3f}",
            "lateral_share": "n/a" if math.isnan(share) else f"{share:.0%}",
            **_tile(images, maps, px),
        }
    return {kind: [tiles[i] for i in picks[kind]] for kind, _ in KINDS}


def galleries(
    explainer: Explainer,
    dataset: ShardDataset,
    probs: np.ndarray,
    thresholds: Mapping[str, float | None],
    k: int,
    px: int,
    cache: BlockCache | None = None,
) -> list[dict[str, Any]]:
    """Per finding of ``thresholds``, the gallery's kinds (see the module docstring).

    Args:
        explainer: of the checkpoint.
        dataset: the prepared test studies (labels: the test labels).
        probs: (N, F of the dataset) dual-view test probabilities, in dataset order.
        thresholds: per finding to show, its Youden threshold (None: 0.5).
        k: studies per kind.
        px: side of each image in the PNGs.
        cache: the studies' block outputs (None: computed here).
    """
    cache = cache or BlockCache(explainer, dataset)
    out = []
    for name, threshold in thresholds.items():
        j = list(dataset.findings).index(name)
        t = 0.5 if threshold is None else float(threshold)
        y, p = dataset.labels[:, j], probs[:, j]
        picks = _select(y, p, t, k)
        kinds = _finding_gallery(cache, name, picks, p, px)
        out.append({"finding": name, "threshold": f"{t:.3f}", "kinds": kinds})
    return out


def test_probabilities(predictions: pd.DataFrame, dataset: ShardDataset) -> np.ndarray:
    """The dual-view test probabilities of the predictions table, in the dataset's order."""
    part = predictions[(predictions["split"] == "test") & (predictions["mode"] == "dual")]
    part = part.set_index("study_key").loc[dataset.meta["study_key"].astype(str).to_numpy()]
    return part[[f"p_{f}" for f in dataset.findings]].to_numpy(dtype=np.float64)


def _measure(params: SaliencyParams, cache: BlockCache, findings: list[str]) -> dict[str, Any]:
    explainer, dataset = cache.explainer, cache.dataset
    if not Path(params.regions).is_file():
        return {"measurable": False, "reason": f"no finding regions ({params.regions}): real data"}
    if not Path(params.studies).is_file():
        return {"measurable": False, "reason": f"no studies table ({params.studies})"}
    keys = dataset.meta["study_key"].astype(str).tolist()
    regions = prepared_regions(params.studies, params.regions, keys, int(dataset.size or 0))
    if not regions:
        return {"measurable": False, "reason": "no test study's files have recorded regions"}
    cap = params.localisation_studies
    return localisation(explainer, dataset, regions, findings, cap, cache)


def saliency_results(
    params: SaliencyParams,
    explainer: Explainer,
    dataset: ShardDataset,
    predictions: pd.DataFrame,
    thresholds: Mapping[str, float | None],
) -> dict[str, Any]:
    """The report's saliency section: localisation (the DVC metrics) and the galleries.

    Args:
        params: the saliency params.
        explainer: of the checkpoint.
        dataset: the prepared test studies.
        predictions: the evaluate stage's table (its dual-view test rows give the scores).
        thresholds: per trained finding, its Youden threshold (None: 0.5).

    Returns:
        ``{"localisation": metrics (see :func:`localisation`), "galleries": [...],
        "kinds": kind -> title, "gallery_px": ...}``.
    """
    findings = list(thresholds)
    # one trunk pass per study used (at most localisation_studies + 3 gallery_studies per
    # finding, whatever the test set's size), shared by the localisation and the galleries
    cache = BlockCache(explainer, dataset)
    loc = _measure(params, cache, findings)
    probs = test_probabilities(predictions, dataset)
    k, px = params.gallery_studies, params.gallery_px
    shown = galleries(explainer, dataset, probs, thresholds, k, px, cache)
    return {"localisation": loc, "galleries": shown, "kinds": dict(KINDS)}
