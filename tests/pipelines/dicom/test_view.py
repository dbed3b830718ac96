"""Views: the canonical view map (scalar == vectorised) and the view of a DICOM header."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pipelines.dicom.header import HEADER_TAGS
from pipelines.dicom.view import (
    FRONTAL_VIEWS,
    VIEW_CODES,
    VIEW_TEXT_FIELDS,
    VIEWS,
    canonical_view,
    canonical_views,
    dicom_view,
    find_view,
)
from tests.conftest import ROOT
from tests.pipelines.sources.test_dicom import code_item

# --- the canonical view map -------------------------------------------------------------------

RAW_VIEWS: list[object] = [
    "PA",
    "pa",
    " PA ",
    "AP",
    "ap supine",
    "AP  SUPINE",
    "AP_horizontal",
    "Postero-Anterior",
    "L",
    "LL",
    "lat",
    "Lateral",
    "LEFT LATERAL",
    "LEFT  LATERAL",
    " left\tlateral ",
    "RIGHT   LATERAL",
    "Lateral-Right",
    "",
    "   ",
    "UNK",
    "COSTAL",
    "OBLIQUE",
    "PA LAT",
    None,
    np.nan,
    pd.NA,
    3,
]


@pytest.mark.parametrize(
    ("raw", "view"),
    [
        ("PA", "PA"),
        (" pa ", "PA"),
        ("AP  SUPINE", "AP"),
        ("AP_horizontal", "AP"),
        ("LEFT  LATERAL", "LATERAL"),
        (" left\tlateral ", "LATERAL"),
        ("l", "LATERAL"),
        ("", "OTHER"),
        ("COSTAL", "OTHER"),
        (None, "OTHER"),
        (np.nan, "OTHER"),
    ],
)
def test_canonical_view(raw: object, view: str) -> None:
    assert canonical_view(raw) == view


def test_scalar_and_vectorised_canonical_view_agree() -> None:
    """One normalisation: the vectorised map gives the scalar one's answer on every value."""
    raw = pd.Series(RAW_VIEWS, dtype=object, index=range(10, 10 + len(RAW_VIEWS)), name="v")
    vectorised = canonical_views(raw)
    assert vectorised.dtype == "string" and vectorised.name == "v"
    assert list(vectorised.index) == list(raw.index)
    assert list(vectorised) == [canonical_view(v) for v in RAW_VIEWS]
    assert set(vectorised) <= set(VIEWS)
    as_text = canonical_views(raw.astype("string"))  # a string column, as the readers pass
    assert list(as_text) == list(vectorised)
    assert canonical_views(pd.Series([], dtype="string")).empty


def test_view_sets() -> None:
    assert VIEWS == ("PA", "AP", "LATERAL", "OTHER") and FRONTAL_VIEWS == ("PA", "AP")


# --- the view of a DICOM header ---------------------------------------------------------------


def _view_of(**attrs: object) -> tuple[str, str]:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return dicom_view(ds)


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"ViewPosition": "PA"}, ("PA", "PA")),
        ({"ViewPosition": "AP"}, ("AP", "AP")),
        ({"ViewPosition": "LL"}, ("LATERAL", "LL")),
        ({"ViewPosition": "RL"}, ("LATERAL", "RL")),
        ({"ViewPosition": "LATERAL"}, ("LATERAL", "LATERAL")),
        ({"ViewPosition": "LLD", "SeriesDescription": "PA"}, ("OTHER", "LLD")),  # decubitus
        # ViewPosition wins over descriptions
        ({"ViewPosition": "AP", "SeriesDescription": "LATERAL"}, ("AP", "AP")),
        # an unknown ViewPosition falls through to the text, and is the OTHER fallback
        ({"ViewPosition": "XYZ", "ProtocolName": "Thorax p.a."}, ("PA", "p.a.")),
        ({"ViewPosition": "XYZ"}, ("OTHER", "XYZ")),
        ({"SeriesDescription": "CHEST LAT"}, ("LATERAL", "LAT")),
        ({"SeriesDescription": "Chest_PA"}, ("PA", "PA")),
        ({"SeriesDescription": "postero-anterior chest"}, ("PA", "postero-anterior")),
        ({"ProtocolName": "Thorax lateral."}, ("LATERAL", "lateral.")),
        ({"AcquisitionDeviceProcessingDescription": "CHEST, LL"}, ("LATERAL", "LL")),
        # the study's description says nothing about which image is which: never consulted
        ({"StudyDescription": "XR CHEST AP SUPINE"}, ("", "")),
        ({"StudyDescription": "CHEST PA"}, ("", "")),
        ({"StudyDescription": "CHEST LATERAL", "ProtocolName": "CHEST"}, ("", "")),
        ({"StudyDescription": "CHEST PA", "SeriesDescription": "LAT"}, ("LATERAL", "LAT")),
        ({"StudyDescription": "CHEST PA AND LAT", "SeriesDescription": "LAT"}, ("LATERAL", "LAT")),
        ({"SeriesDescription": "LEFT LATERAL DECUBITUS"}, ("OTHER", "DECUBITUS")),
        ({"SeriesDescription": "RAO oblique"}, ("OTHER", "RAO")),
        ({"SeriesDescription": "CHEST FRONTAL"}, ("OTHER", "FRONTAL")),
        # word boundaries: no view hidden inside other words
        ({"SeriesDescription": "LATERALITY PAPER APPLE ALL"}, ("", "")),
        ({}, ("", "")),
    ],
)
def test_dicom_view_order_and_text(attrs: dict, expected: tuple[str, str]) -> None:
    assert _view_of(**attrs) == expected


