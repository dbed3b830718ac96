"""The patient-wise split: every patient in exactly one of train, val and test.

Patients, in an order that does not depend on the secret salt (:func:`patient_order`), are
shuffled with the split seed and cut by the fractions (rounded). Pins come first and put a
patient, with all its studies, in one split:

- official split files (:func:`official_pins`): either lists of image file names, one per split
  (NIH ``test_list.txt``; ``{split: list}``), or one table with a ``split`` column (MIMIC-CXR-JPG's
  ``mimic-cxr-2.0.0-split.csv.gz``; ``train``, ``validate``/``val``/``valid``/``validation``,
  ``test``). A list or table row names an image by its file name (``00000001_000.png``) or its
  manifest path, or, in a ``dicom_id`` column, by the file's stem (``<dicom_id>.jpg``). Each
  file must match at least one manifest image; one matching only part of its rows is logged;
- the manifest's optional ``official_split`` column (ingest fills it for inputs that are an
  official split, e.g. CheXpert's radiologist-labelled ``valid.csv``; blank = not pinned);
- a held-out source (:func:`holdout_pins`): all its patients are tested, and no free patient
  is (the test split is closed).

The free patients share the splits no pin uses (and that are not closed) in proportion to their
fractions (equally when those fractions are all 0); when the pins use every split, all splits.
So a pin to ``train`` takes its patients out of both train and val: NIH's
``train_val_list.txt`` given as ``train`` leaves val only the patients listed nowhere (none when
the whole set is ingested) -- pin ``test`` alone with ``test_list.txt``, and the rest (the
train_val list) is shared between train and val. No patient is ever in two splits
(:class:`~pipelines.errors.SplitLeakError`, naming both pins).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import SplitLeakError, UserError
from pipelines.schema import SPLITS

log = logging.getLogger(__name__)

# what a split column may say (case-insensitive) -> the split
SPLIT_NAMES: dict[str, str] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
}
SPLIT_COLUMN = "split"
STEM_COLUMN = "dicom_id"  # names an image by its file stem (MIMIC: <dicom_id>.jpg)
NAME_COLUMNS = ("path", "image", "Image Index", "ImageID", "file")  # a file name or a path
MANIFEST_SPLIT_COLUMN = "official_split"
_SPLIT_VALUES = "train, val (valid, validate, validation) or test"
_HINT = (
    "rows name images by file name (e.g. 00000001_000.png) or manifest path, or in a dicom_id "
    "column by file stem (<dicom_id>.jpg)"
)

OfficialSplit = dict[str, str] | str  # {split: list of image names} or one table with a split


def patient_order(manifest: pd.DataFrame) -> pd.Series:
    """Per patient key, a sort key that does not depend on the salt: source and first image path.

    The patient keys are salted hashes, so an order by key would change with the salt, and with
    it every split and metric; an image's source and path come from the data alone (two clones of
    the same data with different secret salts split the same images the same way).
    """
    key = manifest["source"].astype(str) + "\0" + manifest["path"].astype(str)
    return key.groupby(manifest["patient_key"].astype(str)).min()


def assign_splits(
    patients: pd.Series,
    fractions: dict[str, float],
    seed: int,
    pinned: dict[str, str] | None = None,
    order: pd.Series | None = None,
    closed: Collection[str] = (),
) -> pd.Series:
    """Assign each distinct patient key to a split.

    Args:
        patients: patient keys (duplicates allowed).
        fractions: split -> fraction of patients (sums to 1).
        seed: shuffling seed.
        pinned: patient key -> split, applied first (official lists); keys that are not among
            ``patients`` are ignored.
        order: patient key -> the key the patients are sorted by before the shuffle
            (:func:`patient_order`); default: the patient keys themselves.
        closed: splits that take pinned patients only (the test split of a held-out source).

    Returns:
        A Series indexed by patient key (sorted) with the split name.
    """
    keys = np.sort(patients.dropna().unique().astype(str))
    if order is not None:
        rank = order.reindex(keys).fillna("").astype(str).to_numpy()
        keys = keys[np.lexsort((keys, rank))]  # by the order, then (never needed) by key
    present = set(keys)
    pinned = {k: s for k, s in (pinned or {}).items() if k in present}
    out = pd.Series(pd.NA, index=pd.Index(keys, name="patient_key"), dtype="string")
    if pinned:
        out.loc[list(pinned)] = pd.Series(pinned, dtype="string")
    free = np.array([k for k in keys if k not in pinned])
    free = free[np.random.default_rng(seed).permutation(len(free))]
    # the remaining patients share the splits that are not pinned, in proportion
    usable = [s for s in SPLITS if s not in set(closed)] or list(SPLITS)
    open_splits = [s for s in usable if s not in set(pinned.values())] or usable
    weights = np.array([fractions[s] for s in open_splits], dtype=float)
    if not weights.sum():  # the open splits have no fraction (test: 1 with test pinned)
        weights = np.ones(len(open_splits))
    cuts = np.round(np.cumsum(weights / weights.sum()) * len(free)).astype(int)
    start = 0
    for split, stop in zip(open_splits, cuts, strict=True):
        out.loc[free[start:stop]] = split
        start = stop
    return out.sort_index()


@dataclass
class Pins:
    """Patient key -> pinned split, what pinned each patient, and the counts for the summary."""

    split: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifest_column: dict[str, Any] | None = None

    def add(self, keys: Iterable[str], split: str, origin: str) -> None:
        """Pin ``keys`` to ``split``; a patient pinned to another split is a leak."""
        keys = list(dict.fromkeys(keys))
        clash = [k for k in keys if self.split.get(k, split) != split]
        if clash:
            other = self.split[clash[0]]
            raise SplitLeakError(
                f"{origin}: {len(clash)} patient(s) pinned to '{split}' there are pinned to "
                f"'{other}' by {self.origin[clash[0]]}"
            )
        for key in keys:
            self.split.setdefault(key, split)
            self.origin.setdefault(key, origin)

    def per_split(self) -> dict[str, int]:
        """Pinned patients per split."""
        counts = pd.Series(list(self.split.values()), dtype=object).value_counts()
        return {s: int(counts.get(s, 0)) for s in SPLITS}


def canonical_splits(values: pd.Series, where: str) -> pd.Series:
    """``values`` as split names (:data:`SPLIT_NAMES`, case-insensitive).

    Raises:
        UserError: a value that is not a split, naming ``where``, the value and its rows.
    """
    text = values.astype(str).str.strip()
    out = text.str.lower().map(SPLIT_NAMES)
    bad = text[out.isna()]
    if len(bad):
        value, n = bad.value_counts().index[0], int(bad.value_counts().iloc[0])
        raise UserError(
            f"{where}: the split value '{value[:40]}' in {n} of {len(values)} rows is not "
            f"{_SPLIT_VALUES}"
        )
    return out.astype(str)


def official_files(spec: OfficialSplit) -> list[tuple[str | None, Path]]:
    """(split, list) per official list, or ``[(None, table)]``; checks the names and files.

    Raises:
        UserError: an unknown split name or a file that does not exist.
    """
    items = [(None, spec)] if isinstance(spec, str) else list(spec.items())
    out: list[tuple[str | None, Path]] = []
    for split, path in items:
        if split is not None and split not in SPLITS:
            raise UserError(
                f"pair.official_split: unknown split '{split}'; use {', '.join(SPLITS)}"
            )
        what = "official split table" if split is None else f"official '{split}' list"
        if not Path(path).is_file():
            raise UserError(f"{path}: {what} not found")
        out.append((split, Path(path)))
    return out


def official_pins(manifest: pd.DataFrame, spec: OfficialSplit | None) -> Pins:
    """The patients pinned by official split files and the manifest's ``official_split`` column.

    Args:
        manifest: the manifest (``path``, ``patient_key``, optionally ``official_split``).
        spec: ``{split: list file}`` (a ``.gz`` list too) or one table with a split column.

    Raises:
        UserError: a file is missing or unreadable, a split value is unknown, or a file matches
            no manifest image.
        SplitLeakError: a patient is pinned to two splits.
    """
    pins = Pins()
    names = _ImageNames.of(manifest)
    for split, path in official_files(spec) if spec else []:
        listed, by_stem = _read_table(path) if split is None else (_read_list(path, split), False)
        pins.files[str(path)] = _pin_listed(manifest, names, listed, by_stem, str(path), pins)
    column = manifest.get(MANIFEST_SPLIT_COLUMN)
    if column is not None and (column.fillna("").astype(str).str.strip() != "").any():
        pins.manifest_column = _pin_manifest_column(manifest, pins)
    return pins


@dataclass(frozen=True)
class _ImageNames:
    """Per manifest image: its path, file name and file stem."""

    path: pd.Series
    base: pd.Series
    stem: pd.Series

    @classmethod
    def of(cls, manifest: pd.DataFrame) -> _ImageNames:
        path = manifest["path"].astype(str).str.replace("\\", "/", regex=False)
        base = path.str.rsplit("/", n=1).str[-1]
        return cls(path, base, base.str.replace(r"\.[^.]*$", "", regex=True))


def _pin_listed(
    manifest: pd.DataFrame,
    names: _ImageNames,
    listed: pd.DataFrame,
    by_stem: bool,
    label: str,
    pins: Pins,
) -> dict[str, Any]:
    """Pin the patients of the images ``listed`` (``name``, ``split``) names; their counts."""
    lookup = dict(zip(listed["name"], listed["split"], strict=True))
    if by_stem:
        image_split = names.stem.map(lookup)
        known = set(names.stem)
    else:
        image_split = names.path.map(lookup).fillna(names.base.map(lookup))
        known = set(names.path) | set(names.base)
    matched = listed["name"].isin(known)
    if not matched.any():
        raise UserError(
            f"{label}: the official split file matched no manifest image (0 of {len(listed)} "
            f"rows matched); {_HINT}"
        )
    if not matched.all():
        log.warning(
            "%s: %d of %d official split rows match a manifest image (%d unmatched; normal when "
            "only part of the dataset was ingested)",
            label, int(matched.sum()), len(listed), int((~matched).sum()),
        )  # fmt: skip
    by_split: dict[str, dict[str, int]] = {}
    for split in sorted(set(listed["split"]), key=SPLITS.index):
        patients = manifest.loc[(image_split == split).to_numpy(), "patient_key"].astype(str)
        pins.add(patients, split, label)
        by_split[split] = {
            "rows": int((listed["split"] == split).sum()),
            "matched": int(matched[listed["split"] == split].sum()),
            "images_pinned": len(patients),
            "patients_pinned": int(patients.nunique()),
        }
    hit = manifest.loc[image_split.notna().to_numpy(), "patient_key"]
    return {
        "rows": len(listed),
        "matched": int(matched.sum()),
        "unmatched": int((~matched).sum()),
        "images_pinned": len(hit),
        "patients_pinned": int(hit.nunique()),
        "by_split": by_split,
    }


def _pin_manifest_column(manifest: pd.DataFrame, pins: Pins) -> dict[str, Any]:
    """Pin the patients of the images whose ``official_split`` is not blank; their counts."""
    raw = manifest[MANIFEST_SPLIT_COLUMN].fillna("").astype(str).str.strip()
    given = (raw != "").to_numpy()
    where = f"the manifest's {MANIFEST_SPLIT_COLUMN} column"
    split = canonical_splits(raw[given], where)
    keys = manifest.loc[given, "patient_key"].astype(str)
    by_split: dict[str, dict[str, int]] = {}
    for name in SPLITS:
        patients = keys[(split == name).to_numpy()]
        if len(patients):
            pins.add(patients, name, where)
            by_split[name] = {"images_pinned": len(patients), "patients_pinned": patients.nunique()}
    return {
        "images_pinned": int(given.sum()),
        "patients_pinned": int(keys.nunique()),
        "by_split": by_split,
    }


def holdout_pins(manifest: pd.DataFrame, source: str, pins: Pins) -> int:
    """Pin every patient with an image of ``source`` to test; returns how many.

    Raises:
        UserError: ``source`` is not in the manifest, or it is its only source.
        SplitLeakError: one of its patients is pinned to train or val (an official list).
    """
    present = sorted(manifest["source"].astype(str).unique())
    if source not in present:
        raise UserError(
            f"pair.holdout_source: the manifest has no source '{source}'; its sources are "
            f"{', '.join(present) or 'none'}"
        )
    if len(present) == 1:
        raise UserError(
            f"pair.holdout_source: '{source}' is the manifest's only source, so no source is "
            "left to train and validate on"
        )
    keys = manifest.loc[manifest["source"].astype(str) == source, "patient_key"].astype(str)
    pins.add(keys, "test", f"pair.holdout_source '{source}'")
    return int(keys.nunique())


def _read_list(path: Path, split: str) -> pd.DataFrame:
    """An official list (one image name a line; ``.gz`` too) as ``name``, ``split``."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as fh:  # type: ignore[operator]
            names = list(dict.fromkeys(ln.strip() for ln in fh if ln.strip()))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path}: cannot read the official '{split}' list ({type(exc).__name__})"
        ) from exc
    if not names:
        raise UserError(f"{path}: the official '{split}' list names no image")
    return pd.DataFrame({"name": names, "split": split})


