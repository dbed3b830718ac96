"""One reader per input layout, each turning raw inputs into manifest rows.

A reader is a function ``read(input, options) -> SourceResult``. It never raises for one bad
file or row: it records a :class:`~pipelines.io.Rejection` and goes on, so that
``result.n_inputs == len(result.manifest) + len(result.rejected)`` always holds. It raises
:class:`SourceError` only when the input as a whole cannot be read (a CSV missing a required
column, a folder that does not exist), naming the file and the reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.errors import SourceError
from pipelines.io import Rejection
from pipelines.labels import BlankPolicy, UncertainPolicy
from pipelines.limits import MAX_CSV_LINE_BYTES, MAX_IMAGE_PIXELS

SOURCES: tuple[str, ...] = ("dicom", "nih", "chexpert", "mimic", "padchest", "openi", "csv")


@dataclass(frozen=True)
class ReadOptions:
    """What every reader may use.

    Attributes:
        images: image root when ``input`` is a metadata file (default: the file's folder).
        labels: a label file (MIMIC chexpert/negbio CSV; DICOM folder: CSV keyed by study_uid).
        verify_files: open each image (header only) to check it exists and read its size.
        uncertain: policy for -1 (uncertain) labels.
        blank: what a blank CheXpert / MIMIC label (not mentioned in the report) becomes:
            ``zeros`` (negative, the default: see ``docs/label-mapping.md``), ``nan`` (not
            annotated) or ``nan_unless_no_finding`` (negative where ``No Finding`` is 1).
        workers: parallel workers for per-file work (0 = all cores; processes for DICOM
            headers, threads for image-header checks).
        salt: the secret used for keys (:func:`pipelines.keys.get_salt`).
        max_image_pixels: rows x columns above which an image is rejected (``too_large``)
            from its header (:mod:`pipelines.limits`).
        max_csv_line_bytes: the longest line of a metadata CSV (:mod:`pipelines.limits`).
    """

    images: Path | None = None
    labels: Path | None = None
    verify_files: bool = True
    uncertain: UncertainPolicy = "ignore"
    blank: BlankPolicy = "zeros"
    workers: int = 0
    salt: bytes = b""
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_csv_line_bytes: int = MAX_CSV_LINE_BYTES


@dataclass
class SourceResult:
    """Accepted manifest rows, rejected inputs, and the count of inputs seen.

    ``counts`` holds what a reader noticed about accepted rows beyond the manifest (PadChest:
    ``placeholder_labels``, ``unknown_terms``), for the ingest summary.
    """

    manifest: pd.DataFrame
    rejected: list[Rejection] = field(default_factory=list)
    n_inputs: int = 0
    data_root: str = "."
    counts: dict[str, int] = field(default_factory=dict)


Reader = Callable[[Path, ReadOptions], SourceResult]


def get_reader(source: str) -> Reader:
    """Return ``pipelines.sources.<source>.read``.

    Raises:
        SourceError: unknown source name.
    """
    if source not in SOURCES:
        raise SourceError(f"unknown source '{source}'; choose one of {', '.join(SOURCES)}")
    return importlib.import_module(f"pipelines.sources.{source}").read
