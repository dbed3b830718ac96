"""Vectorised label parsing of the table readers into the :data:`~pipelines.labels.FINDINGS` matrix.

Coded columns (CheXpert style: 1 / 0 / -1 / blank, a blank resolved by the reader's blank
policy) and term lists (NIH, PadChest, Open-i, the generic CSV); a value outside the vocabulary
rejects the row (``label_out_of_domain``) through :class:`~pipelines.sources.rows.Rows`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import SourceError
from pipelines.labels import (
    CHEXPERT_NO_FINDING,
    FINDINGS,
    BlankPolicy,
    UncertainPolicy,
    apply_uncertain_policy,
    blank_values,
)
from pipelines.sources.rows import TEXT_CHARS, Rows


def blank_fill(df: pd.DataFrame, policy: BlankPolicy, table: Path, what: str) -> np.ndarray:
    """Each row's value for its blank CheXpert / MIMIC cells (see ``labels.blank_values``).

    Args:
        df: the label table (text cells); its ``No Finding`` column is read for
            ``nan_unless_no_finding`` (``1`` / ``1.0`` = no finding; anything else is not).
        policy: the blank policy.
        table: the file, for the error message.
        what: how the error names the file (``"CheXpert CSV"`` ...).

    Returns:
        float32, one value (0.0 or NaN) per row of ``df``.

    Raises:
        SourceError: ``nan_unless_no_finding`` and the table has no ``No Finding`` column.
    """
    no_finding = None
    if policy == "nan_unless_no_finding":
        if CHEXPERT_NO_FINDING not in df:
            raise SourceError(
                f"{table}: the blank policy nan_unless_no_finding needs the column "
                f"'{CHEXPERT_NO_FINDING}', which the {what} lacks; choose zeros or nan"
            )
        text = df[CHEXPERT_NO_FINDING].astype(str).str.strip()
        no_finding = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
    return blank_values(policy, no_finding, len(df))


def coded_labels(
    df: pd.DataFrame,
    columns: Mapping[str, str],
    rows: Rows,
    *,
    blank_value: float | np.ndarray,
    policy: UncertainPolicy,
) -> pd.DataFrame:
    """Parse CheXpert-style coded label columns into findings.

    Codes: ``1`` present, ``0`` absent, ``-1`` uncertain (``policy``), blank ``blank_value``
    (NaN = not annotated, or 0 where the source means "not mentioned = negative"). Numeric
    spellings such as ``1.0`` are accepted; anything else rejects the row with
    ``label_out_of_domain`` naming the column and the value.

    Args:
        df: the table (text cells).
        columns: source column -> finding.
        rows: row tracker for rejections.
        blank_value: value of a blank cell: one for all rows, or one per row (:func:`blank_fill`).
        policy: uncertain policy (:func:`~pipelines.labels.apply_uncertain_policy`).

    Returns:
        A float32 frame with one column per mapped finding (index of ``df``).
    """
    out = {}
    for col, finding in columns.items():
        text = df[col].astype(str).str.strip()
        is_blank = (text == "").to_numpy()
        num = pd.to_numeric(text.mask(is_blank), errors="coerce").to_numpy(np.float64, copy=True)
        bad = ~is_blank & ~np.isin(num, (1.0, 0.0, -1.0))
        if bad.any():
            detail = "column '" + col + "' has value '" + text.str.slice(0, TEXT_CHARS) + "'"
            rows.reject(bad, "label_out_of_domain", detail.to_numpy(dtype=object))
        num[is_blank] = np.broadcast_to(np.asarray(blank_value, dtype=np.float64), num.shape)[
            is_blank
        ]
        num[bad] = np.nan
        out[finding] = apply_uncertain_policy(num, policy)
    return pd.DataFrame(out, index=df.index)


def term_labels(
    terms: pd.Series,
    lookup: Mapping[str, tuple[str, ...]],
    *,
    none_terms: Iterable[str] = (),
    rows: Rows | None = None,
) -> pd.DataFrame:
    """One-hot findings from a Series whose cells are lists of terms (already normalised).

    Every row is fully annotated: a finding absent from the row's terms is 0. Terms in
    ``none_terms`` (``No Finding``, ``normal``) set nothing; unknown terms are ignored, or, when
    ``rows`` is given, reject the row with ``label_out_of_domain`` naming the first unknown term.

    Args:
        terms: one list (or tuple) of terms per row; NaN/None count as an empty list.
        lookup: term -> findings it implies.
        none_terms: terms that are valid and imply no finding.
        rows: row tracker: unknown terms are rejected rather than ignored.

    Returns:
        A float32 frame with all 14 findings (index of ``terms``).
    """
    flat = pd.Series(terms.to_numpy(), index=np.arange(len(terms))).explode()
    out = flat_term_labels(flat, len(terms), lookup, none_terms=none_terms, rows=rows)
    return out.set_axis(terms.index)


def flat_term_labels(
    flat: pd.Series,
    n: int,
    lookup: Mapping[str, tuple[str, ...]],
    *,
    none_terms: Iterable[str] = (),
    rows: Rows | None = None,
) -> pd.DataFrame:
    """:func:`term_labels` on exploded terms: one term per entry, indexed by row position.

    Args:
        flat: terms; the index is the row position (``0..n-1``, repeated per term).
        n: number of rows.
        lookup: term -> findings it implies.
        none_terms: terms that are valid and imply no finding.
        rows: row tracker: unknown terms are rejected rather than ignored.

    Returns:
        A float32 frame with all 14 findings and a RangeIndex of ``n`` rows.
    """
    col_of = {f: i for i, f in enumerate(FINDINGS)}
    pos_of = {k: tuple(col_of[f] for f in v) for k, v in lookup.items()}
    flat = flat[flat.notna()].astype(str)
    flat = flat[flat != ""]
    cols = flat.map(pos_of)
    known = cols.notna()
    if rows is not None:
        unknown = ~known & ~flat.isin(set(none_terms))
        if unknown.any():
            first = flat[unknown].groupby(level=0).first()
            at = first.index.to_numpy(dtype=np.int64)
            mask = np.zeros(n, dtype=bool)
            mask[at] = True
            detail = np.empty(n, dtype=object)
            detail[at] = ("unknown label '" + first.str.slice(0, TEXT_CHARS) + "'").to_numpy()
            rows.reject(mask, "label_out_of_domain", detail)
    hits = cols[known].explode()
    mat = np.zeros((n, len(FINDINGS)), dtype=np.float32)
    if len(hits):
        mat[hits.index.to_numpy(dtype=np.int64), hits.to_numpy(dtype=np.int64)] = 1.0
    return pd.DataFrame(mat, columns=list(FINDINGS))
