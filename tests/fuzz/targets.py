"""The fuzz targets: one per entry point that reads untrusted bytes, and the contract each checks.

The contract (issue 18): whatever the bytes, only the project's documented errors escape, each
naming the file and a reason (:class:`~pipelines.errors.DecodeError` with a reason of
:data:`pipelines.imaging.REASONS`, :class:`~pipelines.errors.SourceError`,
:class:`~pipelines.errors.ConfigError`, :class:`~pipelines.errors.PredictError`; the ingest DICOM
reader returns a rejection with a reason of :mod:`pipelines.dicom.reasons` and never raises);
what is accepted keeps its invariants (pixels finite in [0, 1], inputs = accepted + rejected).
Anything else that escapes is a finding, as is a :class:`ContractBreach` raised here. A hang and
an unbounded allocation are findings of the runner (:mod:`tests.fuzz.runner`: libFuzzer's
``-timeout``, an address-space limit); an allocation that failed and was then swallowed by a
catch-all shows as ``MemoryError`` in a detail, which is a breach too.

Each check takes the input's bytes, writes them to a file in a scratch folder (``CXR_FUZZ_TMP``
or a temporary folder) and returns a short outcome (``ok``, ``DecodeError:truncated`` ...),
which the regression tests compare with what they expect. The checks import the project lazily,
so that the runner can import the modules under test inside atheris's instrumentation.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.fuzz import seeds

SALT = b"fuzz-salt"
#: Splits a MIMIC input into the metadata CSV and the label CSV (no mark: a fixed label CSV).
LABELS_MARK = seeds.LABELS_MARK


class ContractBreach(AssertionError):
    """A documented error without its file or a known reason, or a result breaking an invariant."""


@dataclass(frozen=True)
class Target:
    """One fuzz target.

    Attributes:
        name: the target's name (``benchmarks/fuzz.py --targets``).
        check: runs one input through the entry point; returns the outcome, raises on a finding.
        seeds: the seed corpus, ``{file name: bytes}`` (built at run time: ``real-cxr`` files are
            read, never copied into the repository).
        instrument: the packages whose Python code atheris instruments for coverage.
        max_len: the largest input libFuzzer makes (bytes).
    """

    name: str
    check: Callable[[bytes], str]
    seeds: Callable[[], dict[str, bytes]]
    instrument: tuple[str, ...]
    max_len: int


# ---------------------------------------------------------------------------------------------
# scratch files


_SCRATCH: list[Path] = []


def scratch() -> Path:
    """The folder the checks write their inputs to (one per process)."""
    if not _SCRATCH:
        given = os.environ.get("CXR_FUZZ_TMP")
        if given:
            folder = Path(given)
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(tempfile.mkdtemp(prefix="cxr-fuzz-"))
            atexit.register(shutil.rmtree, folder, True)
        _SCRATCH.append(folder)
    return _SCRATCH[0]


def _write(relative: str, data: bytes) -> Path:
    path = scratch() / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise ContractBreach(what)


def _no_failed_allocation(text: str) -> None:
    _expect("MemoryError" not in text, f"an allocation failed (unbounded?): {text[:300]}")


def _names(message: str, *paths: Path) -> None:
    _expect(
        any(str(p) in message for p in paths),
        f"the error does not name the input ({', '.join(map(str, paths))}): {message[:300]}",
    )
    _no_failed_allocation(message)


# ---------------------------------------------------------------------------------------------
# images: the decoder of preprocess and cxr predict


def check_image(data: bytes) -> str:
    """``read_image`` (DICOM, PNG, JPEG by content) then ``to_square``, as preprocess does.

    The scaling options vary with the input's length, so that every input is one run.
    """
    from pipelines.errors import DecodeError
    from pipelines.imaging import REASONS, read_image, to_square

    path = _write("image", data)
    no_window = "minmax" if len(data) % 2 else "bits"
    bits = (None, 12, 16)[len(data) % 3]
    try:
        img = read_image(path, draft_size=16, no_window=no_window, bits=bits)
    except DecodeError as exc:
        _expect(exc.reason in REASONS, f"unknown reason {exc.reason!r}")
        _expect(exc.path == str(path), f"the error names {exc.path!r}, not the file")
        _names(str(exc), path)
        return f"DecodeError:{exc.reason}"
    _expect(
        isinstance(img, np.ndarray) and img.dtype == np.float32 and img.ndim == 2 and img.size > 0,
        f"decoded to {type(img).__name__} {getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}",
    )
    _expect(bool(np.isfinite(img).all()), "decoded pixels are not all finite")
    _expect(0.0 <= float(img.min()) <= float(img.max()) <= 1.0, "decoded pixels outside [0, 1]")
    square = to_square(img, 16)
    _expect(square.shape == (16, 16) and square.dtype == np.uint8, "to_square's output")
    return "ok"


# ---------------------------------------------------------------------------------------------
# the ingest DICOM header reader


def check_ingest_dicom(data: bytes) -> str:
    """The ingest reader's per-file check: a manifest row or a rejection, never an exception."""
    from pipelines.dicom import reasons
    from pipelines.dicom.view import VIEWS
    from pipelines.sources.dicom import _inspect_file

    known = {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}
    root = _write("ingest/image.dcm", data).parent
    outcome = _inspect_file(root, "image.dcm", SALT)
    _expect(outcome.path == "image.dcm", f"the outcome names {outcome.path!r}")
    if outcome.row is None:
        _expect(outcome.reason in known, f"unknown reason {outcome.reason!r}")
        _expect(bool(outcome.detail), "a rejection without a detail")
        _no_failed_allocation(outcome.detail)
        return f"reject:{outcome.reason}"
    row = outcome.row
    _expect(row["view"] in VIEWS, f"view {row['view']!r}")
    for key in ("width", "height"):
        _expect(isinstance(row[key], int) and row[key] > 0, f"{key} {row[key]!r}")
    return "accept"


