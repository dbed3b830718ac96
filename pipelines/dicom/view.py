"""Views: the canonical view map of every source, and the view of a DICOM header.

Every view is one of :data:`VIEWS`. A table source's view text (a CSV cell) goes through
:func:`canonical_view` / :func:`canonical_views`, which share one normalisation (case ignored,
runs of whitespace collapsed, blanks and unknown text are ``OTHER``) and so agree on every input.

A DICOM header's view (:func:`dicom_view`), first decisive source wins: ``ViewPosition``; then
``ViewCodeSequence`` (code values of DICOM CID 4010, SNOMED CT and legacy SNOMED-RT, then the
CodeMeaning text); then the text of the series- and image-level SeriesDescription, ProtocolName
and AcquisitionDeviceProcessingDescription (word-boundary tokens). StudyDescription is never
consulted: it describes the whole study ("CHEST PA AND LATERAL", or "CHEST PA" for a study that
also holds a lateral), so it says nothing about which image is which. The raw value it reports
is the defined term, code meaning or matched token, never a whole free-text description (which
could carry PHI).

This module needs no pydicom (the table readers and the pair stage use it); the header helpers
are imported when a DICOM header is looked at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

View = Literal["PA", "AP", "LATERAL", "OTHER"]
VIEWS: tuple[str, ...] = ("PA", "AP", "LATERAL", "OTHER")
FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP")

# ---------------------------------------------------------------------------------------------
# The canonical view map (every source)
# ---------------------------------------------------------------------------------------------

_VIEW_ALIASES: dict[str, str] = {
    "PA": "PA",
    "POSTERO_ANTERIOR": "PA",
    "POSTEROANTERIOR": "PA",
    "POSTERO-ANTERIOR": "PA",
    "AP": "AP",
    "ANTERO_POSTERIOR": "AP",
    "ANTEROPOSTERIOR": "AP",
    "ANTERO-POSTERIOR": "AP",
    "AP_HORIZONTAL": "AP",  # PadChest: supine AP
    "AP SUPINE": "AP",
    "APS": "AP",
    "LL": "LATERAL",
    "RL": "LATERAL",
    "L": "LATERAL",
    "LAT": "LATERAL",
    "LATERAL": "LATERAL",
    "LEFT LATERAL": "LATERAL",
    "RIGHT LATERAL": "LATERAL",
    "LATERAL-LEFT": "LATERAL",
    "LATERAL-RIGHT": "LATERAL",
}


def _normalise(text: str) -> str:
    """Upper case, surrounding blanks dropped, every run of whitespace one space."""
    return " ".join(text.upper().split())


def canonical_view(raw: object) -> str:
    """Map a source's view text to ``PA``, ``AP``, ``LATERAL`` or ``OTHER``.

    Case, surrounding blanks and runs of inner whitespace are ignored; anything unrecognised
    (oblique, ``UNK``, blank, missing, ``COSTAL``) is ``OTHER``.
    """
    if raw is None or raw is pd.NA or (isinstance(raw, float) and raw != raw):  # NaN
        return "OTHER"
    return _VIEW_ALIASES.get(_normalise(str(raw)), "OTHER")


def canonical_views(raw: pd.Series) -> pd.Series:
    """Vectorised :func:`canonical_view` (each distinct value is mapped once), dtype ``string``."""
    text = raw.astype("string")
    mapping = {value: canonical_view(value) for value in text.dropna().unique()}
    return text.map(mapping).fillna("OTHER").astype("string")


# ---------------------------------------------------------------------------------------------
# The view of a DICOM header
# ---------------------------------------------------------------------------------------------

# ViewPosition (0018,5101) defined terms, PS3.3 C.8.11.5.1.1; decubitus / oblique are OTHER.
_VIEW_POSITION_TERMS: dict[str, str] = {
    "AP": "AP",
    "PA": "PA",
    "LL": "LATERAL",
    "RL": "LATERAL",
    "RLD": "OTHER",
    "LLD": "OTHER",
    "RLO": "OTHER",
    "LLO": "OTHER",
}

# ViewCodeSequence code values (DICOM CID 4010 "DX View"): SNOMED CT and legacy SNOMED-RT.
# Checked against PixelMed's ProjectionXRayAnatomy (D. Clunie) and DICOM CID 3466: SCT 399348003
# is antero-posterior (not PA); postero-anterior is SCT 272479007 (current) / 399066004 (retired).
VIEW_CODES: dict[str, str] = {
    "272479007": "PA",  # SCT postero-anterior projection
    "399066004": "PA",  # SCT postero-anterior (retired concept, older files)
    "R-10214": "PA",  # SRT postero-anterior
    "399348003": "AP",  # SCT antero-posterior
    "R-10206": "AP",  # SRT antero-posterior
    "399173006": "LATERAL",  # SCT left lateral
    "R-10236": "LATERAL",  # SRT left lateral
    "399198007": "LATERAL",  # SCT right lateral
    "R-10232": "LATERAL",  # SRT right lateral
    "399067008": "LATERAL",  # SCT lateral
    "R-102CD": "LATERAL",  # SRT lateral
}

#: The free-text fields that may decide an image's view, in order: series and image level only
#: (a study-level text, StudyDescription, describes every image of the study alike).
VIEW_TEXT_FIELDS: tuple[str, ...] = (
    "SeriesDescription",
    "ProtocolName",
    "AcquisitionDeviceProcessingDescription",
)

_B, _E = r"(?<![A-Z0-9])", r"(?![A-Z0-9])"
# Qualifiers that make a projection neither plain PA/AP nor lateral: decide OTHER for that field.
_OTHER_TEXT = re.compile(_B + r"(DECUB\w*|OBLIQUE|LORDOTIC|LLD|RLD|LLO|RLO|LAO|RAO|LPO|RPO)" + _E)
_SPECIFIC_TEXT: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("PA", re.compile(_B + r"(P\.?A\.?|POSTERO[-_ ]?ANTERIOR)" + _E)),
    ("AP", re.compile(_B + r"(A\.?P\.?|ANTERO[-_ ]?POSTERIOR)" + _E)),
    (
        "LATERAL",
        re.compile(
            _B + r"(LATERO[-_ ]?LATERAL|(?:LEFT|RIGHT)[-_ ]LATERAL|LAT(?:ERAL)?\.?|LL|RL)" + _E
        ),
    ),
)
_WEAK_TEXT = re.compile(_B + r"(FRONTAL)" + _E)


@dataclass(frozen=True)
class ViewFinding:
    """What :func:`find_view` found: the view, the raw value that decided it, and why not."""

    view: str  # PA, AP, LATERAL, OTHER, or '' when nothing was found
    raw: str
    note: str = ""  # why nothing was found (for the reader's no_view detail)


def _views_in_text(text: str) -> tuple[str, str, set[str]]:
    """(decision, token, specific views seen) for one free-text field (decision '' = none)."""
    upper = text.upper()
    if not upper:
        return "", "", set()
    other = _OTHER_TEXT.search(upper)
    if other:
        return "OTHER", text[other.start() : other.end()], set()
    found: dict[str, str] = {}
    for view, pattern in _SPECIFIC_TEXT:
        match = pattern.search(upper)
        if match:
            found[view] = text[match.start() : match.end()]
    if len(found) == 1:
        view, token = next(iter(found.items()))
        return view, token, set(found)
    if len(found) > 1:
        return "", "", set(found)
    weak = _WEAK_TEXT.search(upper)
    if weak:
        return "", text[weak.start() : weak.end()], set()
    return "", "", set()


def find_view(ds: Dataset) -> ViewFinding:
    """The view of a DICOM header, the raw value that decided it, or why there is none.

    The order is the module docstring's; :func:`dicom_view` is the short form.
    """
    from pipelines.dicom.header import CODE_STRING, text

    fallback = ""  # a non-decisive hint: gives OTHER if nothing better turns up
    position = text(ds, "ViewPosition")
    if position:
        upper = position.upper()
        if upper in _VIEW_POSITION_TERMS:
            return ViewFinding(_VIEW_POSITION_TERMS[upper], position)
        view = canonical_view(position)
        if view != "OTHER":
            return ViewFinding(view, position)
        fallback = position if CODE_STRING.fullmatch(upper) else "non-standard ViewPosition"

    for item in ds.get("ViewCodeSequence") or []:
        code = str(item.get("CodeValue", "") or "").strip()
        meaning = str(item.get("CodeMeaning", "") or "").strip()[:64]
        if code in VIEW_CODES:
            scheme = str(item.get("CodingSchemeDesignator", "") or "").strip()
            return ViewFinding(VIEW_CODES[code], meaning or f"{scheme}:{code}")
        decision, token, _ = _views_in_text(meaning)
        if decision:
            return ViewFinding(decision, meaning)
        fallback = fallback or meaning or token

    ambiguous: list[str] = []
    for keyword in VIEW_TEXT_FIELDS:
        decision, token, seen = _views_in_text(text(ds, keyword))
        if decision:
            return ViewFinding(decision, token)
        if len(seen) > 1:
            ambiguous.append(f"{keyword} names {' and '.join(sorted(seen))}")
        fallback = fallback or token
    if fallback:
        return ViewFinding("OTHER", fallback)
    if ambiguous:
        return ViewFinding("", "", "the view is ambiguous: " + "; ".join(ambiguous))
    return ViewFinding(
        "",
        "",
        "no ViewPosition, no ViewCodeSequence, and no PA/AP/lateral term in "
        + ", ".join(VIEW_TEXT_FIELDS),
    )


def dicom_view(ds: Dataset) -> tuple[str, str]:
    """The canonical view of a DICOM header and the raw value that decided it.

    Order: ``ViewPosition``; then ``ViewCodeSequence`` (code values for postero-anterior,
    antero-posterior, left/right lateral, then CodeMeaning); then the text of SeriesDescription,
    ProtocolName, AcquisitionDeviceProcessingDescription (never StudyDescription: a study-level
    text). Decubitus and oblique projections are ``OTHER``; a text field naming several views
    (``PA AND LAT``) decides nothing.

    Args:
        ds: a header, e.g. from :func:`pipelines.dicom.header.read_header`.

    Returns:
        ``(view, raw)``: view in ``PA``, ``AP``, ``LATERAL``, ``OTHER``; raw is the defined term,
        code meaning or matched token (never a whole description). ``("", "")`` when the header
        has no view information at all.
    """
    found = find_view(ds)
    return found.view, found.raw
