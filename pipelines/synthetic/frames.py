"""What a finding sees of a view: the normal anatomy of one image as maps to draw on.

:mod:`pipelines.synthetic.render` builds a frame per image; each finding of
:mod:`pipelines.synthetic.findings` reads it and adds its change to the view's attenuation map.
Coordinates ``a`` (across) and ``b`` (down) are image half-widths after the image's nuisance
(position, rotation, scale); maps are arrays over the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipelines.synthetic.anatomy import Anatomy, Geometry

View = Literal["PA", "LATERAL"]


@dataclass
class PAFrame:
    """A PA view (patient's right on the image left).

    Attributes:
        g: the geometry after the findings that reshape it.
        an: the patient and study.
        size: image side in pixels.
        a: across coordinate; ``b``: down coordinate.
        e: 1.5 px in half-width units (the width of a sharp edge).
        x: distance from the midline (``|a|``).
        right: the patient's right half (the image left).
        dome: level of the hemidiaphragm on each pixel's side.
        wall: half width of the lung fields at each level.
        med: the mediastinal edge (with the aortic knob on the left).
        top: the lung apex at each ``x``.
        lung: the lung fields (0..1).
        parench: lung tissue carrying markings (a pneumothorax pulls it off the wall).
        air: lung air (``lung`` minus the heart shadow, times the lucency).
        marks: lung-marking texture.
        hil_b: level of the hila.
        pleural: the visceral pleural line of a pneumothorax (``None`` without one).
    """

    g: Geometry
    an: Anatomy
    size: int
    a: np.ndarray
    b: np.ndarray
    e: float
    x: np.ndarray
    right: np.ndarray
    dome: np.ndarray
    wall: np.ndarray
    med: np.ndarray
    top: np.ndarray
    lung: np.ndarray
    parench: np.ndarray
    air: np.ndarray
    marks: np.ndarray
    hil_b: float
    pleural: np.ndarray | None = None

    def side_of(self, side: int) -> np.ndarray:
        """The half of the image on the patient's ``side`` (-1 right, 1 left)."""
        return self.right if side < 0 else ~self.right


@dataclass
class LateralFrame:
    """A left lateral view (anterior on the image left, spine on the right).

    Attributes:
        g: the geometry after the findings that reshape it.
        an: the patient and study.
        size: image side in pixels.
        a: front-to-back coordinate; ``b``: down coordinate.
        e: 1.5 px in half-width units (the width of a sharp edge).
        ant: the anterior body surface at each level; ``post``: the posterior one.
        l_ant: the front of the lungs; ``l_post``: their back.
        lung: both lungs superimposed (0..1).
        air: lung air (``lung`` minus the heart shadow, times the lucency).
        marks: lung-marking texture (already weighted by the lung air).
        hilum: the hilar shadow.
        hil_a: position of the hila; ``hil_b``: their level.
        heart_back: the back of the heart (the front of the retrocardiac space).
    """

    g: Geometry
    an: Anatomy
    size: int
    a: np.ndarray
    b: np.ndarray
    e: float
    ant: np.ndarray
    post: np.ndarray
    l_ant: np.ndarray
    l_post: np.ndarray
    lung: np.ndarray
    air: np.ndarray
    marks: np.ndarray
    hilum: np.ndarray
    hil_a: float
    hil_b: float
    heart_back: float
