"""Coarse, non-identifying patient attributes for subgroup evaluation: sex and a 10-year age band.

Every reader maps what its source says through here, so "sex" and "age band" mean the same in
every manifest, the studies table, the shards and the evaluation's subgroup tables:

- **sex**: ``F``, ``M``, ``O`` (other, as DICOM's PatientSex allows) or ``''`` (unknown). Source
  spellings: DICOM / NIH / PadChest ``F``, ``M``, ``O``; CheXpert ``Female``, ``Male``,
  ``Unknown``; anything else is unknown.
- **age band**: ``0-9``, ``10-19``, ..., ``80-89`` and ``90+`` (ages over 89 are pooled, as the
  HIPAA Safe Harbor method requires), or ``''`` (unknown). An age outside 0-120 years is a data
  error (NIH's Data_Entry has a few ages over 400) and counts as unknown.

Ages come in several forms: a number of years (NIH, CheXpert, a generic CSV), a DICOM Age String
(``045Y``, ``006M``, ``003W``, ``010D``), or the age at the study from a birth date (or year) and
the study date. Dates are used for that one subtraction and never kept: only the band leaves this
module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

SEXES: tuple[str, ...] = ("F", "M", "O")
UNKNOWN = ""
#: The bands in order; ages over 89 are pooled into the last.
AGE_BANDS: tuple[str, ...] = (*(f"{lo}-{lo + 9}" for lo in range(0, 90, 10)), "90+")
MAX_AGE = 120  # years; older is a data error

_SEX_WORDS = {"F": "F", "FEMALE": "F", "M": "M", "MALE": "M", "O": "O", "OTHER": "O"}
_AGE_STRING = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_UNIT_YEARS = {"Y": 1.0, "": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
_DATE = re.compile(r"^\s*(\d{4})(\d{2})(\d{2})")


def sex_of(value: object) -> str:
    """The canonical sex of one source value (``''`` when unknown)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return UNKNOWN
    return _SEX_WORDS.get(str(value).strip().upper(), UNKNOWN)


def sexes(values: pd.Series) -> pd.Series:
    """:func:`sex_of` over a column (fast: the distinct values are few)."""
    text = values.astype("string").fillna("").str.strip().str.upper()
    return text.map(lambda v: _SEX_WORDS.get(v, UNKNOWN)).astype("string")


def band_of_years(years: float | None) -> str:
    """The age band of an age in years (``''`` for None, NaN or outside 0-120)."""
    if years is None or not np.isfinite(years) or years < 0 or years > MAX_AGE:
        return UNKNOWN
    return AGE_BANDS[min(int(years) // 10, len(AGE_BANDS) - 1)]


def age_bands(years: pd.Series | Iterable[float]) -> pd.Series:
    """:func:`band_of_years` over a column of ages in years (text numbers allowed)."""
    num = pd.to_numeric(pd.Series(years).astype("string").str.strip(), errors="coerce")
    num = num.to_numpy(np.float64, na_value=np.nan)
    ok = np.isfinite(num) & (num >= 0) & (num <= MAX_AGE)
    idx = np.minimum(np.floor(np.where(ok, num, 0) / 10).astype(np.int64), len(AGE_BANDS) - 1)
    bands = np.where(ok, np.asarray(AGE_BANDS, dtype=object)[idx], UNKNOWN)
    return pd.Series(bands, dtype="string", index=getattr(years, "index", None))


def years_of_age_string(value: object) -> float | None:
    """Years of a DICOM Age String (``nnnD/W/M/Y``; a bare number is years), or None."""
    match = _AGE_STRING.match(str(value or ""))
    if not match:
        return None
    return int(match.group(1)) * _UNIT_YEARS[match.group(2).upper()]


def years_between(birth: object, study: object) -> float | None:
    """Whole years from a birth date to a study date (both DICOM ``YYYYMMDD``), or None."""
    b, s = _DATE.match(str(birth or "")), _DATE.match(str(study or ""))
    if not b or not s:
        return None
    (by, bm, bd), (sy, sm, sd) = (tuple(map(int, m.groups())) for m in (b, s))
    return float(sy - by - ((sm, sd) < (bm, bd)))


def dicom_age_band(age: object, birth: object, study_date: object) -> str:
    """The band of a DICOM image: PatientAge when valid, else birth date to study date."""
    years = years_of_age_string(age)
    if years is None:
        years = years_between(birth, study_date)
    return band_of_years(years)


def years_from_birth_year(birth_year: pd.Series, study_date: pd.Series) -> pd.Series:
    """Approximate age at the study (year of the study minus the year of birth; may be one
    year high) from a birth-year column and a ``YYYYMMDD`` study-date column."""
    born = pd.to_numeric(birth_year.astype("string").str.strip(), errors="coerce")
    year = pd.to_numeric(study_date.astype("string").str.strip().str[:4], errors="coerce")
    return (year - born).astype("Float64")
