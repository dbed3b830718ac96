"""Rendering one view of a synthetic chest from a simple projection model.

Each chest is an attenuation map ``A`` built from analytic shapes (body, lungs, mediastinum,
heart, diaphragm, ribs, clavicles, spine; on the lateral view sternum, vertebrae, retrosternal
and retrocardiac spaces, posterior costophrenic recess) and turned into a display image
``1 - exp(-gain * A)`` (bone bright, air dark). Findings change that map where a radiologist
would look for them; :data:`VISIBILITY` says on which view each one shows. Geometry shared by
both views (the level of a nodule, the side of an effusion) comes from the study's
:class:`Anatomy`, so a finding seen on both views is consistent. Nuisance (position, rotation,
exposure, noise, body habitus, lung shape) varies per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from pipelines.labels import FINDINGS

_BOTH = {"frontal": True, "lateral": True}
#: finding -> on which view(s) it shows.
VISIBILITY: dict[str, dict[str, bool]] = {
    "Atelectasis": dict(_BOTH),  # plate band + elevated hemidiaphragm
    "Cardiomegaly": dict(_BOTH),  # wide heart (PA), heart filling the retrocardiac space (lat)
    "Effusion": dict(_BOTH),  # blunted lateral (PA) / posterior (lat) costophrenic angle
    "Infiltration": dict(_BOTH),  # patchy multifocal opacities over one lung
    "Mass": {"frontal": False, "lateral": True},  # anterior mediastinal, fills retrosternal space
    "Nodule": dict(_BOTH),  # small dense round opacities at the same level on both views
    "Pneumonia": dict(_BOTH),  # fluffy lobar opacity
    "Pneumothorax": {"frontal": True, "lateral": False},  # lucent rim, pleural line (PA only)
    "Consolidation": {"frontal": False, "lateral": True},  # posterior basal: spine sign
    "Edema": dict(_BOTH),  # perihilar bat-wing haze
    "Emphysema": dict(_BOTH),  # hyperlucent, flat low diaphragm, big retrosternal space
    "Fibrosis": dict(_BOTH),  # basal peripheral reticulation, volume loss
    "Pleural_Thickening": dict(_BOTH),  # band along the chest wall
    "Hernia": {"frontal": False, "lateral": True},  # retrocardiac air-fluid level
}
#: Findings seen only on the lateral view (absent from the PA image).
LATERAL_ONLY_FINDINGS: tuple[str, ...] = tuple(f for f in FINDINGS if not VISIBILITY[f]["frontal"])
#: Findings seen only on the frontal view (absent from the lateral image).
FRONTAL_ONLY_FINDINGS: tuple[str, ...] = tuple(f for f in FINDINGS if not VISIBILITY[f]["lateral"])
#: Findings that tend to persist across a patient's studies (same geometry each time).
CHRONIC_FINDINGS: tuple[str, ...] = (
    "Cardiomegaly",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
    "Nodule",
)

View = Literal["PA", "LATERAL"]


# --------------------------------------------------------------------------------------------
# Anatomy: the patient (and study) shared by both views
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Anatomy:
    """A patient's chest, in image half-widths (the image spans -1..1; ``b`` = -1 is the top).

    Attributes:
        thorax_w: half width of the rib cage on the PA view.
        fat: soft tissue beyond the ribs (body half width = ``thorax_w + fat``).
        depth: chest half depth on the lateral view.
        apex: level of the lung apices.
        dome: level of the top of the right hemidiaphragm (inspiration depth).
        dome_h: height of the diaphragm domes.
        left_drop: how much lower the left dome is.
        ctr: cardiothoracic ratio (heart width / thorax width).
        heart_h: heart half height.
        med_w: upper mediastinum half width.
        rib_gap: rib spacing; ``rib_phase`` its offset.
        markings: strength of the lung markings.
        density: soft tissue attenuation scale.
        patient_seed: seeds the geometry of chronic findings (the same at every study).
        study_seed: seeds the geometry of the other findings (one per study, both views).
    """

    thorax_w: float
    fat: float
    depth: float
    apex: float
    dome: float
    dome_h: float
    left_drop: float
    ctr: float
    heart_h: float
    med_w: float
    rib_gap: float
    rib_phase: float
    markings: float
    density: float
    patient_seed: int
    study_seed: int


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw a patient's anatomy (and a first study seed).

    Args:
        rng: the generator to draw from.
    """
    u = rng.random(14).tolist()
    seeds = rng.integers(0, 2**62, size=2)
    return Anatomy(
        thorax_w=0.64 + 0.12 * u[0],
        fat=0.05 + 0.12 * u[1],
        depth=0.56 + 0.12 * u[2],
        apex=-0.80 + 0.10 * u[3],
        dome=0.24 + 0.12 * u[4],
        dome_h=0.10 + 0.06 * u[5],
        left_drop=0.02 + 0.05 * u[6],
        ctr=0.39 + 0.08 * u[7],
        heart_h=0.20 + 0.05 * u[8],
        med_w=0.08 + 0.03 * u[9],
        rib_gap=0.085 + 0.02 * u[10],
        rib_phase=u[11],
        markings=0.8 + 0.4 * u[12],
        density=0.9 + 0.2 * u[13],
        patient_seed=int(seeds[0]),
        study_seed=int(seeds[1]),
    )


