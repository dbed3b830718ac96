"""Monitoring and treatment devices on the synthetic chest: the shortcuts real models learn.

Hospital radiographs carry ECG electrodes and their leads, central venous catheters and chest
drains, and sicker patients carry more of them: a model can learn "a drain means a pneumothorax"
instead of the pneumothorax. The synthetic dataset plants the same correlation (the chances
below), so the report's numbers include that shortcut as they would on real data, and a test of
a model on studies without devices can show it.

Which devices a study has is drawn from its seed (the same on both views); they are drawn last,
as dense material (metal, radio-opaque tubing) over everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from pipelines.synthetic.anatomy import Anatomy
from pipelines.synthetic.frames import LateralFrame, PAFrame
from pipelines.synthetic.shapes import disc, ramp, segment_dist
from pipelines.synthetic.style import Style

#: Findings that make a chest drain likely (it treats them) and those that make a central line
#: likely (a patient ill enough to need one).
DRAINED = frozenset({"Pneumothorax", "Effusion"})
LINED = frozenset({"Edema", "Pneumonia", "Consolidation", "Effusion", "Atelectasis"})
_DEVICE_SEED = 1_000_003  # keeps the device draws apart from the findings' generators


@dataclass(frozen=True)
class Devices:
    """The devices of one study and their placement (the same on both views)."""

    electrodes: tuple[tuple[float, float], ...] = ()  # (across, down) on the PA view
    line: float | None = None  # central line: where its tip sits (0 high .. 1 low)
    drain: int | None = None  # chest drain: the side (-1 patient right, 1 left)

    @property
    def any(self) -> bool:
        return bool(self.electrodes) or self.line is not None or self.drain is not None


def study_devices(anatomy: Anatomy, findings: frozenset[str], style: Style) -> Devices:
    """The devices of a study: drawn from its seed, more likely when it has findings.

    Args:
        anatomy: the patient and study (its study seed).
        findings: the study's (true) findings.
        style: the dataset's knobs (``devices``: the chance without findings; 0: none ever).
    """
    if style.devices <= 0:
        return Devices()
    rng = np.random.default_rng([anatomy.study_seed, _DEVICE_SEED])
    u = rng.random(4)
    sick = bool(findings)
    electrodes: tuple[tuple[float, float], ...] = ()
    if u[0] < min(1.0, style.devices + 0.35 * sick):
        n = int(rng.integers(3, 6))
        spots = [(-0.55, -0.62), (0.55, -0.62), (0.62, 0.05), (-0.62, 0.1), (0.3, 0.45)]
        electrodes = tuple(
            (x + 0.08 * float(rng.normal()), y + 0.06 * float(rng.normal())) for x, y in spots[:n]
        )
    line = (
        float(rng.random()) if u[1] < 0.5 * style.devices + 0.4 * bool(findings & LINED) else None
    )
    drain = None
    if u[2] < 0.02 + 0.55 * bool(findings & DRAINED):
        drain = -1 if u[3] < 0.5 else 1
    return Devices(electrodes, line, drain)


def _tube(a: np.ndarray, b: np.ndarray, points: list[tuple[float, float]], width: float, e: float):
    """A thin tube along a polyline (0..1 profile)."""
    dist = np.min([segment_dist(a, b, p, q) for p, q in pairwise(points)], 0)
    return ramp(width - dist, e)


def draw_devices_pa(A: np.ndarray, fr: PAFrame, dev: Devices) -> None:
    """Add the devices to a PA attenuation map ``A`` in place."""
    a, b, e, g = fr.a, fr.b, fr.e, fr.g
    for x, y in dev.electrodes:
        A += 1.1 * disc(a, b, x * (g.thorax_w + g.fat), y, 0.032, 0.032, e)
        A += 0.6 * _tube(a, b, [(x * (g.thorax_w + g.fat), y), (x * 1.4, y - 0.5)], 0.006, e)
    if dev.line is not None:  # right subclavian / jugular line down into the SVC
        tip = (-0.06, fr.hil_b + 0.05 + 0.15 * dev.line)
        points = [(-0.75, g.apex - 0.05), (-0.35, g.apex + 0.08), (-0.1, g.apex + 0.25), tip]
        A += 0.55 * _tube(a, b, points, 0.008, e)
    if dev.drain is not None:
        s = dev.drain
        base = g.dome(s) - 0.05
        points = [(s * 0.95, base + 0.15), (s * g.thorax_w * 0.92, base), (s * 0.35, g.apex + 0.3)]
        A += 0.7 * _tube(a, b, points, 0.014, e)


def draw_devices_lateral(A: np.ndarray, fr: LateralFrame, dev: Devices) -> None:
    """Add the devices to a lateral attenuation map ``A`` in place."""
    a, b, e, g = fr.a, fr.b, fr.e, fr.g
    front = float(np.median(fr.ant))
    for _x, y in dev.electrodes:  # on the anterior chest wall, seen edge-on
        A += 1.1 * disc(a, b, front - 0.02, y, 0.02, 0.035, e)
    if dev.line is not None:
        tip = (fr.hil_a - 0.08, fr.hil_b + 0.05 + 0.15 * dev.line)
        points = [(fr.hil_a - 0.25, g.apex - 0.1), (fr.hil_a - 0.15, g.apex + 0.2), tip]
        A += 0.55 * _tube(a, b, points, 0.008, e)
    if dev.drain is not None:
        back = g.depth * 0.75
        points = [
            (back, g.dome(dev.drain)),
            (back - 0.1, g.apex + 0.4),
            (back - 0.25, g.apex + 0.25),
        ]
        A += 0.7 * _tube(a, b, points, 0.014, e)
