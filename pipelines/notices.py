"""The sentence every output of a model carries when its training data cannot back a real answer.

A model trained on the embedded synthetic dataset (generated images, not patients), or one whose
card names no training data source, must say so wherever it answers: the model card
(``notice``, written by the export stage) and every ``cxr predict`` output. The rule is here
once; the sources come from the prepared index (what ingest found each source to be).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SYNTHETIC_NOTICE = (
    "This model was trained on the embedded synthetic dataset (generated images, not patients): "
    "its outputs demonstrate the pipeline and mean nothing for a real patient. Not for clinical "
    "use."
)
NO_SOURCE_NOTICE = (
    "The model card names no training data source: nothing says what this model learned from. "
    "Not for clinical use."
)


def data_notice(sources: Mapping[str, Mapping[str, Any]] | None) -> str | None:
    """The notice for a model trained on ``sources`` (per source: ``synthetic``); None if none.

    Synthetic data anywhere in training gives :data:`SYNTHETIC_NOTICE`; no sources at all give
    :data:`NO_SOURCE_NOTICE`.
    """
    if not sources:
        return NO_SOURCE_NOTICE
    if any(s.get("synthetic") for s in sources.values()):
        return SYNTHETIC_NOTICE
    return None