def next_study(anatomy: Anatomy, rng: np.random.Generator) -> Anatomy:
    """The same patient at another study: inspiration and heart vary a little, new study seed.

    Args:
        anatomy: the patient's anatomy.
        rng: the generator to draw from.
    """
    u = (rng.random(3) * 2 - 1).tolist()
    return replace(
        anatomy,
        dome=anatomy.dome + 0.025 * u[0],
        ctr=anatomy.ctr + 0.01 * u[1],
        markings=anatomy.markings * (1 + 0.08 * u[2]),
        study_seed=int(rng.integers(0, 2**62)),
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
@dataclass
class _Geom:
    """Anatomy after the findings that reshape it (used by both views)."""

    thorax_w: float
    fat: float
    depth: float
    apex: float
    dome_r: float
    dome_l: float
    dome_h: float
    ctr: float
    heart_h: float
    med_w: float
    lucency: float = 1.0
    markings: float = 1.0
    retrosternal: float = 0.0


def _finding_rng(anatomy: Anatomy, finding: str) -> np.random.Generator:
    seed = anatomy.patient_seed if finding in CHRONIC_FINDINGS else anatomy.study_seed
    return np.random.default_rng([seed, FINDINGS.index(finding)])


def _finding_params(anatomy: Anatomy, findings: frozenset[str]) -> dict[str, dict[str, Any]]:
    """Study-level geometry of each present finding (the same for both views)."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(findings):
        r = _finding_rng(anatomy, f)
        u = r.random(16).tolist()
        side = -1 if u[0] < 0.5 else 1  # -1: patient right (image left on PA)
        if f == "Atelectasis":
            p = {
                "side": side,
                "z": 0.55 + 0.25 * u[1],
                "tilt": 0.2 * (u[2] - 0.5),
                "len": 0.55 + 0.2 * u[3],
                "thick": 0.04 + 0.015 * u[4],
                "y": 0.3 + 0.4 * u[5],
                "lift": 0.06 + 0.03 * u[6],
            }
        elif f == "Cardiomegaly":
            p = {"scale": 1.33 + 0.12 * u[1]}
        elif f == "Effusion":
            sides = (-1, 1) if u[1] < 0.3 else (side,)
            p = {"sides": sides, "h": 0.13 + 0.12 * u[2]}
        elif f == "Infiltration":
            p = {
                "side": side,
                "z": 0.35 + 0.3 * u[1],
                "x": 0.35 + 0.3 * u[2],
                "y": 0.3 + 0.4 * u[3],
                "r": 0.30 + 0.08 * u[4],
            }
        elif f == "Mass":
            p = {"z": 0.28 + 0.14 * u[1], "r": 0.12 + 0.05 * u[2]}
        elif f == "Nodule":
            n = 1 + int(u[1] < 0.5) + int(u[2] < 0.2)
            p = {
                "nodules": [
                    (
                        -1 if r.random() < 0.5 else 1,
                        0.15 + 0.7 * r.random(),
                        0.15 + 0.7 * r.random(),
                        0.15 + 0.7 * r.random(),
                        0.065 + 0.025 * r.random(),
                    )
                    for _ in range(n)
                ]
            }
        elif f == "Pneumonia":
            p = {
                "side": side,
                "z": 0.2 + 0.55 * u[1],
                "x": 0.3 + 0.4 * u[2],
                "y": 0.25 + 0.5 * u[3],
                "r": 0.15 + 0.06 * u[4],
                "e": 0.8 + 0.4 * u[5],
            }
        elif f == "Pneumothorax":
            p = {"side": side, "gap": 0.09 + 0.07 * u[1]}
        elif f == "Consolidation":
            p = {"z": 0.62 + 0.15 * u[1], "r": 0.14 + 0.05 * u[2]}
        elif f == "Edema":
            p = {"s": 0.9 + 0.3 * u[1]}
        elif f == "Emphysema":
            p = {"lucency": 1.16 + 0.08 * u[1]}
        elif f == "Fibrosis":
            p = {"s": 0.9 + 0.3 * u[1]}
        elif f == "Pleural_Thickening":
            sides = (-1, 1) if u[1] < 0.35 else (side,)
            p = {
                "sides": sides,
                "z0": 0.1 + 0.3 * u[2],
                "z1": 0.65 + 0.25 * u[3],
                "t": 0.055 + 0.025 * u[4],
            }
        else:  # Hernia
            p = {"r": 0.115 + 0.03 * u[1], "level": 0.1 * (u[2] - 0.5)}
        out[f] = p
    return out


def _geometry(an: Anatomy, fp: dict[str, dict[str, Any]]) -> _Geom:
    g = _Geom(
        an.thorax_w,
        an.fat,
        an.depth,
        an.apex,
        an.dome,
        an.dome + an.left_drop,
        an.dome_h,
        an.ctr,
        an.heart_h,
        an.med_w,
        markings=an.markings,
    )
    if "Cardiomegaly" in fp:
        g.ctr = min(g.ctr * fp["Cardiomegaly"]["scale"], 0.72)
    if "Emphysema" in fp:
        g.dome_r += 0.10
        g.dome_l += 0.10
        g.dome_h *= 0.3
        g.lucency = fp["Emphysema"]["lucency"]
        g.markings *= 0.4
        g.ctr *= 0.88
        g.depth *= 1.12
        g.retrosternal = 0.09
    if "Fibrosis" in fp:
        g.dome_r -= 0.05
        g.dome_l -= 0.05
        g.thorax_w *= 0.97
    if "Atelectasis" in fp:
        p = fp["Atelectasis"]
        if p["side"] < 0:
            g.dome_r -= p["lift"]
        else:
            g.dome_l -= p["lift"]
    return g


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def _ramp(d: np.ndarray, w: float) -> np.ndarray:
    """0 outside (``d < 0``), 1 inside, linear across a band of width ``w`` at the boundary."""
    return np.clip(d * (1.0 / w) + 0.5, 0.0, 1.0)


def _sramp(d: np.ndarray, w: float) -> np.ndarray:
    """0 at the boundary, rising like a square root to 1 at depth ``w`` (a rounded profile)."""
    return np.sqrt(np.clip(d * (1.0 / w), 0.0, 1.0))


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


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth, zero-mean, unit-variance noise, correlation length about ``size / cells`` px."""
    up, up_t = _upsampler(size, cells)
    return (up @ rng.standard_normal((cells + 4, cells + 4), dtype=np.float32)) @ up_t


def _lines(field: np.ndarray, width: float) -> np.ndarray:
    """A network of curvy lines along the zero crossings of a smooth field."""
    return np.exp(-((field * (1.0 / width)) ** 2))


@dataclass
class _Nuisance:
    rot: float
    du: float
    dv: float
    scale: float
    gain: float
    gamma: float
    noise: float
    vessels: np.ndarray
    fine: np.ndarray
    grain: np.ndarray


def _nuisance(rng: np.random.Generator, size: int) -> _Nuisance:
    """Everything that varies per image; always the same draws, whatever the findings."""
    u = rng.random(7).tolist()
    return _Nuisance(
        rot=math.radians(8.0 * (u[0] - 0.5)),
        du=0.10 * (u[1] - 0.5),
        dv=0.08 * (u[2] - 0.5),
        scale=0.92 + 0.14 * u[3],
        gain=0.95 + 0.35 * u[4],
        gamma=0.85 + 0.3 * u[5],
        noise=0.008 + 0.02 * u[6],
        vessels=_lines(_noise(rng, size, 11), 0.32),
        fine=_lines(_noise(rng, size, 23), 0.25),
        grain=rng.standard_normal((size, size), dtype=np.float32),
    )


def _coords(size: int, nu: _Nuisance) -> tuple[np.ndarray, np.ndarray]:
    u, v = _grid(size)
    c, s = math.cos(nu.rot), math.sin(nu.rot)
    uu, vv = u - nu.du, v - nu.dv
    k = 1.0 / nu.scale
    return (c * uu + s * vv) * k, (c * vv - s * uu) * k


def _disc(
    a: np.ndarray, b: np.ndarray, ca: float, cb: float, ra: float, rb: float, edge: float
) -> np.ndarray:
    """Soft-edged ellipse (edge width ``edge`` in the same units as the radii)."""
    r = np.sqrt(((a - ca) / ra) ** 2 + ((b - cb) / rb) ** 2)
    return _ramp(1.0 - r, edge / min(ra, rb))


def _tilted(
    a: np.ndarray, b: np.ndarray, ca: float, cb: float, ra: float, rb: float, theta: float
) -> np.ndarray:
    """Squared normalised radius of an ellipse whose ``ra`` axis points at angle ``theta``."""
    c, s = math.cos(theta), math.sin(theta)
    da, db = a - ca, b - cb
    return ((c * da + s * db) / ra) ** 2 + ((c * db - s * da) / rb) ** 2


def _smooth(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _bands(phase: np.ndarray, duty: float) -> np.ndarray:
    """Periodic soft bands: 1 at the middle of each period, 0 beyond ``duty`` of it."""
    return np.clip(1.0 - np.abs(phase - np.floor(phase) - 0.5) / (duty / 2), 0.0, 1.0)


def _segment_dist(
    a: np.ndarray, b: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]
) -> np.ndarray:
    da, db = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((a - p0[0]) * da + (b - p0[1]) * db) / (da * da + db * db), 0.0, 1.0)
    return np.hypot(a - p0[0] - t * da, b - p0[1] - t * db)


