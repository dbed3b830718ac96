"""Tests for the renderer of the synthetic dataset (pipelines/synthetic/render.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.labels import FINDINGS
from pipelines.synthetic.anatomy import next_study, sample_anatomy
from pipelines.synthetic.findings import VISIBILITY
from pipelines.synthetic.render import render_view


def _pair(seed: int, view: str, findings: frozenset[str], size: int = 64) -> np.ndarray:
    anatomy = sample_anatomy(np.random.default_rng(seed))
    return render_view(np.random.default_rng(seed + 100), size, view, findings, anatomy)


@pytest.mark.parametrize("finding", FINDINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_each_finding_shows_where_it_is_visible_and_only_there(finding, seed):
    for view, key in (("PA", "frontal"), ("LATERAL", "lateral")):
        base = _pair(seed, view, frozenset())
        with_it = _pair(seed, view, frozenset({finding}))
        assert base.dtype == np.float32 and base.min() >= 0 and base.max() <= 1
        diff = np.abs(with_it - base)
        if VISIBILITY[finding][key]:
            # a region of clearly changed pixels, not a faint global shift
            assert diff.max() > 0.12, (view, diff.max())
            assert (diff > 0.05).sum() >= 6, (view, (diff > 0.05).sum())
        else:
            np.testing.assert_array_equal(with_it, base)


def test_findings_are_distinct_from_each_other():
    """The change each finding makes (over both views) differs from every other's."""
    changes = []
    for f in FINDINGS:
        d = [_pair(5, v, frozenset({f})) - _pair(5, v, frozenset()) for v in ("PA", "LATERAL")]
        changes.append(np.concatenate([x.ravel() for x in d]))
    corr = np.corrcoef(np.stack(changes))
    off = corr[~np.eye(len(FINDINGS), dtype=bool)]
    assert off.max() < 0.9, off.max()


def test_a_finding_seen_on_both_views_sits_at_the_same_level():
    for seed in range(3):
        levels = []
        for view in ("PA", "LATERAL"):
            diff = np.abs(
                _pair(seed, view, frozenset({"Nodule"}), 128) - _pair(seed, view, frozenset(), 128)
            )
            rows = diff.sum(axis=1)
            levels.append((rows * np.arange(128)).sum() / rows.sum())
        assert abs(levels[0] - levels[1]) < 0.1 * 128, levels


def test_render_view_is_deterministic_and_validates():
    an = sample_anatomy(np.random.default_rng(2))
    a = render_view(np.random.default_rng(9), 32, "LATERAL", frozenset({"Edema"}), an)
    b = render_view(np.random.default_rng(9), 32, "LATERAL", frozenset({"Edema"}), an)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (32, 32)
    # another study of the same patient keeps chronic geometry, varies the rest
    later = next_study(an, np.random.default_rng(1))
    assert later.patient_seed == an.patient_seed and later.study_seed != an.study_seed
    with pytest.raises(ValueError, match="unknown findings"):
        render_view(np.random.default_rng(0), 32, "PA", frozenset({"Fracture"}), an)
    with pytest.raises(ValueError, match="view"):
        render_view(np.random.default_rng(0), 32, "AP", frozenset(), an)  # type: ignore[arg-type]


def test_regions_are_where_each_finding_changes_the_image_and_leave_it_unchanged():
    from pipelines.synthetic.render import render_with_regions

    an = sample_anatomy(np.random.default_rng(4))
    found = frozenset({"Nodule", "Mass", "Cardiomegaly", "Pneumothorax"})
    for view in ("PA", "LATERAL"):
        img, regions = render_with_regions(np.random.default_rng(5), 64, view, found, an)
        plain = render_view(np.random.default_rng(5), 64, view, found, an)
        assert np.array_equal(img, plain)  # recording regions changes no pixel
        shown = {
            "PA": {"Nodule", "Cardiomegaly", "Pneumothorax"},
            "LATERAL": {"Nodule", "Mass", "Cardiomegaly"},
        }
        assert set(regions) == shown[view]  # Mass is lateral-only, Pneumothorax PA-only
        for name, mask in regions.items():
            assert mask.dtype == bool and 0 < mask.mean() < 0.5, (view, name)
            without = render_view(np.random.default_rng(5), 64, view, found - {name}, an)
            change = np.abs(img - without)
            # the region holds the finding's biggest changes and most of its change
            assert change[mask].mean() > 5 * change[~mask].mean(), (view, name)
            assert change[mask].sum() > 0.5 * change.sum(), (view, name)
    assert render_with_regions(np.random.default_rng(5), 64, "PA", frozenset(), an)[1] == {}
