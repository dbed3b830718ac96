"""pair stage: the manifest -> one row per study (frontal + lateral) with a patient-wise split.

Rules, all deterministic and independent of row order:

- Views: ``PA``/``AP`` images are frontal candidates, ``LATERAL`` images lateral candidates;
  ``OTHER`` images are not used (listed in ``rejected.csv`` as ``other_view``).
- A study with several frontal images keeps one: PA before AP, then the largest image
  (width x height), then the first path (string order). Several laterals: the largest, then the
  first path. The others are listed as ``extra_frontal`` / ``extra_lateral``. The rule is
  :mod:`pipelines.dicom.choice`, which ``cxr predict`` uses too; the path, not the salted
  ``image_id``, breaks ties, so the choice does not depend on the secret salt.
- ``missing_view: keep_frontal_only`` keeps studies without a lateral (``has_lateral`` False);
  ``require_both`` drops them (``missing_lateral``). A study with no frontal view is never kept
  (``no_frontal``): the frontal view is the one every model input needs.
- Study labels: per finding, 1 if any image of the study says 1, else 0 if any says 0, else NaN.
- A study whose images carry two patient keys is dropped (``study_patient_conflict``).
- Split by patient (:mod:`pipelines.split`): patients, sorted by their source and first image
  path (never by their salted key, so the salt cannot change a split), are shuffled with
  ``base.seed`` and cut by the fractions (rounded). Pinned first: the patients of the images
  named by ``official_split`` (``{split: list}`` of image names, e.g. NIH ``test_list.txt``, or
  one table with a ``split`` column, e.g. MIMIC's ``mimic-cxr-2.0.0-split.csv.gz``), of the
  images whose manifest ``official_split`` is set, and, with ``holdout_source: NAME``, every
  patient of that source (to test; train and val then come from the other sources, in
  proportion to their fractions, and ``fractions.test`` is unused). No patient is ever in two
  splits (asserted).

The summary (``summary.json``) holds, besides the study counts per split:

- ``official_split``: ``files`` (per official file, as given: ``rows`` listed, ``matched``
  rows naming a manifest image, ``unmatched``, ``images_pinned``, ``patients_pinned`` and the
  same per split in ``by_split``); ``manifest_column`` (``images_pinned``,
  ``patients_pinned``, ``by_split``; null when the manifest has no ``official_split`` column);
  ``patients_pinned`` per split, all official pins together (the held-out source not counted);
- ``holdout_source`` (null or the name) and ``holdout_patients``;
- ``studies_by_source``: per split, the studies of each source.

Every manifest image is either used in a study or listed in ``rejected.csv`` with its reason.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import field_validator

from pipelines.config import BaseParams, StageParams, load_params, parse_section
from pipelines.dicom.choice import RANK, rank_images
from pipelines.dicom.view import FRONTAL_VIEWS
from pipelines.errors import UserError
from pipelines.io import write_metrics, write_parquet, write_rejected
from pipelines.labels import FINDINGS
from pipelines.schema import DEMOGRAPHIC_COLUMNS, SPLITS, STUDY_COLUMNS
from pipelines.split import (
    SPLIT_NAMES,
    OfficialSplit,
    assign_splits,
    check_no_leak,
    holdout_pins,
    official_files,
    official_pins,
    patient_order,
)
from pipelines.stage import run_stage

log = logging.getLogger(__name__)

PAIR_REJECTED_COLUMNS = ("source", "path", "reason", "detail", "image_id", "study_key")
DETAILS: dict[str, str] = {
    "study_patient_conflict": "the study's images carry different patient ids, so the study "
    "cannot be placed in one patient's split",
    "other_view": "the view is not PA, AP or lateral",
    "extra_frontal": "another frontal image of the study was chosen (PA before AP, then the "
    "larger image, then the first path)",
    "extra_lateral": "another lateral image of the study was chosen (the larger image, then the "
    "first path)",
    "no_frontal": "the study has no PA or AP image; a lateral view alone is not used",
    "missing_lateral": "the study has no lateral view and pair.missing_view is require_both",
}


class PairParams(StageParams):
    """The ``pair`` section of params.yaml."""

    manifest: str = "data/manifest/manifest.parquet"
    missing_view: Literal["keep_frontal_only", "require_both"] = "keep_frontal_only"
    fractions: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}
    official_split: dict[str, str] | str | None = None
    holdout_source: str | None = None
    out: str = "data/studies"

    @field_validator("official_split")
    @classmethod
    def _official_split(cls, v: OfficialSplit | None) -> OfficialSplit | None:
        unknown = sorted(set(v) - set(SPLITS)) if isinstance(v, dict) else []
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; the lists are keyed by {list(SPLITS)}")
        if isinstance(v, str) and not v.strip():
            raise ValueError("an empty path; give a table with a split column, or null")
        return v or None

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != set(SPLITS):
            raise ValueError(f"needs exactly the splits {list(SPLITS)}, got {sorted(v)}")
        if any(f < 0 for f in v.values()) or not np.isclose(sum(v.values()), 1.0):
            raise ValueError(f"must be >= 0 and sum to 1, got {v}")
        return v


def _study_labels(manifest: pd.DataFrame) -> pd.DataFrame:
    """Per study and finding: max over images, NaN only where no image is annotated."""
    return manifest.groupby("study_key", sort=True)[list(FINDINGS)].max()


def pair_studies(
    manifest: pd.DataFrame, params: PairParams, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Build one row per study and split by patient.

    Args:
        manifest: ingest output (:data:`pipelines.schema.MANIFEST_COLUMNS`).
        params: pair params.
        seed: the split seed (``base.seed``).

    Returns:
        (studies, rejected images, summary).

    Raises:
        UserError: an official split file is missing, unreadable or matches no image, or the
            held-out source is not in the manifest.
        SplitLeakError: the pins put one patient in two splits.
    """
    start = time.perf_counter()
    pins = official_pins(manifest, params.official_split)
    official = {"files": pins.files, "manifest_column": pins.manifest_column}
    official["patients_pinned"] = pins.per_split()
    n_held = holdout_pins(manifest, params.holdout_source, pins) if params.holdout_source else 0
    rejected = _Rejected()
    images = _drop_patient_conflicts(manifest, rejected)
    frontal, lateral, n_lateral_only = _choose_views(images, params, rejected)
    studies = _study_rows(frontal, lateral, images)
    closed = ("test",) if params.holdout_source else ()
    order = patient_order(manifest)
    split_of = assign_splits(
        studies["patient_key"], params.fractions, seed, pins.split, order, closed
    )
    studies["split"] = studies["patient_key"].map(split_of).astype("string")
    studies = studies.reset_index().loc[:, list(STUDY_COLUMNS)]
    studies.attrs = dict(manifest.attrs)  # where each source's images are, what it is
    check_no_leak(studies)

    rejected_df = rejected.frame()
    used = len(studies) + int(studies["has_lateral"].sum())
    if used + len(rejected_df) != len(manifest):
        raise RuntimeError(f"pair lost images: {len(manifest)} in, {used} used + rejected")
    summary = summarize_studies(studies, rejected_df, n_lateral_only=n_lateral_only)
    summary |= {
        "official_split": official,
        "holdout_source": params.holdout_source,
        "holdout_patients": n_held,
    }
    if pins.split:
        _warn_empty_splits(summary, params)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return studies, rejected_df, summary