def _wall(g: _Geom, b: Any) -> Any:
    """Half width of the lung fields (inside the ribs) at level ``b`` on the PA view."""
    return g.thorax_w * (1.0 - 0.38 * np.clip((-0.15 - b) / (-0.15 - g.apex), 0, 1) ** 2)


def _lat_bounds(g: _Geom, b: Any) -> tuple[Any, Any]:
    """Anterior and posterior body surface at level ``b`` on the lateral view."""
    neck = _smooth((-0.45 - np.asarray(b)) / 0.45)
    ant = -g.depth * (0.97 + 0.05 * b) + 0.3 * g.depth * neck
    post = g.depth * (1.02 - 0.10 * (b + 0.25) ** 2) - 0.35 * g.depth * neck
    return ant, post


def _dome(g: _Geom, side: int) -> float:
    return g.dome_r if side < 0 else g.dome_l


def _z_level(g: _Geom, z: float, side: int = -1) -> float:
    """Level ``b`` of a lesion at relative height ``z`` (0 apex .. 1 above the dome)."""
    return g.apex + 0.08 + z * (_dome(g, side) - g.apex - 0.16)


def _x_pos(g: _Geom, frac: float, side: int, bb: float) -> float:
    """PA position of a lesion ``frac`` of the way from mediastinum to wall."""
    return side * (g.med_w + (0.12 + 0.72 * frac) * (float(_wall(g, bb)) - g.med_w))


