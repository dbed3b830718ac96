"""The patient-wise split: every patient in exactly one of train, val and test.

Patients, in an order that does not depend on the secret salt (:func:`patient_order`), are
shuffled with the split seed and cut by the fractions (rounded); official lists
(e.g. NIH ``test_list.txt``) pin the patients of the listed images to their split first, and the
remaining patients share the other splits in proportion. No patient is ever in two splits
(:func:`check_no_leak`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import SplitLeakError, UserError
from pipelines.schema import SPLITS


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
    open_splits = [s for s in SPLITS if s not in set(pinned.values())] or list(SPLITS)
    total = sum(fractions[s] for s in open_splits) or 1.0
    cuts = np.round(np.cumsum([fractions[s] / total for s in open_splits]) * len(free)).astype(int)
    start = 0
    for split, stop in zip(open_splits, cuts, strict=True):
        out.loc[free[start:stop]] = split
        start = stop
    return out.sort_index()


def official_pins(manifest: pd.DataFrame, lists: dict[str, str]) -> dict[str, str]:
    """Patient key -> split for the patients of images named in official split lists."""
    pins: dict[str, str] = {}
    base = manifest["path"].astype(str).str.rsplit("/", n=1).str[-1]
    for split, path in lists.items():
        if split not in SPLITS:
            raise UserError(f"pair.official_split: unknown split '{split}'")
        listed = Path(path)
        if not listed.is_file():
            raise UserError(f"{listed}: official split list not found")
        names = {ln.strip() for ln in listed.read_text().splitlines() if ln.strip()}
        hit = manifest.loc[base.isin(names) | manifest["path"].isin(names), "patient_key"]
        for key in hit.unique():
            if pins.get(key, split) != split:
                raise SplitLeakError(
                    f"{listed}: a patient is listed in '{pins[key]}' and '{split}'"
                )
            pins[key] = split
    return pins


def check_no_leak(studies: pd.DataFrame) -> None:
    """Raise :class:`SplitLeakError` if any patient appears in two splits."""
    per_patient = studies.groupby("patient_key")["split"].nunique()
    if (per_patient > 1).any():
        raise SplitLeakError(f"{int((per_patient > 1).sum())} patients appear in two splits")
