"""Drawing primitives of the synthetic chest: the pixel grid, soft edges, smooth noise, shapes.

Coordinates are image half-widths (the image spans -1..1 on both axes). The soft-edged shapes
return maps in [0, 1] that the renderer weighs into an attenuation map.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(u, v)`` of a ``size`` x ``size`` image (float32, read-only).

    Args:
        size: image side in pixels.

    Returns:
        ``u`` growing to the right and ``v`` growing downwards, both in -1..1.
    """
    c = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def ramp(d: np.ndarray, w: float) -> np.ndarray:
    """0 outside (``d < 0``), 1 inside, linear across a band of width ``w`` at the boundary."""
    return np.clip(d * (1.0 / w) + 0.5, 0.0, 1.0)


def sramp(d: np.ndarray, w: float) -> np.ndarray:
    """0 at the boundary, rising like a square root to 1 at depth ``w`` (a rounded profile)."""
    return np.sqrt(np.clip(d * (1.0 / w), 0.0, 1.0))


def smooth(t: np.ndarray) -> np.ndarray:
    """Smoothstep: 0 below 0, 1 above 1, a cubic ease in between."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@lru_cache(maxsize=32)
def _upsampler(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian interpolation weights from a coarse lattice to pixels, scaled to unit variance.

    Returns ``(up, up_t)``: ``up @ white @ up_t`` of a (cells + 4)^2 white field has unit
    variance at every pixel (on average).
    """
    pos = (np.arange(size) + 0.5) * (cells / size) + 1.5
    w = np.exp(-0.5 * ((pos[:, None] - np.arange(cells + 4)[None, :]) / 0.7) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    w /= np.sqrt(np.mean((w**2).sum(axis=1)))  # each axis contributes its share of variance
    up = w.astype(np.float32)
    return up, np.ascontiguousarray(up.T)


def noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth, zero-mean, unit-variance noise, correlation length about ``size / cells`` px.

    Args:
        rng: draws one (cells + 4)^2 standard normal field.
        size: image side in pixels.
        cells: lattice cells across the image.
    """
    up, up_t = _upsampler(size, cells)
    return (up @ rng.standard_normal((cells + 4, cells + 4), dtype=np.float32)) @ up_t


def lines(field: np.ndarray, width: float) -> np.ndarray:
    """A network of curvy lines along the zero crossings of a smooth field."""
    return np.exp(-((field * (1.0 / width)) ** 2))


def disc(
    a: np.ndarray, b: np.ndarray, ca: float, cb: float, ra: float, rb: float, edge: float
) -> np.ndarray:
    """Soft-edged ellipse (edge width ``edge`` in the same units as the radii)."""
    r = np.sqrt(((a - ca) / ra) ** 2 + ((b - cb) / rb) ** 2)
    return ramp(1.0 - r, edge / min(ra, rb))


def tilted(
    a: np.ndarray, b: np.ndarray, ca: float, cb: float, ra: float, rb: float, theta: float
) -> np.ndarray:
    """Squared normalised radius of an ellipse whose ``ra`` axis points at angle ``theta``."""
    c, s = math.cos(theta), math.sin(theta)
    da, db = a - ca, b - cb
    return ((c * da + s * db) / ra) ** 2 + ((c * db - s * da) / rb) ** 2


def bands(phase: np.ndarray, duty: float) -> np.ndarray:
    """Periodic soft bands: 1 at the middle of each period, 0 beyond ``duty`` of it."""
    return np.clip(1.0 - np.abs(phase - np.floor(phase) - 0.5) / (duty / 2), 0.0, 1.0)


def segment_dist(
    a: np.ndarray, b: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]
) -> np.ndarray:
    """Distance of each point to the segment ``p0``-``p1``."""
    da, db = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((a - p0[0]) * da + (b - p0[1]) * db) / (da * da + db * db), 0.0, 1.0)
    return np.hypot(a - p0[0] - t * da, b - p0[1] - t * db)