def _y_pos(g: _Geom, frac: float, bb: float) -> float:
    """Lateral position of a lesion ``frac`` of the way from front to back of the lung."""
    ant, post = _lat_bounds(g, bb)
    a0, a1 = float(ant) + 0.05, float(post) - 0.06
    return a0 + (0.1 + 0.8 * frac) * (a1 - a0)


def _render_pa(
    a: np.ndarray, b: np.ndarray, g: _Geom, fp: dict, nu: _Nuisance, size: int, an: Anatomy
) -> np.ndarray:
    """Attenuation map of a PA view (patient's right on the image left)."""
    e = 3.0 / size  # 1.5 px in half-width units
    x = np.abs(a)
    right = a < 0
    tw = g.thorax_w
    dome = np.where(right, np.float32(g.dome_r), np.float32(g.dome_l))

    # body: neck, shoulders, trunk; elliptical cross-section
    shoulder = tw + g.fat + 0.07
    half = 0.26 + (shoulder - 0.26) * _smooth((b + 0.97) / 0.3)
    half = half - 0.07 * _smooth((b + 0.6) / 0.4)
    body = np.sqrt(np.clip(1.0 - (a / half) ** 2, 0.0, 1.0))

    # lungs: lateral wall, mediastinum, rounded apex, diaphragm domes, sharp CP angles
    wall = _wall(g, b)
    knob = 0.045 * np.exp(-(((b - g.apex - 0.38) / 0.07) ** 2)) * (~right)
    med = g.med_w + knob
    xc, hw = (0.62 * tw + g.med_w) / 2, (0.62 * tw - g.med_w) / 2
    top = g.apex + 0.22 * ((x - xc) / hw) ** 2
    xd, wd = g.med_w + 0.4 * (tw - g.med_w), 0.6 * (tw - g.med_w)
    floor = dome + g.dome_h * ((x - xd) / wd) ** 2
    lung = _sramp(wall - x, 0.10) * _sramp(x - med, 0.05) * _sramp(b - top, 0.08)
    lung *= _sramp(floor - b, 0.04)
    parench = lung  # lung tissue with markings (a pneumothorax pulls it off the wall)
    if "Pneumothorax" in fp:
        p = fp["Pneumothorax"]
        on = right if p["side"] < 0 else ~right
        gap = p["gap"]
        inner = _ramp(wall - gap - x, e) * _ramp(b - top - 0.7 * gap, e)
        inner2 = _ramp(wall - gap - 2 * e - x, e) * _ramp(b - top - 0.7 * gap - 2 * e, e)
        parench = lung * np.where(on, inner, 1.0)
        pleural = np.where(on, inner - inner2, 0.0) * (lung > 0.05)

    # heart: tilted ellipse on the diaphragm, two thirds to the patient's left
    width = g.ctr * 2 * tw
    rb, th = 0.85 * g.heart_h, 0.45
    ra = math.sqrt(max((width / 2) ** 2 - (rb * math.sin(th)) ** 2, 1e-4)) / math.cos(th)
    heart = _sramp(1.0 - _tilted(a, b, 0.14 * width, g.dome_r - 0.3 * g.heart_h, ra, rb, th), 0.25)
    air = lung * (1.0 - 0.85 * heart) * g.lucency

    hil_b = g.apex + 0.45 * (g.dome_r - g.apex)
    hilum_w = 0.35 + 0.65 * np.exp(-((x - med - 0.1) ** 2 / 0.08 + (b - hil_b) ** 2 / 0.12))
    marks = (0.7 * nu.vessels + 0.3 * nu.fine) * hilum_w * (1.0 - 0.85 * heart)
    hila = np.exp(-((x - med - 0.05) ** 2 / 0.004 + (b - hil_b) ** 2 / 0.01))

    # bones: posterior and anterior ribs, clavicles, spine; trachea and gastric bubble (air)
    cage = _ramp(wall + 0.04 - x, 2 * e) * _ramp(b - g.apex + 0.1, 0.04)
    cage *= _ramp(dome + g.dome_h + 0.06 - b, 0.04)
    rib_p = _bands((b + 0.25 * x - 0.45 * x * x) / an.rib_gap - an.rib_phase, 0.45)
    rib_a = _bands((b + 0.55 * x) / (1.3 * an.rib_gap) - an.rib_phase, 0.3)
    clav = _ramp(0.028 - _segment_dist(x, b, (0.06, g.apex + 0.17), (0.6, g.apex + 0.03)), e)
    spine = _sramp(0.07 - x, 0.03)
    trachea = _sramp(0.033 - x, 0.02) * _ramp(hil_b - 0.15 - b, 0.04)
    bubble = _disc(a, b, 0.3 * tw + 0.05, g.dome_l + 0.1, 0.09, 0.05, 0.03)

    A = 1.35 * an.density * body - 1.05 * air
    A += 0.3 * g.markings * marks * parench + 0.15 * hila
    A += (0.16 * rib_p + 0.06 * rib_a) * cage + 0.32 * clav
    A += 0.22 * spine - 0.35 * trachea - 0.45 * bubble

    def side_of(s: int) -> np.ndarray:
        return right if s < 0 else ~right

    for f, p in fp.items():
        if f == "Atelectasis":
            bb = g.apex + p["z"] * (_dome(g, p["side"]) - g.apex)
            ca = _x_pos(g, 0.45, p["side"], bb)
            d = np.abs((b - bb) - p["tilt"] * (a - ca))
            reach = 0.5 * p["len"] * (float(_wall(g, bb)) - g.med_w)
            band = _ramp(p["thick"] / 2 - d, e) * _ramp(reach - np.abs(a - ca), 0.06)
            A += band * (0.9 * air + 0.08) * side_of(p["side"]) * (lung > 0.02)
        elif f == "Effusion":
            for s in p["sides"]:
                cp = _dome(g, s) + g.dome_h
                rel = np.clip((x - g.med_w) / (tw - g.med_w), 0, 1)
                fluid = _ramp(b - (cp - p["h"] - 0.12 * rel**2), 0.03)
                fluid *= _ramp(wall + 0.01 - x, e) * side_of(s)
                A += fluid * (1.1 * air + 0.1 * (b < cp + 0.05))
        elif f == "Infiltration":
            r = _finding_rng(an, f)
            patch = np.clip(_noise(r, size, 12) + 0.2, 0, 1.3)
            bb = _z_level(g, p["z"], p["side"])
            ca = _x_pos(g, p["x"], p["side"], bb)
            reg = np.exp(-(((a - ca) / (p["r"] * 0.8)) ** 2 + ((b - bb) / (p["r"] * 1.4)) ** 2))
            A += 1.0 * air * reg * patch * side_of(p["side"])
        elif f == "Nodule":
            for s, xf, _yf, zf, r in p["nodules"]:
                bb = _z_level(g, zf, s)
                A += 0.7 * _disc(a, b, _x_pos(g, xf, s, bb), bb, r, r, e)
        elif f == "Pneumonia":
            bb = _z_level(g, p["z"], p["side"])
            ca = _x_pos(g, p["x"], p["side"], bb)
            r2 = ((a - ca) / (p["r"] * p["e"])) ** 2 + ((b - bb) / (p["r"] / p["e"] * 1.1)) ** 2
            tex = 0.8 + 0.2 * _noise(_finding_rng(an, f), size, 20)
            A += 1.0 * air * np.exp(-(r2**2)) * tex
        elif f == "Pneumothorax":
            A -= 0.3 * g.markings * marks * (lung - parench) + 0.35 * (lung - parench)
            A += 0.3 * pleural
        elif f == "Edema":
            haze = np.exp(-(((x - g.med_w - 0.1) / 0.2) ** 2 + ((b - hil_b) / 0.24) ** 2))
            A += 0.7 * p["s"] * air * haze
        elif f == "Fibrosis":
            net = _lines(_noise(_finding_rng(an, f), size, 22), 0.45)
            zone = np.clip((b - hil_b) / (dome - hil_b), 0, 1)
            zone = zone * np.sqrt(np.clip((x - g.med_w) / (tw - g.med_w), 0, 1))
            A += (0.65 * p["s"] * net + 0.1) * air * zone
        elif f == "Pleural_Thickening":
            for s in p["sides"]:
                zz = (b - g.apex) / (dome - g.apex)
                lump = 1.0 + 0.35 * np.sin(b * 37.0 + s)
                band = _ramp(x - (wall - p["t"] * lump), e) * _ramp(wall + 0.02 - x, e)
                band *= _ramp(zz - p["z0"], 0.05) * _ramp(p["z1"] - zz, 0.05) * side_of(s)
                A += 0.5 * band
    return A


