"""Who wrote the objects, about which images: the algorithm, the source headers, the UIDs.

- The **algorithm** (TID 4019): the model card's name, a version made of the package version and
  the hashes of the code, the training data and the model file (parameters: the full hashes).
- The **sources**: the headers of the images the model read (frontal, lateral), read without
  their pixels except where an overlay needs none of them.
- **UIDs** are deterministic (:func:`pydicom.uid.generate_uid` with ``entropy_srcs``): the source
  UIDs, the algorithm version and what the object is. A rerun for the same study and model writes
  objects with the same Series and SOP Instance UIDs, which a PACS stores as the same instances.
- **File names** carry the study's salted key (:func:`pipelines.keys.make_key`, the key ingest
  gives the study), never an identifier of the header.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from pipelines.keys import make_key

log = logging.getLogger(__name__)

#: Type 2 attributes of the Patient and General Study modules: empty when the source lacks them.
PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)

#: What the SR and SC name as their manufacturer and device.
MANUFACTURER = "cxr-dag"
#: Series numbers of the written series (the source series keep theirs).
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902


@contextmanager
def values_unshown() -> Iterator[None]:
    """Keep highdicom's and pydicom's warnings about header values (which quote the value, a
    patient name for one) out of the logs: they are counted, never shown. highdicom's INFO log
    names the source instances by their UIDs (identifiers): it is held at WARNING meanwhile."""
    quiet = logging.getLogger("highdicom")
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        quiet.setLevel(level)
    if caught:
        log.info("%d highdicom / pydicom warning(s) about header values (not shown)", len(caught))


@dataclass(frozen=True)
class Algorithm:
    """The model as DICOM names it: TID 4019 name, version and parameters."""

    name: str
    version: str
    parameters: tuple[str, ...]
    notice: str | None = None

    @property
    def uid(self) -> str:
        """A UID of this algorithm version (the observer device's UID)."""
        return generate_uid(entropy_srcs=["cxr-dag algorithm", self.name, self.version])


def _short(value: Any) -> str:
    return str(value)[:12] if value else "unknown"


def _model_sha256(card: dict[str, Any], model: Path) -> str:
    """The card's sha256 of the model file, else the file's own."""
    for entry in (card.get("files") or {}).values():
        if isinstance(entry, dict) and entry.get("file") == model.name and entry.get("sha256"):
            return str(entry["sha256"])
    h = hashlib.sha256()
    with model.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def algorithm_from_card(card: dict[str, Any], model: str | Path) -> Algorithm:
    """The algorithm identification of an exported model (the same for every study it reads).

    Version: ``<cxr_dag version> code <hash> data <hash> model <hash>`` (12 hex digits each:
    the code fingerprint or commit, the DVC md5 of the prepared data, the model file's sha256).
    """
    versions = card.get("versions") or {}
    code = versions.get("code") if isinstance(versions.get("code"), dict) else {}
    package = code.get("cxr_dag") or versions.get("cxr_dag") or "0"
    code_hash = code.get("sources_sha256") or versions.get("code_commit")
    dvc = (card.get("training_data") or {}).get("dvc") or {}
    data_hash = next((v for k, v in sorted(dvc.items()) if "prepared" in k), None)
    model_hash = _model_sha256(card, Path(model))
    version = (
        f"{package} code {_short(code_hash)} data {_short(data_hash)} model {_short(model_hash)}"
    )
    parameters = (
        f"model file sha256: {model_hash}",
        f"training data md5 (DVC): {data_hash or 'unknown'}",
    )
    name = str(card.get("name") or "cxr-dag")[:64]
    return Algorithm(name, version, parameters, card.get("notice"))


@dataclass(frozen=True)
class Source:
    """One source image: its view (``frontal`` / ``lateral``), path and header."""

    view: str
    path: Path
    header: Dataset


def _valid(element: Any) -> bool:
    """Whether a text value is valid for its VR (numbers are checked when pydicom parses them)."""
    if element.VR in ("SQ", "IS", "DS") or element.value is None:
        return True
    values = element.value if element.VM > 1 else [element.value]
    try:
        for value in values:
            if isinstance(value, str | pydicom.valuerep.PersonName):
                validate_value(element.VR, str(value), config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def clean_header(header: Dataset) -> Dataset:
    """The header as the written objects copy it: valid values only, type 2 attributes present.

    A value the source holds that is invalid for its VR (a real CR with PatientAge ``62``, not
    ``062Y``) would make every object that copies it invalid: an optional attribute is left
    out, a type 2 one (:data:`PATIENT_STUDY_TYPE2`) is copied empty. The keyword is logged,
    never the value. Absent type 2 attributes are added empty, as DICOM asks.
    """
    ds = Dataset(header)
    for element in list(ds):
        if _valid(element):
            continue
        keyword = element.keyword or str(element.tag)
        log.warning("source header: %s is invalid for its VR; not copied", keyword)
        del ds[element.tag]
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def read_source(view: str, path: str | Path) -> Source:
    """The header of a source image, without its pixels, cleaned (:func:`clean_header`)."""
    path = Path(path)
    with values_unshown():
        return Source(view, path, clean_header(pydicom.dcmread(path, stop_before_pixels=True)))


def derived_uid(sources: list[Source], algorithm: Algorithm, *what: str) -> str:
    """The deterministic UID of ``what`` (e.g. ``sr``, ``series``) for these sources and model."""
    uids = [str(s.header.get("SOPInstanceUID", "")) for s in sources]
    study = str(sources[0].header.get("StudyInstanceUID", ""))
    return generate_uid(entropy_srcs=["cxr-dag", study, *uids, algorithm.version, *what])


def study_key(source: Source) -> str:
    """The study's salted key for file names (no identifier of the header)."""
    return make_key("study", f"dicom:{source.header.get('StudyInstanceUID', '')}")
