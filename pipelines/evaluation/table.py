"""The predictions table the evaluation reads: its columns, modes and checks.

One row per (split, study, mode) with the columns of :data:`PREDICTION_COLUMNS` plus
``y_<finding>`` (1 / 0 / NaN) and ``p_<finding>`` (probability) for every finding, the optional
columns of :data:`OPTIONAL_COLUMNS`, and with test-time augmentation ``s_<finding>`` (the single
pass). ``mode`` is ``dual`` (both views) or ``frontal_only`` (the same model with the lateral
view masked). :func:`validate_predictions` checks a table and keeps what the report uses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.errors import ReportError
from pipelines.labels import FINDINGS

PREDICTION_COLUMNS: tuple[str, ...] = ("split", "study_key", "patient_key", "has_lateral", "mode")
#: Optional columns kept when present: the study's source (a multi-source manifest's name) and
#: its subgroup attributes (:mod:`pipelines.evaluation.subgroups`).
OPTIONAL_COLUMNS: tuple[str, ...] = ("source", "frontal_view", "sex", "age_band")
#: The predictions' attrs the evaluation reads (what evaluate records of the model).
ATTRS: tuple[str, ...] = ("model", "frontal_only", "untrained", "label_coverage", "tta")
#: With test-time augmentation (:mod:`pipelines.tta`), ``p_<finding>`` holds the TTA mean and
#: ``s_<finding>`` the single pass of the images as they are (for the paired comparison).
SINGLE_PREFIX = "s_"
MODES: tuple[str, ...] = ("dual", "frontal_only")
FRONTAL_ONLY_METHOD = (
    "the same trained model scores each study a second time with its lateral view hidden "
    "(has_lateral = False and a blank lateral image), exactly as it sees a study that has no "
    "lateral view"
)


def prediction_findings(predictions: pd.DataFrame) -> list[str]:
    """Findings with both ``y_<f>`` and ``p_<f>`` columns, in :data:`FINDINGS` order first."""
    ys = {c[2:] for c in predictions.columns if c.startswith("y_")}
    ps = {c[2:] for c in predictions.columns if c.startswith("p_")}
    both = ys & ps
    return [f for f in FINDINGS if f in both] + sorted(both - set(FINDINGS))


def validate_predictions(predictions: pd.DataFrame, source: str = "predictions") -> pd.DataFrame:
    """Check a predictions table and keep only the columns the report uses.

    Args:
        predictions: see the module docstring.
        source: name of the table in error messages (its file path).

    Returns:
        A copy with the known columns only (and the attrs of :data:`ATTRS`).

    Raises:
        ReportError: missing columns, no dual-mode test rows, duplicate rows, probabilities
            outside [0, 1], labels other than 1 / 0 / NaN, or modes that cover different studies.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ReportError(f"{source}: missing columns {missing}")
    findings = prediction_findings(predictions)
    if not findings:
        raise ReportError(f"{source}: no y_<finding> / p_<finding> column pairs")
    optional = [c for c in OPTIONAL_COLUMNS if c in predictions.columns]
    cols = [*PREDICTION_COLUMNS, *optional]
    cols += [*(f"y_{f}" for f in findings), *(f"p_{f}" for f in findings)]
    single = [f"{SINGLE_PREFIX}{f}" for f in findings]
    if all(c in predictions.columns for c in single):
        cols += single
    df = predictions[cols].copy()
    if "source" in df:
        df["source"] = df["source"].fillna("").astype(str)
    df["split"] = df["split"].astype(str)
    df["mode"] = df["mode"].astype(str)
    df["has_lateral"] = df["has_lateral"].astype(bool)
    _check_rows(df, source)
    _check_values(df, findings, source)
    _check_modes_match(df, source)
    df.attrs = {k: v for k, v in predictions.attrs.items() if k in ATTRS}
    return df


def _check_rows(df: pd.DataFrame, source: str) -> None:
    """Known modes, dual test rows, one row per (split, mode, study), keys present."""
    unknown = sorted(set(df["mode"]) - set(MODES))
    if unknown:
        raise ReportError(f"{source}: unknown mode(s) {unknown}; expected {list(MODES)}")
    if not ((df["split"] == "test") & (df["mode"] == "dual")).any():
        raise ReportError(f"{source}: no dual-mode rows of the test split to evaluate")
    dup = df.duplicated(["split", "mode", "study_key"])
    if dup.any():
        raise ReportError(f"{source}: {int(dup.sum())} duplicate (split, mode, study_key) rows")
    if df[["study_key", "patient_key"]].isna().any().any():
        raise ReportError(f"{source}: missing study_key or patient_key values")


def _check_values(df: pd.DataFrame, findings: list[str], source: str) -> None:
    """Probabilities (TTA and single pass) finite and within [0, 1]; labels 1, 0 or NaN."""
    scores = [c for c in df.columns if c.startswith(("p_", SINGLE_PREFIX))]
    p = df[scores].to_numpy(dtype=np.float64)
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ReportError(f"{source}: probabilities must be finite and within [0, 1]")
    y = df[[f"y_{f}" for f in findings]].to_numpy(dtype=np.float64)
    if (~np.isnan(y) & (y != 0) & (y != 1)).any():
        raise ReportError(f"{source}: labels must be 1, 0 or empty (NaN)")


def _check_modes_match(df: pd.DataFrame, source: str) -> None:
    """Where a split has rows of both modes, they cover the same studies."""
    for split, part in df.groupby("split"):
        sets = [set(part.loc[part["mode"] == m, "study_key"]) for m in MODES]
        if all(sets) and sets[0] != sets[1]:
            raise ReportError(f"{source}: split {split}: dual and frontal_only rows differ")


def split_rows(
    df: pd.DataFrame, split: str, mode: str, order: pd.Index | None = None
) -> pd.DataFrame:
    """The rows of one split and mode indexed by study, sorted or in ``order``'s study order."""
    part = df[(df["split"] == split) & (df["mode"] == mode)].set_index("study_key")
    if order is not None and len(part):
        part = part.loc[order]
    return part.sort_index() if order is None else part
