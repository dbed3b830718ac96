"""The ``score`` section of params.yaml: the ``cxr-score`` flow's source, model and schedule."""

from __future__ import annotations

from pipelines.config import StageParams


class ScoreParams(StageParams):
    """What the ``cxr-score`` deployment scores, how it retries, and when it runs."""

    deployment: str = "score"
    cron: str = "*/15 * * * *"  # every 15 minutes
    timezone: str = "UTC"
    paused: bool = True  # the site turns it on once its DICOMweb root is configured
    dicomweb: str | None = None  # the DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web
    folder: str | None = None  # folder mode: the watched folder ...
    out: str | None = None  # ... and where the SRs go
    model: str = "models/export/model.onnx"
    lookback_days: int = 2  # StudyDate window before the watermark's day (see pipelines.scoring)
    attempts: int = 4  # tries of each DICOMweb call on a transient failure
    backoff_s: float = 2.0  # first wait between tries; doubled each time
