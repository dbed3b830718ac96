"""``cxr predict --explain DIR``: Grad-CAM overlays of each study's positive findings.

For every study of the predictions and every finding called positive (or each finding asked
for with ``--explain-finding``), one PNG per view: the view decoded as predict decodes it
(:func:`pipelines.imaging.prepare_image`, at ``size`` pixels) with the finding's heatmap
(:mod:`pipelines.explain`) coloured over it. Files are named ``study<N>_<finding>_<view>.png``
where ``N`` (001, 002 ...) is the study's position in the predictions output: no name, path or
identifier of the input appears. A finding the model was not trained on (the card's status) gets
no overlay.

Saliency needs gradients, so it runs on the eager PyTorch checkpoint (``models/best.pt`` by
default), not on the exported model: exported TorchScript / ONNX / int8 / mobile models do not
carry it. The checkpoint must be the one the exported model came from (same findings).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.errors import CheckpointError, PredictError
from pipelines.io import atomic_path
from pipelines.predict.decisions import Decisions
from pipelines.predict.studies import StudyInput

if TYPE_CHECKING:  # PyTorch is imported only when explaining: plain predict runs without it
    from pipelines.explain import Explainer

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "models/best.pt"
#: Side of the decoded views the overlays are drawn on.
OVERLAY_SIZE = 256


def load_explainer(checkpoint: str | Path, findings: Sequence[str]) -> Explainer:
    """The explainer of the eager checkpoint behind an exported model.

    Raises:
        PredictError: the checkpoint is missing or unusable, or its findings are not the card's.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise PredictError(
            f"{path}: checkpoint not found; --explain needs the trained PyTorch checkpoint "
            "(exported models carry no saliency): pass --checkpoint"
        )
    from pipelines.explain import Explainer

    try:
        explainer = Explainer.from_checkpoint(path)
    except CheckpointError as exc:
        raise PredictError(str(exc)) from None
    if explainer.findings != list(findings):
        raise PredictError(
            f"{path}: the checkpoint's findings differ from the model card's; explain with the "
            "checkpoint the model was exported from"
        )
    return explainer


def findings_to_explain(
    rows: pd.DataFrame, requested: Sequence[str] | None, decisions: Decisions
) -> list[str]:
    """The findings of one study's rows to explain: those asked for, or those called positive;
    never a finding that is not trained."""
    if requested:
        names = [f for f in requested if f in set(rows["finding"])]
    else:
        names = rows.loc[rows["positive"].fillna(False).astype(bool), "finding"].tolist()
    return [f for f in names if f not in decisions.not_trained]


#: One study's overlays per (finding, view): RGB uint8 (H, W, 3).
Overlays = dict[tuple[str, str], np.ndarray]


def study_overlays(
    study: StudyInput,
    findings: Sequence[str],
    explainer: Explainer,
    decode: Callable[[Path], np.ndarray],
    frontal_only: bool = False,
) -> Overlays:
    """The overlays of one study's ``findings``: each view with its heatmap coloured over it."""
    from pipelines.explain import overlay

    if not findings:
        return {}
    frontal = decode(study.frontal)
    lateral = decode(study.lateral) if study.lateral is not None and not frontal_only else None
    overlays: Overlays = {}
    for name, sal in explainer.explain(frontal, lateral, findings).items():
        views = (("frontal", frontal, sal.frontal), ("lateral", lateral, sal.lateral))
        for view, image, heat in views:
            if image is not None and heat is not None:
                overlays[(name, view)] = overlay(np.asarray(image), heat)
    return overlays


def write_overlays(overlays: Overlays, number: int, out_dir: Path) -> list[Path]:
    """The overlay PNGs of study ``number`` (see the module docstring). Returns the files."""
    from pipelines.explain import png_bytes

    written = []
    for (name, view), rgb in overlays.items():
        path = out_dir / f"study{number:03d}_{name}_{view}.png"
        with atomic_path(path) as tmp:
            tmp.write_bytes(png_bytes(rgb))
        written.append(path)
    return written
