"""``cxr score``: score new chest studies of a PACS (DICOMweb) or a folder with the exported model.

- :mod:`~pipelines.scoring.dicomweb`: QIDO-RS / WADO-RS / STOW-RS with retries, the credentials;
- :mod:`~pipelines.scoring.folder`: the same for a watched folder and an output folder;
- :mod:`~pipelines.scoring.scorer`: one study, through ``cxr predict``'s own functions;
- :mod:`~pipelines.scoring.run`: a study from the store to its stored SR, idempotently, and the
  run summary;
- :mod:`~pipelines.scoring.reasons`: why a study cannot be scored;
- :mod:`~pipelines.scoring.params`: the ``score`` section of params.yaml.

The Prefect flow that schedules it, keeps the watermark and publishes the summary is
``flows/score.py``; nothing here imports Prefect.
"""

from pipelines.scoring.dicomweb import DicomWebStore, with_retries
from pipelines.scoring.folder import FolderStore
from pipelines.scoring.params import ScoreParams
from pipelines.scoring.reasons import REASONS, UNTRAINED_MODEL, PacsError, Unscorable, reason_of
from pipelines.scoring.run import (
    ALREADY,
    RECORDED,
    SCORED,
    SKIPPED,
    Outcome,
    score_study,
    study_key,
    summarize,
)
from pipelines.scoring.scorer import Scorer

__all__ = [
    "ALREADY",
    "REASONS",
    "RECORDED",
    "SCORED",
    "SKIPPED",
    "UNTRAINED_MODEL",
    "DicomWebStore",
    "FolderStore",
    "Outcome",
    "PacsError",
    "ScoreParams",
    "Scorer",
    "Unscorable",
    "reason_of",
    "score_study",
    "study_key",
    "summarize",
    "with_retries",
]