def _render_lateral(
    a: np.ndarray, b: np.ndarray, g: _Geom, fp: dict, nu: _Nuisance, size: int, an: Anatomy
) -> np.ndarray:
    """Attenuation map of a left lateral view (anterior on the image left, spine on the right)."""
    e = 3.0 / size
    dp = g.depth
    ant, post = _lat_bounds(g, b)
    body = _sramp(a - ant, 0.15) * _sramp(post - a, 0.1)
    arms = np.exp(-(((a + 0.1 * dp) / (0.6 * dp)) ** 2 + ((b + 0.85) / 0.25) ** 2))

    # lungs (both superimposed): apex, retrosternal space in front, posterior recess behind
    l_ant, l_post = ant + 0.05, post - 0.06
    lc, lw = 0.5 * (l_ant + l_post) + 0.08, 0.5 * (l_post - l_ant)
    top = g.apex + 0.45 * ((a - lc) / lw) ** 2
    xd = l_ant + 0.38 * (l_post - l_ant)
    span = np.maximum(l_post - xd, 0.1)
    walls = _sramp(a - l_ant, 0.08) * _sramp(l_post - a, 0.06) * _sramp(b - top, 0.08)
    shape = ((a - xd) / span) ** 2
    lung = (
        0.5
        * walls
        * (
            _sramp(g.dome_r + (g.dome_h + 0.08) * shape - b, 0.03)
            + _sramp(g.dome_l + (g.dome_h + 0.08) * shape - b, 0.03)
        )
    )

    # heart: tilted ellipse behind the lower sternum; its back bounds the retrocardiac space
    hr = dp * 0.42 * (g.ctr / 0.43)
    hb = g.heart_h * 1.25
    hc_b = g.dome_r - 0.45 * hb
    hc_a = float(_lat_bounds(g, hc_b)[0]) + 0.06 + 0.9 * hr + g.retrosternal
    heart = _sramp(1.0 - _tilted(a, b, hc_a, hc_b, 1.15 * hr, hb, -0.5), 0.25)
    heart_back = hc_a + 1.1 * hr
    air = lung * (1.0 - 0.8 * heart) * g.lucency

    hil_b = g.apex + 0.45 * (g.dome_r - g.apex)
    hil_a = 0.05 * dp
    r2h = (a - hil_a) ** 2 / 0.015 + (b - hil_b) ** 2 / 0.025
    marks = (0.7 * nu.vessels + 0.3 * nu.fine) * (0.35 + 0.65 * np.exp(-0.3 * r2h))
    marks *= lung * (1.0 - 0.8 * heart)
    hilum = np.exp(-r2h)

    # spine: vertebral bodies and discs, posterior elements; sternum; trachea; ribs; bubble
    sp0, sp1 = dp * 0.45 + 0.04 * b, dp * 0.80 + 0.04 * b
    ph = (b / 0.095) - an.rib_phase
    discs = np.clip(np.abs(ph - np.floor(ph) - 0.5) / 0.4, 0, 1) ** 6
    vert = _ramp(a - sp0, e) * _ramp(sp1 - a, e) * (1.0 - 0.6 * discs)
    post_el = _ramp(a - sp1, e) * _ramp(post - 0.07 - a, 0.03) * (0.6 + 0.4 * discs)
    sternum = _ramp(a - ant - 0.01, e) * _ramp(ant + 0.05 - a, e)
    sternum *= _ramp(b - g.apex - 0.2, 0.03) * _ramp(g.dome_r - 0.05 - b, 0.03)
    tr_a = -0.1 * dp + 0.12 * (b - hil_b)
    trachea = _ramp(0.03 - np.abs(a - tr_a), e) * _ramp(hil_b - 0.12 - b, 0.04)
    ribs = _bands((b - 0.5 * a) / (1.3 * an.rib_gap) - an.rib_phase, 0.25) * _ramp(a, 0.2)
    bubble = _disc(a, b, -0.3 * dp, g.dome_l + 0.11, 0.1, 0.05, 0.03)
    vert_fade = 1.0 - 0.3 * np.clip(b - hil_b, 0, 1)  # normal: the spine darkens downwards

    A = 1.9 * an.density * body - 1.45 * air + 0.6 * arms
    A += 0.3 * g.markings * marks + 0.2 * hilum
    A += 0.45 * vert * vert_fade + 0.25 * post_el + 0.3 * sternum
    A += 0.08 * ribs * lung - 0.45 * trachea - 0.5 * bubble

    for f, p in fp.items():
        if f == "Atelectasis":
            bb = g.apex + p["z"] * (_dome(g, p["side"]) - g.apex)
            ca = _y_pos(g, p["y"], bb)
            d = np.abs((b - bb) + 0.35 * (a - ca))
            band = _ramp(p["thick"] / 2 - d, e) * _ramp(0.25 - np.abs(a - ca), 0.06)
            A += band * (0.9 * air + 0.08) * (lung > 0.02)
        elif f == "Effusion":
            cp = max(_dome(g, s) for s in p["sides"]) + g.dome_h + 0.08
            rel = np.clip((a - l_ant) / (l_post - l_ant), 0, 1)
            lvl = cp - p["h"] * (1.1 if len(p["sides"]) == 2 else 0.85) - 0.14 * rel**3
            fluid = _ramp(b - lvl, 0.03) * _ramp(l_post + 0.02 - a, e) * _ramp(a - l_ant, e)
            A += fluid * (1.2 * air + 0.1 * (b < cp))
        elif f == "Infiltration":
            r = _finding_rng(an, f)
            _noise(r, size, 12)  # the PA texture; the lateral one follows it
            patch = np.clip(_noise(r, size, 12) + 0.2, 0, 1.3)
            bb = _z_level(g, p["z"], p["side"])
            ca = _y_pos(g, p["y"], bb)
            reg = np.exp(-(((a - ca) / (p["r"] * 1.1)) ** 2 + ((b - bb) / (p["r"] * 1.4)) ** 2))
            A += 0.8 * air * reg * patch
        elif f == "Mass":
            bb = g.apex + p["z"] * (g.dome_r - g.apex)
            ca = float(_lat_bounds(g, bb)[0]) + 0.03 + p["r"]
            A += (0.8 * air + 0.35) * _disc(a, b, ca, bb, p["r"], p["r"] * 1.15, 2 * e)
        elif f == "Nodule":
            for s, _xf, yf, zf, r in p["nodules"]:
                bb = _z_level(g, zf, s)
                A += 0.7 * _disc(a, b, _y_pos(g, yf, bb), bb, r, r, e)
        elif f == "Pneumonia":
            bb = _z_level(g, p["z"], p["side"])
            ca = _y_pos(g, p["y"], bb)
            r2 = ((a - ca) / (p["r"] / p["e"])) ** 2 + ((b - bb) / (p["r"] / p["e"] * 1.1)) ** 2
            A += 1.0 * air * np.exp(-(r2**2))
        elif f == "Consolidation":
            bb = g.apex + p["z"] * (g.dome_l + g.dome_h - g.apex)
            r2 = ((a - dp * 0.5) / (p["r"] * 1.1)) ** 2 + ((b - bb) / p["r"]) ** 2
            bron = _lines(_noise(_finding_rng(an, f), size, 14), 0.25)
            A += (1.3 * air + 0.25) * np.exp(-(r2**2)) * (1.0 - 0.35 * bron)
        elif f == "Edema":
            haze = np.exp(-(((a - hil_a) / 0.3) ** 2 + ((b - hil_b) / 0.26) ** 2))
            A += 0.7 * p["s"] * air * haze
        elif f == "Fibrosis":
            net = _lines(_noise(_finding_rng(an, f), size, 22), 0.45)
            zone = np.clip((b - hil_b) / (g.dome_r - hil_b), 0, 1)
            zone = zone * np.clip((a - l_ant) / (l_post - l_ant), 0, 1)
            A += (0.65 * p["s"] * net + 0.1) * air * zone
        elif f == "Pleural_Thickening":
            dome = _dome(g, p["sides"][0])
            zz = (b - g.apex) / (dome - g.apex)
            t = p["t"] * (1.3 if len(p["sides"]) == 2 else 1.0)
            band = _ramp(a - (l_post - t), e) * _ramp(l_post + 0.03 - a, e)
            band *= _ramp(zz - p["z0"], 0.05) * _ramp(p["z1"] - zz, 0.05)
            A += 0.5 * band
        elif f == "Hernia":
            cb = g.dome_r - 0.6 * p["r"]
            ca = 0.5 * (heart_back + dp * 0.45)
            disc = _disc(a, b, ca, cb, 1.1 * p["r"], p["r"], 2 * e)
            rim = _disc(a, b, ca, cb, 1.1 * p["r"] + 0.02, p["r"] + 0.02, e) - disc
            gas = _ramp(cb + p["level"] * p["r"] - b, e) * disc
            A += 0.45 * (disc - gas) - 0.4 * gas + 0.3 * rim
    return A


