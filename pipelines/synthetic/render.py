"""One view of a synthetic chest as a display image: :func:`render_view`.

Each chest is drawn from a simple projection model: an attenuation map ``A`` built from
analytic shapes (body, lungs, mediastinum, heart, diaphragm, ribs, clavicles, spine; on the
lateral view sternum, vertebrae, retrosternal and retrocardiac spaces, posterior costophrenic
recess) and turned into a display image ``1 - exp(-gain * A)`` (bone bright, air dark).

A view is rendered in five steps: the image's nuisance (position, rotation, exposure, noise,
lung-marking texture); the geometry, reshaped by the findings that change the anatomy; the
normal anatomy as a frame (:mod:`pipelines.synthetic.frames`); each finding shown on the view
adding its change to ``A`` (:mod:`pipelines.synthetic.findings`, in label order); the display
transform.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.labels import FINDINGS
from pipelines.synthetic.anatomy import Anatomy, Geometry
from pipelines.synthetic.devices import (
    Devices,
    draw_devices_lateral,
    draw_devices_pa,
    study_devices,
)
from pipelines.synthetic.findings import REGISTRY, Finding
from pipelines.synthetic.findings.base import Params
from pipelines.synthetic.frames import LateralFrame, PAFrame, View
from pipelines.synthetic.shapes import (
    bands,
    disc,
    grid,
    lines,
    noise,
    ramp,
    segment_dist,
    smooth,
    sramp,
    tilted,
)
from pipelines.synthetic.style import EASY, Style

#: The findings shown on a view, each with its parameters for the study.
Shown = list[tuple[Finding, Params]]


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


def _nuisance(rng: np.random.Generator, size: int, k: float = 1.0) -> _Nuisance:
    """Everything that varies per image; always the same draws, whatever the findings.

    ``k`` (the style's nuisance) widens every range around its middle.
    """
    u = (np.asarray(rng.random(7)) - 0.5).tolist()  # centred uniforms
    return _Nuisance(
        rot=math.radians(8.0 * k * u[0]),
        du=0.10 * k * u[1],
        dv=0.08 * k * u[2],
        scale=0.99 + 0.14 * k * u[3],
        gain=max(0.5, 1.125 + 0.35 * k * u[4]),
        gamma=max(0.5, 1.0 + 0.3 * k * u[5]),
        noise=max(0.002, 0.018 + 0.02 * k * u[6]),
        vessels=lines(noise(rng, size, 11), 0.32),
        fine=lines(noise(rng, size, 23), 0.25),
        grain=rng.standard_normal((size, size), dtype=np.float32),
    )


def _coords(size: int, nu: _Nuisance) -> tuple[np.ndarray, np.ndarray]:
    u, v = grid(size)
    c, s = math.cos(nu.rot), math.sin(nu.rot)
    uu, vv = u - nu.du, v - nu.dv
    k = 1.0 / nu.scale
    return (c * uu + s * vv) * k, (c * vv - s * uu) * k


def _geometry(anatomy: Anatomy, shown: Shown) -> Geometry:
    """The anatomy's geometry after the shown findings reshape it (in their reshape order)."""
    g = Geometry.of(anatomy)
    for finding, p in sorted(shown, key=lambda fp: fp[0].reshape_order):
        finding.reshape(g, p)
    return g


# --------------------------------------------------------------------------------------------
# PA
# --------------------------------------------------------------------------------------------
def _pa_frame(
    a: np.ndarray, b: np.ndarray, g: Geometry, nu: _Nuisance, size: int, an: Anatomy
) -> PAFrame:
    """The normal PA lungs, heart shadow and lung markings."""
    e = 3.0 / size  # 1.5 px in half-width units
    x = np.abs(a)
    right = a < 0
    tw = g.thorax_w
    dome = np.where(right, np.float32(g.dome_r), np.float32(g.dome_l))

    # lungs: lateral wall, mediastinum, rounded apex, diaphragm domes, sharp CP angles
    wall = g.wall(b)
    knob = 0.045 * np.exp(-(((b - g.apex - 0.38) / 0.07) ** 2)) * (~right)
    med = g.med_w + knob
    xc, hw = (0.62 * tw + g.med_w) / 2, (0.62 * tw - g.med_w) / 2
    top = g.apex + 0.22 * ((x - xc) / hw) ** 2
    xd, wd = g.med_w + 0.4 * (tw - g.med_w), 0.6 * (tw - g.med_w)
    floor = dome + g.dome_h * ((x - xd) / wd) ** 2
    lung = sramp(wall - x, 0.10) * sramp(x - med, 0.05) * sramp(b - top, 0.08)
    lung *= sramp(floor - b, 0.04)

    # heart: tilted ellipse on the diaphragm, two thirds to the patient's left
    width = g.ctr * 2 * tw
    rb, th = 0.85 * g.heart_h, 0.45
    ra = math.sqrt(max((width / 2) ** 2 - (rb * math.sin(th)) ** 2, 1e-4)) / math.cos(th)
    heart = sramp(1.0 - tilted(a, b, 0.14 * width, g.dome_r - 0.3 * g.heart_h, ra, rb, th), 0.25)
    air = lung * (1.0 - 0.85 * heart) * g.lucency

    hil_b = g.apex + 0.45 * (g.dome_r - g.apex)
    hilum_w = 0.35 + 0.65 * np.exp(-((x - med - 0.1) ** 2 / 0.08 + (b - hil_b) ** 2 / 0.12))
    marks = (0.7 * nu.vessels + 0.3 * nu.fine) * hilum_w * (1.0 - 0.85 * heart)
    return PAFrame(
        g=g,
        an=an,
        size=size,
        a=a,
        b=b,
        e=e,
        x=x,
        right=right,
        dome=dome,
        wall=wall,
        med=med,
        top=top,
        lung=lung,
        parench=lung,
        air=air,
        marks=marks,
        hil_b=hil_b,
    )


def _pa_normal(fr: PAFrame) -> np.ndarray:
    """Attenuation map of the normal PA chest: body, lungs, markings, hila, bones, air."""
    a, b, e, g, x, an = fr.a, fr.b, fr.e, fr.g, fr.x, fr.an
    tw = g.thorax_w
    # body: neck, shoulders, trunk; elliptical cross-section
    shoulder = tw + g.fat + 0.07
    half = 0.26 + (shoulder - 0.26) * smooth((b + 0.97) / 0.3)
    half = half - 0.07 * smooth((b + 0.6) / 0.4)
    body = np.sqrt(np.clip(1.0 - (a / half) ** 2, 0.0, 1.0))
    hila = np.exp(-((x - fr.med - 0.05) ** 2 / 0.004 + (b - fr.hil_b) ** 2 / 0.01))

    # bones: posterior and anterior ribs, clavicles, spine; trachea and gastric bubble (air)
    cage = ramp(fr.wall + 0.04 - x, 2 * e) * ramp(b - g.apex + 0.1, 0.04)
    cage *= ramp(fr.dome + g.dome_h + 0.06 - b, 0.04)
    rib_p = bands((b + 0.25 * x - 0.45 * x * x) / an.rib_gap - an.rib_phase, 0.45)
    rib_a = bands((b + 0.55 * x) / (1.3 * an.rib_gap) - an.rib_phase, 0.3)
    clav = ramp(0.028 - segment_dist(x, b, (0.06, g.apex + 0.17), (0.6, g.apex + 0.03)), e)
    spine = sramp(0.07 - x, 0.03)
    trachea = sramp(0.033 - x, 0.02) * ramp(fr.hil_b - 0.15 - b, 0.04)
    bubble = disc(a, b, 0.3 * tw + 0.05, g.dome_l + 0.1, 0.09, 0.05, 0.03)

    A = 1.35 * an.density * body - 1.05 * fr.air
    A += 0.3 * g.markings * fr.marks * fr.parench + 0.15 * hila
    A += (0.16 * rib_p + 0.06 * rib_a) * cage + 0.32 * clav
    A += 0.22 * spine - 0.35 * trachea - 0.45 * bubble
    return A


def _draw(
    A: np.ndarray,
    draw: Callable[[np.ndarray], None],
    gain: float,
    deltas: dict[str, np.ndarray] | None = None,
    name: str = "",
) -> None:
    """Add a finding's drawing to ``A``, scaled by ``gain`` (in place when it is 1); with
    ``deltas``, keep what it added there under ``name`` (``A`` is the same either way)."""
    if gain == 1.0:
        before = A.copy() if deltas is not None else None
        draw(A)
        if deltas is not None:
            deltas[name] = A - before
        return
    delta = np.zeros_like(A)
    draw(delta)
    delta *= gain
    A += delta
    if deltas is not None:
        deltas[name] = delta


def _render_pa(
    fr: PAFrame, shown: Shown, devices: Devices, deltas: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Attenuation map of a PA view (patient's right on the image left) with its findings
    (each finding's drawing kept in ``deltas`` when given)."""
    for finding, p in shown:
        finding.prepare_pa(fr, p)
    A = _pa_normal(fr)
    for finding, p in shown:
        draw = lambda m, f=finding, q=p: f.draw_pa(m, fr, q)  # noqa: E731
        _draw(A, draw, finding.contrast(p), deltas, finding.name)
    draw_devices_pa(A, fr, devices)
    return A


# --------------------------------------------------------------------------------------------
# Lateral
# --------------------------------------------------------------------------------------------
def _lateral_lungs(
    a: np.ndarray, b: np.ndarray, g: Geometry, ant: np.ndarray, post: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Front and back of the lungs and both lungs superimposed: apex, retrosternal space in
    front, posterior recess behind."""
    l_ant, l_post = ant + 0.05, post - 0.06
    lc, lw = 0.5 * (l_ant + l_post) + 0.08, 0.5 * (l_post - l_ant)
    top = g.apex + 0.45 * ((a - lc) / lw) ** 2
    xd = l_ant + 0.38 * (l_post - l_ant)
    span = np.maximum(l_post - xd, 0.1)
    walls = sramp(a - l_ant, 0.08) * sramp(l_post - a, 0.06) * sramp(b - top, 0.08)
    shape = ((a - xd) / span) ** 2
    lung = (
        0.5
        * walls
        * (
            sramp(g.dome_r + (g.dome_h + 0.08) * shape - b, 0.03)
            + sramp(g.dome_l + (g.dome_h + 0.08) * shape - b, 0.03)
        )
    )
    return l_ant, l_post, lung


def _lateral_frame(
    a: np.ndarray, b: np.ndarray, g: Geometry, nu: _Nuisance, size: int, an: Anatomy
) -> LateralFrame:
    """The normal lateral lungs, heart shadow, hilum and lung markings."""
    dp = g.depth
    ant, post = g.lat_bounds(b)
    l_ant, l_post, lung = _lateral_lungs(a, b, g, ant, post)

    # heart: tilted ellipse behind the lower sternum; its back bounds the retrocardiac space
    hr = dp * 0.42 * (g.ctr / 0.43)
    hb = g.heart_h * 1.25
    hc_b = g.dome_r - 0.45 * hb
    hc_a = float(g.lat_bounds(hc_b)[0]) + 0.06 + 0.9 * hr + g.retrosternal
    heart = sramp(1.0 - tilted(a, b, hc_a, hc_b, 1.15 * hr, hb, -0.5), 0.25)
    air = lung * (1.0 - 0.8 * heart) * g.lucency

    hil_b = g.apex + 0.45 * (g.dome_r - g.apex)
    hil_a = 0.05 * dp
    r2h = (a - hil_a) ** 2 / 0.015 + (b - hil_b) ** 2 / 0.025
    marks = (0.7 * nu.vessels + 0.3 * nu.fine) * (0.35 + 0.65 * np.exp(-0.3 * r2h))
    marks *= lung * (1.0 - 0.8 * heart)
    return LateralFrame(
        g=g,
        an=an,
        size=size,
        a=a,
        b=b,
        e=3.0 / size,
        ant=ant,
        post=post,
        l_ant=l_ant,
        l_post=l_post,
        lung=lung,
        air=air,
        marks=marks,
        hilum=np.exp(-r2h),
        hil_a=hil_a,
        hil_b=hil_b,
        heart_back=hc_a + 1.1 * hr,
    )


def _lateral_normal(fr: LateralFrame) -> np.ndarray:
    """Attenuation map of the normal lateral chest: body, arms, lungs, spine, sternum, air."""
    a, b, e, g, an = fr.a, fr.b, fr.e, fr.g, fr.an
    dp, ant, post, hil_b = g.depth, fr.ant, fr.post, fr.hil_b
    body = sramp(a - ant, 0.15) * sramp(post - a, 0.1)
    arms = np.exp(-(((a + 0.1 * dp) / (0.6 * dp)) ** 2 + ((b + 0.85) / 0.25) ** 2))

    # spine: vertebral bodies and discs, posterior elements; sternum; trachea; ribs; bubble
    sp0, sp1 = dp * 0.45 + 0.04 * b, dp * 0.80 + 0.04 * b
    ph = (b / 0.095) - an.rib_phase
    discs = np.clip(np.abs(ph - np.floor(ph) - 0.5) / 0.4, 0, 1) ** 6
    vert = ramp(a - sp0, e) * ramp(sp1 - a, e) * (1.0 - 0.6 * discs)
    post_el = ramp(a - sp1, e) * ramp(post - 0.07 - a, 0.03) * (0.6 + 0.4 * discs)
    sternum = ramp(a - ant - 0.01, e) * ramp(ant + 0.05 - a, e)
    sternum *= ramp(b - g.apex - 0.2, 0.03) * ramp(g.dome_r - 0.05 - b, 0.03)
    tr_a = -0.1 * dp + 0.12 * (b - hil_b)
    trachea = ramp(0.03 - np.abs(a - tr_a), e) * ramp(hil_b - 0.12 - b, 0.04)
    ribs = bands((b - 0.5 * a) / (1.3 * an.rib_gap) - an.rib_phase, 0.25) * ramp(a, 0.2)
    bubble = disc(a, b, -0.3 * dp, g.dome_l + 0.11, 0.1, 0.05, 0.03)
    vert_fade = 1.0 - 0.3 * np.clip(b - hil_b, 0, 1)  # normal: the spine darkens downwards

    A = 1.9 * an.density * body - 1.45 * fr.air + 0.6 * arms
    A += 0.3 * g.markings * fr.marks + 0.2 * fr.hilum
    A += 0.45 * vert * vert_fade + 0.25 * post_el + 0.3 * sternum
    A += 0.08 * ribs * fr.lung - 0.45 * trachea - 0.5 * bubble
    return A


def _render_lateral(
    fr: LateralFrame, shown: Shown, devices: Devices, deltas: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Attenuation map of a left lateral view (anterior on the image left) with its findings
    (each finding's drawing kept in ``deltas`` when given)."""
    A = _lateral_normal(fr)
    for finding, p in shown:
        draw = lambda m, f=finding, q=p: f.draw_lateral(m, fr, q)  # noqa: E731
        _draw(A, draw, finding.contrast(p), deltas, finding.name)
    draw_devices_lateral(A, fr, devices)
    return A


# --------------------------------------------------------------------------------------------
# The view
# --------------------------------------------------------------------------------------------
def _attenuation(
    view: View,
    coords: tuple[np.ndarray, np.ndarray],
    nu: _Nuisance,
    anatomy: Anatomy,
    shown: Shown,
    devices: Devices,
    deltas: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """The attenuation map of one view with the ``shown`` findings (before the display)."""
    a, b = coords
    size = a.shape[0]
    g = _geometry(anatomy, shown)
    with np.errstate(divide="ignore", invalid="ignore"):
        if view == "PA":
            return _render_pa(_pa_frame(a, b, g, nu, size, anatomy), shown, devices, deltas)
        return _render_lateral(_lateral_frame(a, b, g, nu, size, anatomy), shown, devices, deltas)


def _display(A: np.ndarray, nu: _Nuisance) -> np.ndarray:
    """The noise-free display image of an attenuation map: ``(1 - exp(-gain A)) ** gamma``."""
    return (1.0 - np.exp(-nu.gain * np.maximum(A, 0.0))) ** nu.gamma


#: A finding's region: the pixels where it changes the noise-free display image by at least
#: this share of its largest change on that image.
REGION_THRESHOLD = 0.1


def _regions(
    A: np.ndarray,
    nu: _Nuisance,
    shown: Shown,
    deltas: dict[str, np.ndarray],
    without: Callable[[Shown], np.ndarray],
) -> dict[str, np.ndarray]:
    """Each shown finding's region: where the image with it differs from the image without it.

    A finding that only adds to the map is taken out by subtracting its drawing (``deltas``);
    one that changes the anatomy (a bigger heart, a lower diaphragm) is re-rendered without it.
    """
    full = _display(A, nu)
    regions = {}
    for finding, _p in shown:
        if finding.changes_anatomy():
            A_without = without([fp for fp in shown if fp[0] is not finding])
        else:
            A_without = A - deltas[finding.name]
        change = np.abs(full - _display(A_without, nu))
        peak = float(change.max())
        regions[finding.name] = (
            change >= REGION_THRESHOLD * peak if peak > 0 else np.zeros(A.shape, dtype=bool)
        )
    return regions


def render_with_regions(
    rng: np.random.Generator,
    size: int,
    view: View,
    findings: frozenset[str],
    anatomy: Anatomy,
    style: Style = EASY,
    regions: bool = True,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render one view of a synthetic chest and where each of its findings was drawn.

    The nuisance (position, rotation, exposure, noise, lung-marking texture) is drawn from
    ``rng`` in a fixed way, whatever the findings, so the same ``rng`` state with and without a
    finding gives images that differ only by that finding. Finding geometry comes from
    ``anatomy`` (its seeds), so both views of a study agree.

    A finding's region is that difference: the pixels where the noise-free display image with
    all the study's findings differs from the one without that finding (devices and the other
    findings kept) by at least :data:`REGION_THRESHOLD` of the largest difference. Computing it
    draws nothing from ``rng``: the image is the same with or without ``regions``.

    Args:
        rng: generator for this image's nuisance.
        size: output side in pixels (square).
        view: ``PA`` or ``LATERAL``.
        findings: names from :data:`pipelines.labels.FINDINGS`.
        anatomy: the patient and study (``sample_anatomy``, ``next_study``).
        style: the dataset's knobs (:mod:`pipelines.synthetic.style`): findings' strengths,
            nuisance, devices.
        regions: compute the regions (False: an empty dict, the cost of the image alone).

    Returns:
        ``(image, regions)``: float32 (size, size) in [0, 1] (bone and soft tissue bright, air
        dark), and per finding shown on this view a boolean (size, size) mask.

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
    nu = _nuisance(rng, size, style.nuisance)
    shown = [
        (f, f.params(anatomy, style))
        for f in REGISTRY.values()
        if f.name in findings and f.shows_on(view)
    ]
    devices = study_devices(anatomy, findings, style)
    coords = _coords(size, nu)
    deltas: dict[str, np.ndarray] | None = {} if regions else None
    A = _attenuation(view, coords, nu, anatomy, shown, devices, deltas)
    masks = {}
    if deltas is not None:
        redo = lambda sh: _attenuation(view, coords, nu, anatomy, sh, devices)  # noqa: E731
        masks = _regions(A, nu, shown, deltas, redo)
    A = np.maximum(A, 0.0)
    img = (1.0 - np.exp(-nu.gain * A)) ** nu.gamma
    img = img + nu.noise * nu.grain * np.sqrt(img + 0.05)
    return np.clip(img, 0.0, 1.0).astype(np.float32), masks


def render_view(
    rng: np.random.Generator,
    size: int,
    view: View,
    findings: frozenset[str],
    anatomy: Anatomy,
    style: Style = EASY,
) -> np.ndarray:
    """Render one view of a synthetic chest: the image of :func:`render_with_regions`.

    Returns:
        float32 (size, size) in [0, 1]: bone and soft tissue bright, air dark.

    Raises:
        ValueError: an unknown view or finding, or a size under 16.
    """
    return render_with_regions(rng, size, view, findings, anatomy, style, regions=False)[0]