def _read_table(path: Path) -> tuple[pd.DataFrame, bool]:
    """An official split table as ``name``, ``split``, and whether names are file stems."""
    header = _read_csv(path, nrows=0)
    columns = {str(c).strip().lower(): str(c) for c in header.columns}
    found = ", ".join(repr(str(c)) for c in header.columns[:20])
    if SPLIT_COLUMN not in columns:
        raise UserError(
            f"{path}: the official split table has no '{SPLIT_COLUMN}' column (found: {found}); "
            "give per-split lists of image names as SPLIT=LIST"
        )
    wanted = [STEM_COLUMN, *NAME_COLUMNS]
    key = next((columns[c.lower()] for c in wanted if c.lower() in columns), None)
    if key is None:
        raise UserError(
            f"{path}: the official split table has none of the columns {', '.join(wanted)} "
            f"naming its images (found: {found})"
        )
    df = _read_csv(path, usecols=[key, columns[SPLIT_COLUMN]])
    if df.empty:
        raise UserError(f"{path}: the official split table has a header but no rows")
    name = df[key].astype(str).str.strip().str.replace("\\", "/", regex=False)
    split = canonical_splits(df[columns[SPLIT_COLUMN]], str(path))
    listed = pd.DataFrame({"name": name, "split": split}).drop_duplicates()
    twice = listed["name"].duplicated(keep=False)
    if twice.any():
        raise SplitLeakError(
            f"{path}: {int(listed.loc[twice, 'name'].nunique())} image(s) are listed in two splits"
        )
    return listed.reset_index(drop=True), key == columns.get(STEM_COLUMN)


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", **kwargs)
    except pd.errors.EmptyDataError as exc:
        raise UserError(f"{path}: the official split table is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise UserError(
            f"{path}: cannot read the official split table as a CSV ({type(exc).__name__})"
        ) from exc


def check_no_leak(studies: pd.DataFrame) -> None:
    """Raise :class:`SplitLeakError` if any patient appears in two splits."""
    per_patient = studies.groupby("patient_key")["split"].nunique()
    if (per_patient > 1).any():
        raise SplitLeakError(f"{int((per_patient > 1).sum())} patients appear in two splits")
