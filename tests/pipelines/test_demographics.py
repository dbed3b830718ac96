"""Sex and age bands: source spellings, DICOM Age Strings, ages from dates, the pooled 90+."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.demographics import (
    AGE_BANDS,
    age_bands,
    band_of_years,
    dicom_age_band,
    sex_of,
    sexes,
    years_between,
    years_from_birth_year,
    years_of_age_string,
)


@pytest.mark.parametrize(
    ("value", "want"),
    [("F", "F"), ("m", "M"), ("Female", "F"), ("MALE", "M"), (" O ", "O"), ("Unknown", ""),
     ("", ""), (None, ""), (float("nan"), ""), ("X", "")],
)  # fmt: skip
def test_sex_of_every_spelling(value, want):
    assert sex_of(value) == want


def test_sexes_column_matches_one_by_one():
    values = pd.Series(["Female", "M", None, "Unknown", "o"])
    assert sexes(values).tolist() == ["F", "M", "", "", "O"]


@pytest.mark.parametrize(
    ("years", "band"),
    [(0, "0-9"), (9.9, "0-9"), (10, "10-19"), (58, "50-59"), (89, "80-89"), (89.99, "80-89"),
     (90, "90+"), (104, "90+"), (120, "90+"), (121, ""), (412, ""), (-1, ""), (None, ""),
     (float("nan"), "")],
)  # fmt: skip
def test_bands_pool_ages_over_89_and_refuse_impossible_ages(years, band):
    assert band_of_years(years) == band
    assert age_bands(pd.Series([years], dtype=object)).tolist() == [band]


def test_bands_of_text_numbers_and_blanks():
    assert age_bands(pd.Series(["68", " 87", "", "abc", "19.0"])).tolist() == [
        "60-69", "80-89", "", "", "10-19"
    ]  # fmt: skip
    assert len(AGE_BANDS) == 10 and AGE_BANDS[-1] == "90+"


@pytest.mark.parametrize(
    ("text", "years"),
    [("045Y", 45), ("006M", 0.5), ("010D", 10 / 365.25), ("052W", 52 * 7 / 365.25), ("58", 58),
     ("058Y", 58), ("", None), ("Y45", None), ("45 years", None)],
)  # fmt: skip
def test_dicom_age_strings(text, years):
    got = years_of_age_string(text)
    assert got == pytest.approx(years) if years is not None else got is None


def test_age_at_the_study_from_the_dates_counts_the_birthday():
    assert years_between("19700615", "20200614") == 49
    assert years_between("19700615", "20200615") == 50
    assert years_between("", "20200615") is None
    # PatientAge wins when valid; the dates fill in when it is absent or malformed
    assert dicom_age_band("045Y", "19000101", "20200101") == "40-49"
    assert dicom_age_band("", "19300101", "20200101") == "90+"
    assert dicom_age_band("bad", "19800101", "20200101") == "40-49"
    assert dicom_age_band(None, None, None) == ""


def test_padchest_birth_year_and_study_date():
    years = years_from_birth_year(pd.Series(["1966.0", "", "1927"]), pd.Series(["20171114"] * 3))
    assert years.iloc[0] == 51 and pd.isna(years.iloc[1]) and years.iloc[2] == 90
    assert age_bands(years).tolist() == ["50-59", "", "90+"]
    assert pd.isna(years_from_birth_year(pd.Series(["1950"]), pd.Series([""])).iloc[0])
