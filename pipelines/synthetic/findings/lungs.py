"""Findings of the lung fields: airspace, volume, nodules, interstitium, hyperinflation."""

from __future__ import annotations

import numpy as np

from pipelines.synthetic.anatomy import Geometry
from pipelines.synthetic.findings.base import Finding, Params, register
from pipelines.synthetic.frames import LateralFrame, PAFrame
from pipelines.synthetic.shapes import disc, lines, noise, ramp


@register
class Atelectasis(Finding):
    """A plate-like band of collapsed lung and an elevated hemidiaphragm on that side."""

    name = "Atelectasis"
    reshape_order = 1  # the local lift comes after the diaphragm shifts of other findings

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        return {
            "side": side,
            "z": 0.55 + 0.25 * u[1],
            "tilt": 0.2 * (u[2] - 0.5),
            "len": 0.55 + 0.2 * u[3],
            "thick": 0.04 + 0.015 * u[4],
            "y": 0.3 + 0.4 * u[5],
            "lift": 0.06 + 0.03 * u[6],
        }

    def soften(self, p: Params) -> Params:
        return p | {"lift": p["strength"] * p["lift"]}

    def reshape(self, g: Geometry, p: Params) -> None:
        if p["side"] < 0:
            g.dome_r -= p["lift"]
        else:
            g.dome_l -= p["lift"]

    def draw_pa(self, A: np.ndarray, fr: PAFrame, p: Params) -> None:
        a, b, e, g = fr.a, fr.b, fr.e, fr.g
        bb = g.apex + p["z"] * (g.dome(p["side"]) - g.apex)
        ca = g.x_pos(0.45, p["side"], bb)
        d = np.abs((b - bb) - p["tilt"] * (a - ca))
        reach = 0.5 * p["len"] * (float(g.wall(bb)) - g.med_w)
        band = ramp(p["thick"] / 2 - d, e) * ramp(reach - np.abs(a - ca), 0.06)
        A += band * (0.9 * fr.air + 0.08) * fr.side_of(p["side"]) * (fr.lung > 0.02)

    def draw_lateral(self, A: np.ndarray, fr: LateralFrame, p: Params) -> None:
        a, b, e, g = fr.a, fr.b, fr.e, fr.g
        bb = g.apex + p["z"] * (g.dome(p["side"]) - g.apex)
        ca = g.y_pos(p["y"], bb)
        d = np.abs((b - bb) + 0.35 * (a - ca))
        band = ramp(p["thick"] / 2 - d, e) * ramp(0.25 - np.abs(a - ca), 0.06)
        A += band * (0.9 * fr.air + 0.08) * (fr.lung > 0.02)


@register
class Infiltration(Finding):
    """Patchy multifocal opacities over one lung."""

    name = "Infiltration"

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        return {
            "side": side,
            "z": 0.35 + 0.3 * u[1],
            "x": 0.35 + 0.3 * u[2],
            "y": 0.3 + 0.4 * u[3],
            "r": 0.30 + 0.08 * u[4],
        }

    def draw_pa(self, A: np.ndarray, fr: PAFrame, p: Params) -> None:
        a, b, g = fr.a, fr.b, fr.g
        patch = np.clip(noise(self.rng(fr.an), fr.size, 12) + 0.2, 0, 1.3)
        bb = g.z_level(p["z"], p["side"])
        ca = g.x_pos(p["x"], p["side"], bb)
        reg = np.exp(-(((a - ca) / (p["r"] * 0.8)) ** 2 + ((b - bb) / (p["r"] * 1.4)) ** 2))
        A += 1.0 * fr.air * reg * patch * fr.side_of(p["side"])

    def draw_lateral(self, A: np.ndarray, fr: LateralFrame, p: Params) -> None:
        a, b, g = fr.a, fr.b, fr.g
        r = self.rng(fr.an)
        noise(r, fr.size, 12)  # the PA texture; the lateral one follows it
        patch = np.clip(noise(r, fr.size, 12) + 0.2, 0, 1.3)
        bb = g.z_level(p["z"], p["side"])
        ca = g.y_pos(p["y"], bb)
        reg = np.exp(-(((a - ca) / (p["r"] * 1.1)) ** 2 + ((b - bb) / (p["r"] * 1.4)) ** 2))
        A += 0.8 * fr.air * reg * patch


@register
class Nodule(Finding):
    """One to three small dense round opacities, at the same level on both views."""

    name = "Nodule"
    chronic = True
    state_order = 1  # the patient's nodule state is drawn after the other chronic ones

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        n = 1 + int(u[1] < 0.5) + int(u[2] < 0.2)
        return {
            "nodules": [  # (side, x, y, z, radius)
                (
                    -1 if rng.random() < 0.5 else 1,
                    0.15 + 0.7 * rng.random(),
                    0.15 + 0.7 * rng.random(),
                    0.15 + 0.7 * rng.random(),
                    0.065 + 0.025 * rng.random(),
                )
                for _ in range(n)
            ]
        }

    def draw_pa(self, A: np.ndarray, fr: PAFrame, p: Params) -> None:
        g = fr.g
        for s, xf, _yf, zf, r in p["nodules"]:
            bb = g.z_level(zf, s)
            A += 0.7 * disc(fr.a, fr.b, g.x_pos(xf, s, bb), bb, r, r, fr.e)

    def draw_lateral(self, A: np.ndarray, fr: LateralFrame, p: Params) -> None:
        g = fr.g
        for s, _xf, yf, zf, r in p["nodules"]:
            bb = g.z_level(zf, s)
            A += 0.7 * disc(fr.a, fr.b, g.y_pos(yf, bb), bb, r, r, fr.e)


