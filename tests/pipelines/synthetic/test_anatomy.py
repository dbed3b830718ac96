"""Tests for the anatomy of the synthetic chest (pipelines/synthetic/anatomy.py)."""

from __future__ import annotations

import numpy as np

from pipelines.synthetic.anatomy import Geometry, next_study, sample_anatomy


def test_sample_anatomy_is_seeded_and_next_study_keeps_the_patient():
    an = sample_anatomy(np.random.default_rng(0))
    assert an == sample_anatomy(np.random.default_rng(0))
    assert an != sample_anatomy(np.random.default_rng(1))
    later = next_study(an, np.random.default_rng(2))
    assert later.patient_seed == an.patient_seed and later.study_seed != an.study_seed
    assert (later.thorax_w, later.rib_gap, later.density) == (an.thorax_w, an.rib_gap, an.density)
    assert abs(later.dome - an.dome) <= 0.025 and abs(later.ctr - an.ctr) <= 0.01


def test_geometry_positions_lie_inside_the_chest():
    g = Geometry.of(sample_anatomy(np.random.default_rng(3)))
    assert g.dome(-1) == g.dome_r < g.dome(1) == g.dome_l  # the left dome sits lower
    assert float(g.wall(g.apex)) < float(g.wall(0.0)) == g.thorax_w
    ant, post = g.lat_bounds(0.0)
    assert -g.depth < float(ant) < 0 < float(post) <= g.depth * 1.02
    for side in (-1, 1):
        bb = g.z_level(0.5, side)
        assert g.apex < bb < g.dome(side)
        x = g.x_pos(0.5, side, bb)
        assert side * x > g.med_w and abs(x) < float(g.wall(bb))
        assert float(ant) < g.y_pos(0.5, bb) < float(post)
