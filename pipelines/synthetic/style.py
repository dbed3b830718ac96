"""How hard the synthetic dataset is: the knobs of the renderer and of the labels.

Real chest radiographs are not a set of high-contrast shapes with perfect labels. The
``realistic`` preset (the default) makes the dataset behave more like one:

- **conspicuity**: each finding of each study has a strength drawn from a range; a finding's
  change to the image is scaled by it (a faint opacity, a small effusion, a mildly large heart),
  so some findings are plain and some barely visible, as in practice;
- **nuisance**: more variation of position, rotation, exposure, noise and body habitus;
- **devices**: ECG electrodes and leads, central venous lines and chest drains, more often in
  studies with findings (sicker patients have more devices): the shortcut that real models are
  known to learn;
- **label noise** (:class:`LabelNoise`): text-mined report labels miss findings, mention some that
  are not there and leave others unmentioned (blank).

The ``easy`` preset is the original dataset (full strength, little nuisance, no devices, exact
labels): quick to learn, for tests that need a model to learn in one epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from pipelines.config import StageParams
from pipelines.labels import FINDINGS


@dataclass(frozen=True)
class Style:
    """The renderer's knobs (one per dataset; every image of it is drawn with them).

    Attributes:
        conspicuity: (low, high) range of a finding's strength (1: the full drawing).
        nuisance: scales the per-image variation of position, rotation, exposure and noise.
        devices: chance that a study without findings shows monitoring devices (with findings it
            is higher: see :mod:`pipelines.synthetic.devices`).
        scale: (finding, factor) pairs multiplying those findings' strengths (a planted
            subgroup effect, set per study: :class:`SubgroupEffect`).
    """

    conspicuity: tuple[float, float] = (1.0, 1.0)
    nuisance: float = 1.0
    devices: float = 0.0
    scale: tuple[tuple[str, float], ...] = ()

    def strength(self, u: float, finding: str | None = None) -> float:
        """The strength of a finding from a uniform ``u`` in [0, 1), times its ``scale``
        entry (a study of a planted subgroup effect draws that finding fainter)."""
        low, high = self.conspicuity
        return (low + (high - low) * u) * dict(self.scale).get(finding or "", 1.0)


#: The original dataset: full-strength findings, the original nuisance, no devices.
EASY = Style()


class SubgroupEffect(StageParams):
    """A planted subgroup gap (``synthesize.subgroup_effect``): in one group of patients a
    finding is drawn fainter, so a model's AUROC for it is lower there, as the published audits
    of chest X-ray models found for some groups. Off (null) by default; it exists so that a test
    can show the evaluation's subgroup analysis finds a gap that is really there.

    Attributes:
        finding: the finding drawn fainter.
        attribute: ``sex`` or ``age_band`` (:mod:`pipelines.demographics`).
        group: the attribute's value that gets the fainter drawing (``F``, ``60-69`` ...).
        strength: the factor on the finding's strength in that group (1: no effect).
    """

    finding: str
    attribute: Literal["sex", "age_band"] = "sex"
    group: str = "F"
    strength: float = Field(0.3, ge=0.0, le=1.0)

    @field_validator("finding")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in FINDINGS:
            raise ValueError(f"unknown finding {v!r}; known: {', '.join(FINDINGS)}")
        return v

    def applies(self, attributes: dict[str, str]) -> bool:
        """Whether a study with these ``sex`` / ``age_band`` values is in the planted group."""
        return attributes.get(self.attribute) == self.group


class LabelNoise(StageParams):
    """Report-style label errors, per study and finding (the pixels keep the truth).

    Attributes:
        missed: chance that a present finding is labelled absent (the commonest error of
            text-mined labels: the report does not mention it).
        spurious: chance that an absent finding is labelled present.
        unmentioned: chance that a label is left blank (not annotated: NaN downstream).
    """

    missed: float = Field(0.0, ge=0.0, le=1.0)
    spurious: float = Field(0.0, ge=0.0, le=1.0)
    unmentioned: float = Field(0.0, ge=0.0, le=1.0)


class Realism(StageParams):
    """The ``synthesize.realism`` section: the knobs of the ``realistic`` preset.

    Attributes:
        conspicuity: (low, high) range of each finding's strength.
        nuisance: scale of the per-image variation (1: the easy preset's).
        devices: chance of devices in a study without findings.
        label_noise: see :class:`LabelNoise`.
    """

    conspicuity: tuple[float, float] = (0.4, 1.0)
    nuisance: float = Field(1.6, ge=0.0, le=3.0)
    devices: float = Field(0.2, ge=0.0, le=1.0)
    label_noise: LabelNoise = LabelNoise(missed=0.12, spurious=0.015, unmentioned=0.04)

    @field_validator("conspicuity")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.5:
            raise ValueError(f"must be (low, high) with 0 < low <= high <= 1.5, got {list(v)}")
        return v

    def style(self) -> Style:
        """The renderer's :class:`Style`."""
        return Style(tuple(self.conspicuity), self.nuisance, self.devices)
