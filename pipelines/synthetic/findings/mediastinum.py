"""Findings of the heart and mediastinum: a big heart, an anterior mass, a hiatal hernia."""

from __future__ import annotations

import numpy as np

from pipelines.synthetic.anatomy import Geometry
from pipelines.synthetic.findings.base import Finding, Params, register
from pipelines.synthetic.frames import LateralFrame
from pipelines.synthetic.shapes import disc, ramp


@register
class Cardiomegaly(Finding):
    """A wide heart (PA) filling the retrocardiac space (lateral)."""

    name = "Cardiomegaly"
    chronic = True

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        return {"scale": 1.33 + 0.12 * u[1]}

    def soften(self, p: Params) -> Params:
        return p | {"scale": 1.0 + p["strength"] * (p["scale"] - 1.0)}  # a mildly large heart

    def contrast(self, p: Params) -> float:
        return 1.0

    def reshape(self, g: Geometry, p: Params) -> None:
        g.ctr = min(g.ctr * p["scale"], 0.72)


@register
class Mass(Finding):
    """An anterior mediastinal mass filling the retrosternal space (lateral only)."""

    name = "Mass"
    frontal = False

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        return {"z": 0.28 + 0.14 * u[1], "r": 0.12 + 0.05 * u[2]}

    def draw_lateral(self, A: np.ndarray, fr: LateralFrame, p: Params) -> None:
        g = fr.g
        bb = g.apex + p["z"] * (g.dome_r - g.apex)
        ca = float(g.lat_bounds(bb)[0]) + 0.03 + p["r"]
        A += (0.8 * fr.air + 0.35) * disc(fr.a, fr.b, ca, bb, p["r"], p["r"] * 1.15, 2 * fr.e)


@register
class Hernia(Finding):
    """A retrocardiac hiatal hernia with an air-fluid level (lateral only)."""

    name = "Hernia"
    frontal = False
    chronic = True

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        return {"r": 0.115 + 0.03 * u[1], "level": 0.1 * (u[2] - 0.5)}

    def draw_lateral(self, A: np.ndarray, fr: LateralFrame, p: Params) -> None:
        a, b, e, g = fr.a, fr.b, fr.e, fr.g
        cb = g.dome_r - 0.6 * p["r"]
        ca = 0.5 * (fr.heart_back + g.depth * 0.45)
        sac = disc(a, b, ca, cb, 1.1 * p["r"], p["r"], 2 * e)
        rim = disc(a, b, ca, cb, 1.1 * p["r"] + 0.02, p["r"] + 0.02, e) - sac
        gas = ramp(cb + p["level"] * p["r"] - b, e) * sac
        A += 0.45 * (sac - gas) - 0.4 * gas + 0.3 * rim