# ---------------------------------------------------------------------------------------------
# metadata CSV readers


TABLE_NAMES: dict[str, str] = {
    "nih": "Data_Entry_2017.csv",
    "chexpert": "train.csv",
    "mimic": "mimic-cxr-2.0.0-metadata.csv",
    "padchest": "PADCHEST_chest_x_ray_images_labels_160K.csv",
    "openi": "openi.csv",
    "csv": "list.csv",
}


def check_table(source: str, data: bytes) -> str:
    """A table reader on the bytes (gzip-compressed when they start with gzip's magic).

    MIMIC: the bytes before :data:`LABELS_MARK` are the metadata CSV, those after the label CSV
    (no mark: a fixed valid label CSV).
    """
    from pipelines.errors import SourceError
    from pipelines.schema import MANIFEST_COLUMNS
    from pipelines.sources import ReadOptions, get_reader

    folder = scratch() / source
    labels = None
    if source == "mimic":
        data, mark, label_bytes = data.partition(LABELS_MARK)
        labels = _write(f"{source}/mimic-cxr-2.0.0-chexpert.csv", label_bytes if mark else b"")
        if not mark:
            labels.write_bytes(seeds.mimic_labels())
    gz = ".gz" if data[:2] == b"\x1f\x8b" else ""
    path = _write(f"{source}/{TABLE_NAMES[source]}{gz}", data)
    options = ReadOptions(verify_files=False, workers=1, salt=SALT, labels=labels)
    try:
        result = get_reader(source)(path, options)
    except SourceError as exc:
        _names(str(exc), folder)
        return "SourceError"
    n_in, n_ok, n_out = result.n_inputs, len(result.manifest), len(result.rejected)
    _expect(n_in == n_ok + n_out, f"{n_in} inputs, {n_ok} accepted + {n_out} rejected")
    _expect(set(MANIFEST_COLUMNS) <= set(result.manifest.columns), "manifest columns")
    _expect(all(r.reason and r.path for r in result.rejected), "a rejection without reason")
    return f"ok:{n_ok}+{n_out}"


def check_dicom_labels(data: bytes) -> str:
    """The DICOM reader's labels CSV (``study_uid`` + findings)."""
    from pipelines.errors import SourceError
    from pipelines.labels import FINDINGS
    from pipelines.sources.dicom import read_study_labels

    path = _write("dicom-labels/labels.csv", data)
    try:
        labels = read_study_labels(path, "ignore")
    except SourceError as exc:
        _names(str(exc), path)
        return "SourceError"
    _expect(set(labels.columns) <= set(FINDINGS), "a column that is not a finding")
    _expect(labels.index.is_unique, "a study twice")
    return f"ok:{len(labels)}"


# ---------------------------------------------------------------------------------------------
# the params loader


def check_params(data: bytes) -> str:
    """``load_params`` of the bytes, then every section parsed by its class."""
    from pipelines.config import load_params, parse_section
    from pipelines.errors import ConfigError
    from tests.params_sections import params_sections

    path = _write("params/params.yaml", data)
    try:
        params = load_params(path)
    except ConfigError as exc:
        _names(str(exc), path)
        return "ConfigError"
    failed = []
    for name, cls in params_sections(schedule=False):  # (schedule's class imports Prefect)
        try:
            parse_section(cls, name, params, source=str(path))
        except ConfigError as exc:
            _names(str(exc), path)
            failed.append(name)
    return "ok" if not failed else "ConfigError:" + ",".join(failed)


# ---------------------------------------------------------------------------------------------
# cxr predict's DICOM reader


def check_predict(data: bytes) -> str:
    """``cxr predict``'s study collection: a folder holding the file, and the file given alone.

    Bytes starting with ``frontal`` are also read as a CSV of studies (its errors name the CSV or
    an image it lists, in its folder).
    """
    from pipelines.errors import PredictError
    from pipelines.predict.studies import collect_studies, find_study_views

    path = _write("predict/study/image.dcm", data)
    outcomes = []
    calls: list[tuple[Callable[[], object], Path]] = [
        (lambda: find_study_views(path.parent), path.parent),
        (lambda: collect_studies([path]), path),
    ]
    if data[:7].lower() == b"frontal":
        table = _write("predict/studies.csv", data)
        calls.append((lambda: collect_studies(table), table.parent))
    for call, given in calls:
        try:
            call()
            outcomes.append("ok")
        except PredictError as exc:
            _names(str(exc), given)
            outcomes.append("PredictError")
    return ",".join(outcomes)


# ---------------------------------------------------------------------------------------------
# the registry

_IMAGE_CODE = ("pipelines", "pydicom", "PIL")
_TABLE_CODE = ("pipelines", "csv")


def _table(source: str) -> Target:
    return Target(
        f"csv_{source}",
        lambda data: check_table(source, data),
        lambda: seeds.table_seeds(source),
        _TABLE_CODE,
        16_384,
    )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("image", check_image, seeds.image_seeds, _IMAGE_CODE, 131_072),
        Target("ingest_dicom", check_ingest_dicom, seeds.dicom_seeds, _IMAGE_CODE, 131_072),
        *(_table(source) for source in TABLE_NAMES),
        Target(
            "csv_dicom_labels", check_dicom_labels, seeds.dicom_label_seeds, _TABLE_CODE, 16_384
        ),
        Target("params", check_params, seeds.params_seeds, ("pipelines",), 16_384),
        Target("predict", check_predict, seeds.predict_seeds, _IMAGE_CODE, 131_072),
    )
}
