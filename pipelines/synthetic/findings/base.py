"""What a finding is to the renderer: :class:`Finding`, and :func:`register` to add one.

A finding is one class: its label (``name``), on which views it shows (``frontal``,
``lateral``), whether it persists across a patient's studies (``chronic``), the parameters drawn
for a study (:meth:`Finding.draw`), how it reshapes the anatomy (:meth:`Finding.reshape`) and
what it adds to each view's attenuation map (:meth:`Finding.draw_pa`,
:meth:`Finding.draw_lateral`). Its random draws come from its own generator, seeded by the
study's :class:`~pipelines.synthetic.anatomy.Anatomy` and its place in
:data:`~pipelines.labels.FINDINGS`: the same for both views of a study, and for every study of a
patient when it is chronic. The drawing hooks change the map ``A`` in place.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pipelines.labels import FINDINGS
from pipelines.synthetic.anatomy import Anatomy, Geometry
from pipelines.synthetic.frames import LateralFrame, PAFrame, View
from pipelines.synthetic.style import EASY, Style

#: A finding's parameters for one study (the same on both views).
Params = dict[str, Any]

#: name -> the finding, in the order the classes were registered.
_REGISTERED: dict[str, Finding] = {}


class Finding:
    """One finding of the synthetic chest: subclass it, set the class attributes, register it.

    Attributes:
        name: its label in :data:`~pipelines.labels.FINDINGS`.
        frontal: it shows on the PA view; ``lateral``: on the lateral view.
        chronic: it tends to persist across a patient's studies (same geometry each time).
        state_order: where a chronic finding's state is drawn among a patient's chronic
            findings (ascending, then in :data:`~pipelines.labels.FINDINGS` order).
        reshape_order: where its :meth:`reshape` runs among a study's findings (ascending,
            then in :data:`~pipelines.labels.FINDINGS` order).

    Both orders are part of the dataset: changing one changes the files a seed gives.
    """

    name: ClassVar[str]
    frontal: ClassVar[bool] = True
    lateral: ClassVar[bool] = True
    chronic: ClassVar[bool] = False
    state_order: ClassVar[int] = 0
    reshape_order: ClassVar[int] = 0

    def changes_anatomy(self) -> bool:
        """Whether it reshapes the geometry or the PA frame, not only adds to the map."""
        cls = type(self)
        return cls.reshape is not Finding.reshape or cls.prepare_pa is not Finding.prepare_pa

    def shows_on(self, view: View) -> bool:
        """Whether the finding shows on ``view`` (``PA`` or ``LATERAL``)."""
        return self.frontal if view == "PA" else self.lateral

    def rng(self, anatomy: Anatomy) -> np.random.Generator:
        """A fresh generator of this finding's geometry and textures for this study."""
        seed = anatomy.patient_seed if self.chronic else anatomy.study_seed
        return np.random.default_rng([seed, FINDINGS.index(self.name)])

    def params(self, anatomy: Anatomy, style: Style = EASY) -> Params:
        """The finding's parameters for this study: 16 uniforms and a side, then :meth:`draw`.

        The last uniform sets the finding's ``strength`` in the style's conspicuity range
        (1 in the easy style); :meth:`soften` folds it into the shape where the finding is a
        shape, :meth:`contrast` into the drawing otherwise.

        Args:
            anatomy: the patient and study (its seeds).
            style: the dataset's knobs.

        Returns:
            The parameters (the same for both views of the study).
        """
        r = self.rng(anatomy)
        u = r.random(16).tolist()
        side = -1 if u[0] < 0.5 else 1  # -1: patient right (image left on PA)
        p = self.draw(u, side, r)
        p["strength"] = style.strength(u[15], self.name)
        return self.soften(p) if p["strength"] != 1.0 else p

    def soften(self, p: Params) -> Params:
        """Fold a strength under 1 into the shape (a smaller change); default: nothing."""
        return p

    def contrast(self, p: Params) -> float:
        """The gain on what the finding draws: its strength (a shape finding returns 1)."""
        return p.get("strength", 1.0)

    def draw(self, u: list[float], side: int, rng: np.random.Generator) -> Params:
        """The parameters from 16 uniforms ``u`` (``u[0]`` chose ``side``) and the generator.

        Args:
            u: 16 uniforms in [0, 1).
            side: -1 (patient right) or 1 (patient left).
            rng: the finding's generator, after ``u`` (for any further draws).
        """
        raise NotImplementedError

    def reshape(self, g: Geometry, p: Params) -> None:
        """Change the geometry in place (a finding that reshapes the anatomy overrides it)."""

    def prepare_pa(self, fr: PAFrame, p: Params) -> None:
        """Change the PA frame before the normal anatomy is composed (default: nothing)."""

    def draw_pa(self, A: np.ndarray, fr: PAFrame, p: Params) -> None:
        """Add the finding to the PA attenuation map ``A`` in place (default: nothing)."""

    def draw_lateral(self, A: np.ndarray, fr: LateralFrame, p: Params) -> None:
        """Add the finding to the lateral attenuation map ``A`` in place (default: nothing)."""


_VIEW_HOOKS = {"frontal": ("prepare_pa", "draw_pa"), "lateral": ("draw_lateral",)}


def register(cls: type[Finding]) -> type[Finding]:
    """Class decorator: add a finding to the registry.

    Args:
        cls: the finding class.

    Returns:
        ``cls`` unchanged.

    Raises:
        ValueError: the name is not a label, is registered twice, the finding shows on no view,
            or it draws on a view it is not visible on.
    """
    if cls.name not in FINDINGS:
        raise ValueError(f"{cls.__name__}: {cls.name!r} is not in pipelines.labels.FINDINGS")
    if not (cls.frontal or cls.lateral):
        raise ValueError(f"{cls.__name__}: shows on no view")
    for key, hooks in _VIEW_HOOKS.items():
        drawn = [h for h in hooks if getattr(cls, h) is not getattr(Finding, h)]
        if drawn and not getattr(cls, key):
            raise ValueError(f"{cls.__name__}: defines {drawn} but is not visible ({key})")
    if cls.name in _REGISTERED:
        raise ValueError(f"{cls.__name__}: {cls.name!r} is registered twice")
    _REGISTERED[cls.name] = cls()
    return cls


def registered() -> dict[str, Finding]:
    """Every registered finding by name (in registration order)."""
    return dict(_REGISTERED)
