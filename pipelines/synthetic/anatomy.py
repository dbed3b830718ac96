"""The patient's chest shared by both views: :class:`Anatomy` and its derived :class:`Geometry`.

An :class:`Anatomy` is drawn once per patient (:func:`sample_anatomy`) and varied a little at
each study (:func:`next_study`). Its two seeds fix the geometry of the findings: chronic ones
follow the patient seed (the same at every study), the others the study seed (the same on both
views of a study), so a finding seen on both views is consistent.

:class:`Geometry` is the anatomy after the findings that reshape it (a big heart, a flat
diaphragm ...), with the positions that the normal anatomy and the findings both use: the lung
wall, the body surface on the lateral view, the level and position of a lesion.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipelines.synthetic.shapes import smooth


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

    Returns:
        The patient's anatomy.
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

    Returns:
        The anatomy at the new study (same patient seed).
    """
    u = (rng.random(3) * 2 - 1).tolist()
    return replace(
        anatomy,
        dome=anatomy.dome + 0.025 * u[0],
        ctr=anatomy.ctr + 0.01 * u[1],
        markings=anatomy.markings * (1 + 0.08 * u[2]),
        study_seed=int(rng.integers(0, 2**62)),
    )


@dataclass
class Geometry:
    """Anatomy after the findings that reshape it (used by both views).

    ``dome_r`` and ``dome_l`` are the levels of the right and left hemidiaphragm; ``lucency``
    scales the lung air, ``retrosternal`` widens the space in front of the heart (lateral).
    Sides are ``-1`` (patient right, image left on PA) and ``1`` (patient left).
    """

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

    @classmethod
    def of(cls, an: Anatomy) -> Geometry:
        """The normal geometry of an anatomy (before any finding reshapes it)."""
        return cls(
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

    def wall(self, b: Any) -> Any:
        """Half width of the lung fields (inside the ribs) at level ``b`` on the PA view."""
        return self.thorax_w * (1.0 - 0.38 * np.clip((-0.15 - b) / (-0.15 - self.apex), 0, 1) ** 2)

    def lat_bounds(self, b: Any) -> tuple[Any, Any]:
        """Anterior and posterior body surface at level ``b`` on the lateral view."""
        neck = smooth((-0.45 - np.asarray(b)) / 0.45)
        ant = -self.depth * (0.97 + 0.05 * b) + 0.3 * self.depth * neck
        post = self.depth * (1.02 - 0.10 * (b + 0.25) ** 2) - 0.35 * self.depth * neck
        return ant, post

    def dome(self, side: int) -> float:
        """Level of the hemidiaphragm on ``side``."""
        return self.dome_r if side < 0 else self.dome_l

    def z_level(self, z: float, side: int = -1) -> float:
        """Level ``b`` of a lesion at relative height ``z`` (0 apex .. 1 above the dome)."""
        return self.apex + 0.08 + z * (self.dome(side) - self.apex - 0.16)

    def x_pos(self, frac: float, side: int, bb: float) -> float:
        """PA position of a lesion ``frac`` of the way from mediastinum to wall."""
        return side * (self.med_w + (0.12 + 0.72 * frac) * (float(self.wall(bb)) - self.med_w))

    def y_pos(self, frac: float, bb: float) -> float:
        """Lateral position of a lesion ``frac`` of the way from front to back of the lung."""
        ant, post = self.lat_bounds(bb)
        a0, a1 = float(ant) + 0.05, float(post) - 0.06
        return a0 + (0.1 + 0.8 * frac) * (a1 - a0)
