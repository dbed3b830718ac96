"""Tests for the drawing primitives of the synthetic chest (pipelines/synthetic/shapes.py)."""

from __future__ import annotations

import numpy as np

from pipelines.synthetic.shapes import bands, disc, grid, noise, ramp, segment_dist, sramp


def test_grid_spans_the_image_at_pixel_centres():
    u, v = grid(4)
    assert u.dtype == np.float32 and u.shape == v.shape == (4, 4)
    np.testing.assert_allclose(u[0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(v[:, 0], [-0.75, -0.25, 0.25, 0.75])


def test_soft_edges_and_shapes():
    d = np.array([-1.0, 0.0, 1.0])
    np.testing.assert_allclose(ramp(d, 1.0), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(sramp(d, 1.0), [0.0, 0.0, 1.0])
    u, v = grid(64)
    circle = disc(u, v, 0.0, 0.0, 0.5, 0.5, 0.05)
    assert circle[32, 32] == 1.0 and circle[0, 0] == 0.0
    assert bands(np.array([0.5, 0.0]), 0.5).tolist() == [1.0, 0.0]
    np.testing.assert_allclose(segment_dist(np.array([0.5]), np.array([1.0]), (0, 0), (1, 0)), 1)


def test_noise_is_smooth_zero_mean_unit_variance_and_seeded():
    n = noise(np.random.default_rng(0), 128, 8)
    assert n.shape == (128, 128) and abs(n.mean()) < 0.3 and 0.5 < n.std() < 1.5
    assert np.abs(np.diff(n, axis=1)).mean() < 0.2 * n.std()  # neighbours are correlated
    np.testing.assert_array_equal(n, noise(np.random.default_rng(0), 128, 8))
