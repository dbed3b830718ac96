"""The ``train`` section of params.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipelines.config import StageParams
from pipelines.labels import FINDINGS
from pipelines.model import ModelParams
from pipelines.runtime import Precision

MIN_SIZE = 64  # DenseNet downsamples 32x; below 64 px a 1-sample batch-norm batch fails


class TrainParams(StageParams):
    """The ``train`` section of params.yaml (paths relative to the repo root)."""

    prepared: str = "data/prepared"
    augmented: str | None = "data/augmented"  # used when it holds an index.json
    out: str = "models"
    metrics: str = "metrics/train.json"
    live: str = "dvclive/train"
    tensorboard: str = "runs/train"
    # input px, resized on the fly; null = the prepared size
    size: int | None = Field(64, ge=MIN_SIZE, alias="image_size")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=2)
    lr: float = Field(2e-3, gt=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)  # cosine floor, as a share of lr
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    grad_clip: float = Field(1.0, ge=0)  # max grad L2 norm; 0 = off
    loss: Literal["focal", "bce"] = "focal"
    focal_alpha: float | None = 0.25
    focal_gamma: float = Field(2.0, ge=0)
    precision: Precision = "auto"
    channels_last: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = Field(0, ge=0)  # DataLoader workers per process
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0 = torch's default
    patience: int = Field(3, ge=0)  # epochs without improvement before stopping; 0 = never
    min_delta: float = Field(0.0, ge=0)
    deterministic: bool = True
    resume: bool = False
    progress: bool = True
    seed: int | None = None  # null = base.seed
    # apply the `augment` section's policy to every training batch on the device (fresh draws
    # each epoch; the augment stage's offline copies still join the train split when present)
    online_augment: bool = False
    # the head's findings (e.g. CheXpert's five competition findings); null = all 14
    findings: list[str] | None = None
    # a finding with fewer labelled training positives or negatives is not trained
    min_positives: int = Field(10, ge=1)
    min_negatives: int = Field(10, ge=1)
    model: ModelParams = ModelParams(view_dropout=0.2)

    @field_validator("findings")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            unknown = [f for f in v if f not in FINDINGS]
            if unknown or not v or len(set(v)) != len(v):
                raise ValueError(f"must be distinct names of {list(FINDINGS)}, got {v}")
        return v

    def head(self) -> tuple[str, ...]:
        """The findings the model outputs, in label-space order."""
        chosen = set(self.findings or FINDINGS)
        return tuple(f for f in FINDINGS if f in chosen)
