"""Findings of the pleura: fluid, air and thickening between the lung and the chest wall."""

from __future__ import annotations

import numpy as np

from pipelines.synthetic.findings.base import Finding, Params, register
from pipelines.synthetic.frames import LateralFrame, PAFrame
from pipelines.synthetic.shapes import ramp


@register
class Effusion(Finding):
    """Fluid blunting the lateral (PA) and posterior (lateral) costophrenic angle."""

    name = "Effusion"

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        sides = (-1, 1) if u[1] < 0.3 else (side,)
        return {"sides": sides, "h": 0.13 + 0.12 * u[2]}

    def draw_pa(self, A: np.ndarray, fr: PAFrame, p: Params) -> None:
        b, e, g, x = fr.b, fr.e, fr.g, fr.x
        for s in p["sides"]:
            cp = g.dome(s) + g.dome_h
            rel = np.clip((x - g.med_w) / (g.thorax_w - g.med_w), 0, 1)
            fluid = ramp(b - (cp - p["h"] - 0.12 * rel**2), 0.03)
            fluid *= ramp(fr.wall + 0.01 - x, e) * fr.side_of(s)
            A += fluid * (1.1 * fr.air + 0.1 * (b < cp + 0.05))

    def draw_lateral(self, A: np.ndarray, fr: LateralFrame, p: Params) -> None:
        a, b, e, g = fr.a, fr.b, fr.e, fr.g
        l_ant, l_post = fr.l_ant, fr.l_post
        cp = max(g.dome(s) for s in p["sides"]) + g.dome_h + 0.08
        rel = np.clip((a - l_ant) / (l_post - l_ant), 0, 1)
        lvl = cp - p["h"] * (1.1 if len(p["sides"]) == 2 else 0.85) - 0.14 * rel**3
        fluid = ramp(b - lvl, 0.03) * ramp(l_post + 0.02 - a, e) * ramp(a - l_ant, e)
        A += fluid * (1.2 * fr.air + 0.1 * (b < cp))


@register
class Pneumothorax(Finding):
    """A lucent rim without lung markings and a visceral pleural line (PA only)."""

    name = "Pneumothorax"
    lateral = False

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        return {"side": side, "gap": 0.09 + 0.07 * u[1]}

    def soften(self, p: Params) -> Params:
        return p | {"gap": (0.3 + 0.7 * p["strength"]) * p["gap"]}  # a smaller rim

    def prepare_pa(self, fr: PAFrame, p: Params) -> None:
        """Pull the lung tissue ``gap`` off the wall and apex; keep the pleural line."""
        b, e, x = fr.b, fr.e, fr.x
        on = fr.side_of(p["side"])
        gap = p["gap"]
        inner = ramp(fr.wall - gap - x, e) * ramp(b - fr.top - 0.7 * gap, e)
        inner2 = ramp(fr.wall - gap - 2 * e - x, e) * ramp(b - fr.top - 0.7 * gap - 2 * e, e)
        fr.parench = fr.lung * np.where(on, inner, 1.0)
        fr.pleural = np.where(on, inner - inner2, 0.0) * (fr.lung > 0.05)

    def draw_pa(self, A: np.ndarray, fr: PAFrame, p: Params) -> None:
        lung, parench = fr.lung, fr.parench
        A -= 0.3 * fr.g.markings * fr.marks * (lung - parench) + 0.35 * (lung - parench)
        A += 0.3 * fr.pleural


@register
class PleuralThickening(Finding):
    """A lumpy band along the chest wall (lateral view: along the posterior wall)."""

    name = "Pleural_Thickening"
    chronic = True

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        sides = (-1, 1) if u[1] < 0.35 else (side,)
        return {
            "sides": sides,
            "z0": 0.1 + 0.3 * u[2],
            "z1": 0.65 + 0.25 * u[3],
            "t": 0.055 + 0.025 * u[4],
        }

    def draw_pa(self, A: np.ndarray, fr: PAFrame, p: Params) -> None:
        b, e, g, x, wall = fr.b, fr.e, fr.g, fr.x, fr.wall
        for s in p["sides"]:
            zz = (b - g.apex) / (fr.dome - g.apex)
            lump = 1.0 + 0.35 * np.sin(b * 37.0 + s)
            band = ramp(x - (wall - p["t"] * lump), e) * ramp(wall + 0.02 - x, e)
            band *= ramp(zz - p["z0"], 0.05) * ramp(p["z1"] - zz, 0.05) * fr.side_of(s)
            A += 0.5 * band

    def draw_lateral(self, A: np.ndarray, fr: LateralFrame, p: Params) -> None:
        a, b, e, g, l_post = fr.a, fr.b, fr.e, fr.g, fr.l_post
        dome = g.dome(p["sides"][0])
        zz = (b - g.apex) / (dome - g.apex)
        t = p["t"] * (1.3 if len(p["sides"]) == 2 else 1.0)
        band = ramp(a - (l_post - t), e) * ramp(l_post + 0.03 - a, e)
        band *= ramp(zz - p["z0"], 0.05) * ramp(p["z1"] - zz, 0.05)
        A += 0.5 * band
