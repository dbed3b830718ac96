"""Score one study held in a local folder: choose its views, name its SR, run the model.

Everything is ``cxr predict``'s: the view choice and header policy
(:func:`pipelines.predict.find_study_views`), decoding and the exported model
(:func:`pipelines.predict.predict`, onnxruntime), the decisions at the card's thresholds, and
the SR (:func:`pipelines.dicom_out.write_study`, with the run's algorithm identification).
What this module adds is the order: the SR's SOP Instance UID (deterministic: the source UIDs
and the model version, :func:`pipelines.dicom_out.identity.derived_uid`) is known *before*
the model runs, so a study whose SR is already stored is never scored again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from pipelines.dicom_out import algorithm_from_card, write_study
from pipelines.dicom_out.identity import derived_uid, read_source
from pipelines.errors import PredictError
from pipelines.predict import decisions_from_card, find_study_views, predict, refused_studies
from pipelines.predict.studies import StudyInput
from pipelines.runners import read_model_card
from pipelines.scoring.reasons import (
    OUT_OF_DISTRIBUTION,
    UNGATED_MODEL,
    UNTRAINED_MODEL,
    Unscorable,
    reason_of,
)


@dataclass(frozen=True)
class Prepared:
    """A study ready to score: its chosen views and the UID its SR will have."""

    folder: Path
    study: StudyInput
    sr_uid: str


@dataclass
class Timings:
    """Seconds per step of one study (``search`` is the run's, shared)."""

    steps: dict[str, float] = field(default_factory=dict)

    def add(self, step: str, seconds: float) -> None:
        self.steps[step] = self.steps.get(step, 0.0) + seconds


class Scorer:
    """The exported model of ``model`` (its card beside it), loaded once per run."""

    def __init__(self, model: str | Path) -> None:
        self.model = Path(model)
        self.card = read_model_card(self.model)
        self.algorithm = algorithm_from_card(self.card, self.model)
        decisions = decisions_from_card(self.card)
        self.trained = bool(decisions.dual)
        self.gated = decisions.gate is not None
        #: 8 hex digits of the model version, as in the SR's file name
        self.model_key = hashlib.sha256(self.algorithm.version.encode()).hexdigest()[:8]

    def prepare(self, folder: str | Path) -> Prepared:
        """Choose the views of the study in ``folder`` and derive its SR's SOP Instance UID.

        Raises:
            Unscorable: predict refuses the study (its reason), no finding of the model is
                trained (:data:`~pipelines.scoring.reasons.UNTRAINED_MODEL`), or the model has
                no out-of-distribution gate (:data:`~pipelines.scoring.reasons.UNGATED_MODEL`).
        """
        if not self.trained:
            raise Unscorable(UNTRAINED_MODEL)
        if not self.gated:
            raise Unscorable(UNGATED_MODEL)
        folder = Path(folder)
        try:
            study = find_study_views(folder)
        except PredictError as exc:
            raise Unscorable(reason_of(exc)) from None
        sources = [read_source("frontal", study.frontal)]
        if study.lateral is not None:
            sources.append(read_source("lateral", study.lateral))
        return Prepared(folder, study, derived_uid(sources, self.algorithm, "sr"))

    def score(self, prepared: Prepared, out_dir: str | Path, timings: Timings) -> Path:
        """Run the model on the prepared study and write its SR into ``out_dir``.

        Raises:
            Unscorable: an image that cannot be decoded (``decode_failure``), or pixels the
                out-of-distribution gate refuses (``out_of_distribution``).
        """
        start = time.perf_counter()
        try:
            df = predict(prepared.folder, model=self.model)
        except PredictError as exc:
            raise Unscorable(reason_of(exc)) from None
        timings.add("decode+infer", time.perf_counter() - start)
        if refused_studies(df):
            raise Unscorable(OUT_OF_DISTRIBUTION)
        start = time.perf_counter()
        # the algorithm of the run (write_dicom_outputs would hash the model file per study);
        # pipelines.dicom_out keeps highdicom's UID-naming INFO log quiet itself
        (sr,) = write_study(df, self.algorithm, out_dir)
        timings.add("build SR", time.perf_counter() - start)
        written = pydicom.dcmread(sr, stop_before_pixels=True).SOPInstanceUID
        if written != prepared.sr_uid:  # the SR names itself as prepare said it would
            raise RuntimeError("the SR's SOP Instance UID is not the one derived before scoring")
        return sr