def render_view(
    rng: np.random.Generator, size: int, view: View, findings: frozenset[str], anatomy: Anatomy
) -> np.ndarray:
    """Render one view of a synthetic chest.

    The nuisance (position, rotation, exposure, noise, lung-marking texture) is drawn from
    ``rng`` in a fixed way, whatever the findings, so the same ``rng`` state with and without a
    finding gives images that differ only by that finding. Finding geometry comes from
    ``anatomy`` (its seeds), so both views of a study agree.

    Args:
        rng: generator for this image's nuisance.
        size: output side in pixels (square).
        view: ``PA`` or ``LATERAL``.
        findings: names from :data:`pipelines.labels.FINDINGS`.
        anatomy: the patient and study (:func:`sample_anatomy`, :func:`next_study`).

    Returns:
        float32 (size, size) in [0, 1]: bone and soft tissue bright, air dark.

    Raises:
        ValueError: an unknown view or finding, or a size under 16.
    """
    if view not in ("PA", "LATERAL"):
        raise ValueError(f"view must be 'PA' or 'LATERAL', got {view!r}")
    unknown = sorted(set(findings) - set(FINDINGS))
    if unknown:
        raise ValueError(f"unknown findings {unknown}; known: {', '.join(FINDINGS)}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    nu = _nuisance(rng, size)
    key = "frontal" if view == "PA" else "lateral"
    shown = frozenset(f for f in findings if VISIBILITY[f][key])
    fp_all = _finding_params(anatomy, frozenset(findings))
    g = _geometry(anatomy, {f: p for f, p in fp_all.items() if f in shown})
    fp = {f: fp_all[f] for f in FINDINGS if f in shown}
    a, b = _coords(size, nu)
    with np.errstate(divide="ignore", invalid="ignore"):
        if view == "PA":
            A = _render_pa(a, b, g, fp, nu, size, anatomy)
        else:
            A = _render_lateral(a, b, g, fp, nu, size, anatomy)
    A = np.maximum(A, 0.0)
    img = (1.0 - np.exp(-nu.gain * A)) ** nu.gamma
    img = img + nu.noise * nu.grain * np.sqrt(img + 0.05)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
