"""The ``synthesize`` section of ``params.yaml``: :class:`SynthesizeParams`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from pipelines.config import StageParams
from pipelines.labels import FINDINGS
from pipelines.synthetic.style import EASY, LabelNoise, Realism, Style, SubgroupEffect


class SynthesizeParams(StageParams):
    """The ``synthesize`` section of ``params.yaml``.

    Attributes:
        out: output folder (``dicom/`` and ``labels.csv`` inside; replaced on each run).
        studies: studies in all.
        max_studies_per_patient: each patient has 1..this many studies.
        size: image side in pixels.
        prevalence: chance of each finding per study: one number, or a mapping finding ->
            chance (findings not named take the ``default`` entry, which is then required).
        lateral_missing: share of studies without a lateral view.
        seed: everything follows from it (same params + seed = byte-identical files).
        workers: processes (0 = all cores); the output does not depend on it.
        persistence: chance that a chronic finding of a patient's study repeats the patient's
            state (keeps the marginal prevalence; makes a patient-wise split matter).
        monochrome1: share of images stored as MONOCHROME1.
        voi_lut: share of images with a VOI LUT Sequence instead of a window.
        view_code: share of images that also carry a ViewCodeSequence.
        cr: share of studies stored as CR (the rest DX).
        preset: ``realistic`` (subtle findings, nuisance, devices, label noise: the ``realism``
            knobs) or ``easy`` (the original, fast-learning dataset;
            :mod:`pipelines.synthetic.style`).
        realism: the knobs of the realistic preset.
        subgroup_effect: a planted subgroup gap (:class:`SubgroupEffect`); None: none.
    """

    out: Path = Path("data/raw/synthetic")
    studies: int = Field(1200, ge=1)
    max_studies_per_patient: int = Field(3, ge=1)
    size: int = Field(256, ge=32, le=4096, alias="image_size")
    prevalence: float | dict[str, float] = 0.2
    lateral_missing: float = Field(0.1, ge=0.0, le=1.0)
    seed: int = 7
    workers: int = Field(0, ge=0)
    persistence: float = Field(0.6, ge=0.0, le=1.0)
    monochrome1: float = Field(0.3, ge=0.0, le=1.0)
    voi_lut: float = Field(0.15, ge=0.0, le=1.0)
    view_code: float = Field(0.3, ge=0.0, le=1.0)
    cr: float = Field(0.4, ge=0.0, le=1.0)
    preset: Literal["realistic", "easy"] = "realistic"
    realism: Realism = Realism()
    subgroup_effect: SubgroupEffect | None = None

    @field_validator("prevalence")
    @classmethod
    def _check_prevalence(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        values = v.values() if isinstance(v, dict) else [v]
        if any(not 0.0 <= p <= 1.0 for p in values):
            raise ValueError("prevalence values must lie in [0, 1]")
        if isinstance(v, dict):
            unknown = sorted(set(v) - set(FINDINGS) - {"default"})
            if unknown:
                raise ValueError(f"unknown findings {unknown}")
            if "default" not in v and set(v) != set(FINDINGS):
                raise ValueError("name every finding or give a 'default'")
        return v

    def style(self) -> Style:
        """The renderer's knobs: the ``realism`` section, or the easy preset's."""
        return EASY if self.preset == "easy" else self.realism.style()

    def label_noise(self) -> LabelNoise:
        """The label errors: the ``realism`` section's, none in the easy preset."""
        return LabelNoise() if self.preset == "easy" else self.realism.label_noise

    def prevalences(self) -> dict[str, float]:
        """Chance of each finding, in :data:`FINDINGS` order."""
        p = self.prevalence
        if isinstance(p, dict):
            return {f: float(p.get(f, p.get("default", 0.0))) for f in FINDINGS}
        return dict.fromkeys(FINDINGS, float(p))