@register
class Pneumonia(Finding):
    """A fluffy lobar opacity."""

    name = "Pneumonia"

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        return {
            "side": side,
            "z": 0.2 + 0.55 * u[1],
            "x": 0.3 + 0.4 * u[2],
            "y": 0.25 + 0.5 * u[3],
            "r": 0.15 + 0.06 * u[4],
            "e": 0.8 + 0.4 * u[5],
        }

    def draw_pa(self, A: np.ndarray, fr: PAFrame, p: Params) -> None:
        a, b, g = fr.a, fr.b, fr.g
        bb = g.z_level(p["z"], p["side"])
        ca = g.x_pos(p["x"], p["side"], bb)
        r2 = ((a - ca) / (p["r"] * p["e"])) ** 2 + ((b - bb) / (p["r"] / p["e"] * 1.1)) ** 2
        tex = 0.8 + 0.2 * noise(self.rng(fr.an), fr.size, 20)
        A += 1.0 * fr.air * np.exp(-(r2**2)) * tex

    def draw_lateral(self, A: np.ndarray, fr: LateralFrame, p: Params) -> None:
        a, b, g = fr.a, fr.b, fr.g
        bb = g.z_level(p["z"], p["side"])
        ca = g.y_pos(p["y"], bb)
        r2 = ((a - ca) / (p["r"] / p["e"])) ** 2 + ((b - bb) / (p["r"] / p["e"] * 1.1)) ** 2
        A += 1.0 * fr.air * np.exp(-(r2**2))


@register
class Consolidation(Finding):
    """Posterior basal consolidation with air bronchograms: the spine sign (lateral only)."""

    name = "Consolidation"
    frontal = False

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        return {"z": 0.62 + 0.15 * u[1], "r": 0.14 + 0.05 * u[2]}

    def draw_lateral(self, A: np.ndarray, fr: LateralFrame, p: Params) -> None:
        a, b, g = fr.a, fr.b, fr.g
        bb = g.apex + p["z"] * (g.dome_l + g.dome_h - g.apex)
        r2 = ((a - g.depth * 0.5) / (p["r"] * 1.1)) ** 2 + ((b - bb) / p["r"]) ** 2
        bron = lines(noise(self.rng(fr.an), fr.size, 14), 0.25)
        A += (1.3 * fr.air + 0.25) * np.exp(-(r2**2)) * (1.0 - 0.35 * bron)


@register
class Edema(Finding):
    """A perihilar bat-wing haze."""

    name = "Edema"

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        return {"s": 0.9 + 0.3 * u[1]}

    def draw_pa(self, A: np.ndarray, fr: PAFrame, p: Params) -> None:
        g, x, b = fr.g, fr.x, fr.b
        haze = np.exp(-(((x - g.med_w - 0.1) / 0.2) ** 2 + ((b - fr.hil_b) / 0.24) ** 2))
        A += 0.7 * p["s"] * fr.air * haze

    def draw_lateral(self, A: np.ndarray, fr: LateralFrame, p: Params) -> None:
        a, b = fr.a, fr.b
        haze = np.exp(-(((a - fr.hil_a) / 0.3) ** 2 + ((b - fr.hil_b) / 0.26) ** 2))
        A += 0.7 * p["s"] * fr.air * haze


@register
class Emphysema(Finding):
    """Hyperlucent lungs, a flat low diaphragm, a small heart and a big retrosternal space."""

    name = "Emphysema"
    chronic = True

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        return {"lucency": 1.16 + 0.08 * u[1]}

    def contrast(self, p: Params) -> float:
        return 1.0

    def reshape(self, g: Geometry, p: Params) -> None:
        s = p.get("strength", 1.0)  # a milder hyperinflation: every change scaled
        g.dome_r += 0.10 * s
        g.dome_l += 0.10 * s
        g.dome_h *= 1.0 - 0.7 * s
        g.lucency = 1.0 + s * (p["lucency"] - 1.0)
        g.markings *= 1.0 - 0.6 * s
        g.ctr *= 1.0 - 0.12 * s
        g.depth *= 1.0 + 0.12 * s
        g.retrosternal = 0.09 * s


@register
class Fibrosis(Finding):
    """Basal peripheral reticulation with volume loss."""

    name = "Fibrosis"
    chronic = True

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        return {"s": 0.9 + 0.3 * u[1]}

    def reshape(self, g: Geometry, p: Params) -> None:
        s = p.get("strength", 1.0)
        g.dome_r -= 0.05 * s
        g.dome_l -= 0.05 * s
        g.thorax_w *= 1.0 - 0.03 * s

    def draw_pa(self, A: np.ndarray, fr: PAFrame, p: Params) -> None:
        g, x, b = fr.g, fr.x, fr.b
        net = lines(noise(self.rng(fr.an), fr.size, 22), 0.45)
        zone = np.clip((b - fr.hil_b) / (fr.dome - fr.hil_b), 0, 1)
        zone = zone * np.sqrt(np.clip((x - g.med_w) / (g.thorax_w - g.med_w), 0, 1))
        A += (0.65 * p["s"] * net + 0.1) * fr.air * zone

    def draw_lateral(self, A: np.ndarray, fr: LateralFrame, p: Params) -> None:
        a, b, g = fr.a, fr.b, fr.g
        net = lines(noise(self.rng(fr.an), fr.size, 22), 0.45)
        zone = np.clip((b - fr.hil_b) / (g.dome_r - fr.hil_b), 0, 1)
        zone = zone * np.clip((a - fr.l_ant) / (fr.l_post - fr.l_ant), 0, 1)
        A += (0.65 * p["s"] * net + 0.1) * fr.air * zone