@pytest.mark.parametrize(
    ("code", "scheme", "view"),
    [
        ("272479007", "SCT", "PA"),
        ("399066004", "SCT", "PA"),
        ("R-10214", "SRT", "PA"),
        ("399348003", "SCT", "AP"),
        ("R-10206", "SRT", "AP"),
        ("399173006", "SCT", "LATERAL"),
        ("399198007", "SCT", "LATERAL"),
        ("R-10232", "SRT", "LATERAL"),
        ("R-10236", "SRT", "LATERAL"),
    ],
)
def test_view_code_sequence_codes(code: str, scheme: str, view: str) -> None:
    seq = Sequence([code_item(code, scheme, "")])
    assert _view_of(ViewCodeSequence=seq) == (view, f"{scheme}:{code}")
    assert VIEW_CODES[code] == view


def test_view_code_sequence_meaning_and_precedence() -> None:
    meaning_only = Sequence([code_item("99999", "99LOCAL", "postero-anterior")])
    assert _view_of(ViewCodeSequence=meaning_only) == ("PA", "postero-anterior")
    oblique = Sequence([code_item("399059000", "SCT", "postero-anterior oblique")])
    assert _view_of(ViewCodeSequence=oblique)[0] == "OTHER"
    # code sequence beats the descriptions
    ap = Sequence([code_item("399348003", "SCT", "antero-posterior")])
    assert _view_of(ViewCodeSequence=ap, SeriesDescription="LATERAL") == ("AP", "antero-posterior")


def test_find_view_says_why_there_is_none() -> None:
    ambiguous = Dataset()
    ambiguous.SeriesDescription = "CHEST PA AND LAT"
    found = find_view(ambiguous)
    assert (found.view, found.raw) == ("", "")
    assert "ambiguous" in found.note and "SeriesDescription names LATERAL and PA" in found.note
    assert "no ViewPosition" in find_view(Dataset()).note


def test_the_study_description_decides_no_image_view() -> None:
    """A study described "CHEST PA AND LATERAL" or "CHEST PA" holds images of either view."""
    assert "StudyDescription" not in VIEW_TEXT_FIELDS
    assert "StudyDescription" not in HEADER_TAGS  # not even read
    for description in ("CHEST PA", "CHEST PA AND LATERAL", "XR CHEST LAT"):
        ds = Dataset()
        ds.StudyDescription = description
        found = find_view(ds)
        assert (found.view, found.raw) == ("", "")
        assert "no ViewPosition" in found.note and "StudyDescription" not in found.note


def test_a_view_position_out_of_the_code_string_charset_is_not_echoed() -> None:
    ds = Dataset()
    with warnings.catch_warnings():  # pydicom warns that it is no code string: that is the point
        warnings.simplefilter("ignore")
        ds.ViewPosition = "Zqx^Secret"
    assert dicom_view(ds) == ("OTHER", "non-standard ViewPosition")


def test_the_view_map_and_the_choice_need_no_pydicom() -> None:
    """Table readers, the pair stage and PNG / JPEG decoding run without importing pydicom."""
    code = (
        "import sys\n"
        "import pipelines.dicom.choice, pipelines.dicom.view, pipelines.imaging, pipelines.pair\n"
        "import pipelines.sources.csv\n"
        "print('pydicom' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