def _warn_empty_splits(summary: dict[str, Any], params: PairParams) -> None:
    """Log the splits that should have patients but got none (called when there are pins)."""
    for split in SPLITS:
        wanted = params.fractions[split] > 0 or (split == "test" and params.holdout_source)
        if wanted and summary["studies"] and not summary["splits"][split]["studies"]:
            log.warning(
                "pair: the %s split has no study although it should (fraction %.2f): the pins "
                "(official_split, holdout_source) leave it no patient",
                split,
                params.fractions[split],
            )


class _Rejected:
    """The images pair does not use, each with its reason (:data:`DETAILS`)."""

    def __init__(self) -> None:
        self.parts: list[pd.DataFrame] = []

    def add(self, rows: pd.DataFrame, reason: str) -> None:
        if not len(rows):
            return
        part = rows.loc[:, ["source", "path", "image_id", "study_key"]].assign(
            reason=reason, detail=DETAILS[reason]
        )
        if reason == "other_view":  # name what the source said (a view term, never free text)
            raw = rows["view_raw"].astype(str).str.slice(0, 40)
            part["detail"] = DETAILS[reason] + ": '" + raw + "'"
        self.parts.append(part.loc[:, list(PAIR_REJECTED_COLUMNS)])

    def frame(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame(columns=[*PAIR_REJECTED_COLUMNS])
        return pd.concat(self.parts, ignore_index=True)


def _drop_patient_conflicts(manifest: pd.DataFrame, rejected: _Rejected) -> pd.DataFrame:
    """The images of studies whose images agree on the patient (the others are unusable)."""
    n_pat = manifest.groupby("study_key")["patient_key"].nunique()
    conflict = manifest["study_key"].isin(n_pat.index[n_pat > 1])
    rejected.add(manifest[conflict], "study_patient_conflict")
    return manifest[~conflict]


def _choose_views(
    images: pd.DataFrame, params: PairParams, rejected: _Rejected
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The chosen frontal and lateral image per study (indexed by study key), and how many
    studies had a lateral view only."""
    rejected.add(images[images["view"] == "OTHER"], "other_view")
    frontal = rank_images(images[images["view"].isin(FRONTAL_VIEWS)], frontal=True)
    lateral = rank_images(images[images["view"] == "LATERAL"], frontal=False)
    rejected.add(frontal[frontal[RANK] > 0], "extra_frontal")
    rejected.add(lateral[lateral[RANK] > 0], "extra_lateral")
    frontal = frontal[frontal[RANK] == 0].set_index("study_key")
    lateral = lateral[lateral[RANK] == 0].set_index("study_key")

    lateral_only = lateral.index.difference(frontal.index)
    rejected.add(lateral.loc[lateral_only].reset_index(), "no_frontal")
    lateral = lateral.drop(index=lateral_only)
    if params.missing_view == "require_both":
        missing = frontal.index.difference(lateral.index)
        rejected.add(frontal.loc[missing].reset_index(), "missing_lateral")
        frontal = frontal.drop(index=missing)
    return frontal, lateral, len(lateral_only)


def _demographic(frontal: pd.DataFrame, column: str) -> pd.Series:
    """A subgroup attribute of each study (its frontal image's row; '' for a manifest written
    before the attribute existed)."""
    if column not in frontal:
        return pd.Series("", index=frontal.index, dtype="string")
    return frontal[column].fillna("").astype("string")


def _study_rows(frontal: pd.DataFrame, lateral: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """One row per study (indexed by study key, sorted): its images and its labels."""
    studies = pd.DataFrame(
        {
            "patient_key": frontal["patient_key"],
            "source": frontal["source"],
            "frontal_id": frontal["image_id"],
            "frontal_path": frontal["path"],
            "frontal_view": frontal["view"],
            "frontal_bits": frontal["bits"],
            **{c: _demographic(frontal, c) for c in DEMOGRAPHIC_COLUMNS},
        }
    ).sort_index()
    studies.index.name = "study_key"
    lat = lateral.reindex(studies.index)
    studies["lateral_id"] = lat["image_id"].fillna("").astype("string")
    studies["lateral_path"] = lat["path"].fillna("").astype("string")
    studies["lateral_bits"] = lat["bits"].fillna(0).astype("int64")
    studies["has_lateral"] = studies["lateral_id"] != ""
    return studies.join(_study_labels(images).astype("float32"), how="left")


def summarize_studies(
    studies: pd.DataFrame, rejected: pd.DataFrame, n_lateral_only: int
) -> dict[str, Any]:
    """Study counts overall and per split, with positives per finding."""
    splits = {}
    for split in SPLITS:
        part = studies[studies["split"] == split]
        splits[split] = {
            "studies": len(part),
            "patients": int(part["patient_key"].nunique()),
            "dual_view": int(part["has_lateral"].sum()),
            "positives": {f: int((part[f] == 1).sum()) for f in FINDINGS},
        }
    by_source = studies.groupby(["split", "source"]).size()
    return {
        "studies": len(studies),
        "dual_view": int(studies["has_lateral"].sum()),
        "frontal_only": int((~studies["has_lateral"]).sum()),
        "lateral_only": n_lateral_only,
        "images_unused": {str(k): int(n) for k, n in rejected["reason"].value_counts().items()},
        "splits": splits,
        "studies_by_source": {
            split: {str(src): int(n) for (s, src), n in by_source.items() if s == split}
            for split in SPLITS
        },
    }


def official_split_option(items: list[str]) -> OfficialSplit | None:
    """``cxr pair --official-split`` values -> ``pair.official_split``.

    Each item is ``SPLIT=LIST`` (``test=test_list.txt``; ``val``'s aliases ``valid``,
    ``validate``, ``validation`` too), giving ``{split: list}``, or a bare ``FILE``: one table
    with a split column. An item whose text before ``=`` is no split name is a ``FILE``.

    Raises:
        UserError: both forms mixed, two tables, or one split given twice.
    """
    lists: dict[str, str] = {}
    tables: list[str] = []
    for item in items:
        head, sep, tail = item.partition("=")
        split = SPLIT_NAMES.get(head.strip().lower()) if sep else None
        if split is None:
            tables.append(item)
        elif split in lists:
            raise UserError(f"--official-split: the {split} split is given twice")
        elif not tail.strip():
            raise UserError(f"--official-split {item}: no list file after '='")
        else:
            lists[split] = tail.strip()
    if lists and tables:
        raise UserError(
            f"--official-split: give SPLIT=LIST items (e.g. test=test_list.txt) or one table "
            f"with a split column, not both ('{tables[0]}' has no SPLIT= prefix)"
        )
    if len(tables) > 1:
        raise UserError(
            f"--official-split: at most one table with a split column, got {len(tables)}"
        )
    return lists or (tables[0] if tables else None)


def run_pair(params: PairParams, seed: int) -> dict[str, Any]:
    """Read the manifest, pair, write ``studies.parquet``, ``rejected.csv``, ``summary.json``."""
    path = Path(params.manifest)
    if params.official_split:
        official_files(params.official_split)  # fail on a missing file before the long part
    if not path.is_file():
        raise UserError(f"{path}: manifest not found; run the ingest stage first")
    manifest = pd.read_parquet(path)
    studies, rejected, summary = pair_studies(manifest, params, seed)
    out = Path(params.out)
    write_parquet(studies, out / "studies.parquet")
    write_rejected(rejected, out / "rejected.csv")
    write_metrics(out / "summary.json", summary)
    log.info(
        "pair: %d studies (%d dual-view, %d frontal-only); train/val/test = %s",
        summary["studies"],
        summary["dual_view"],
        summary["frontal_only"],
        "/".join(str(summary["splits"][s]["studies"]) for s in SPLITS),
    )
    if params.holdout_source:
        log.info(
            "pair: held-out source %s: %d patients in test",
            params.holdout_source,
            summary["holdout_patients"],
        )
    return summary


def main() -> None:
    """DVC entry point: ``python -m pipelines.pair`` reads ``pair`` and ``base``."""

    def go() -> dict[str, Any]:
        params = load_params()
        base = parse_section(BaseParams, "base", params, "params.yaml")
        return run_pair(parse_section(PairParams, "pair", params, "params.yaml"), base.seed)

    run_stage(go)


if __name__ == "__main__":
    main()
