"""Row-level rejections of a table reader: every input row is accepted or rejected exactly once.

Rejection paths name the row as ``<csv name>:<line>`` (the header is line 1, so the first data row
is line 2; exact when no quoted field spans lines). Details never quote identifier values.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.io import Rejection

#: How much of a bad value a rejection detail may quote.
TEXT_CHARS = 60


def blank(values: pd.Series) -> np.ndarray:
    """True where a text cell is empty or only blanks."""
    return (values.astype(str).str.strip() == "").to_numpy()


class Rows:
    """Which rows of a table are still accepted; the first reason given for a row wins.

    Args:
        n: number of rows (positions ``0..n-1``).
        source: reader name for the :class:`~pipelines.io.Rejection` records.
        table: the CSV, named in rejection paths as ``<name>:<line>``.
    """

    def __init__(self, n: int, source: str, table: Path) -> None:
        self.keep = np.ones(n, dtype=bool)
        self.source = source
        self.name = Path(table).name
        self._found: list[tuple[np.ndarray, str, np.ndarray, np.ndarray | None]] = []

    def reject(
        self,
        mask: np.ndarray | pd.Series,
        reason: str,
        detail: str | np.ndarray | pd.Series,
        path: np.ndarray | pd.Series | None = None,
    ) -> int:
        """Reject the still-accepted rows where ``mask`` is true.

        Args:
            mask: boolean, one per row.
            reason: the reason code.
            detail: one sentence, or one per row (same length as ``mask``).
            path: the rejection path per row (default: ``<csv name>:<line>``).

        Returns:
            How many rows this call rejected.
        """
        hit = np.asarray(mask, dtype=bool) & self.keep
        pos = np.flatnonzero(hit)
        if not len(pos):
            return 0
        if isinstance(detail, str):
            details = np.full(len(pos), detail, dtype=object)
        else:
            details = np.asarray(detail, dtype=object)[pos]
        paths = None if path is None else np.asarray(path, dtype=object)[pos]
        self._found.append((pos, reason, details, paths))
        self.keep[pos] = False
        return len(pos)

    def reject_blank(self, df: pd.DataFrame, columns: Iterable[str]) -> None:
        """``missing_value`` for rows with an empty cell in any of ``columns``."""
        for col in columns:
            self.reject(blank(df[col]), "missing_value", f"blank '{col}'")

    def reject_duplicates(self, ids: pd.Series | np.ndarray, what: str = "image id") -> None:
        """``duplicate_image_id`` for later accepted rows repeating an id (first kept)."""
        ids = np.asarray(ids, dtype=object)
        kept = np.flatnonzero(self.keep)
        sub = pd.Series(ids[kept])
        dup = sub.duplicated(keep="first").to_numpy()
        if not dup.any():
            return
        first_line = pd.Series(kept[~dup] + 2, index=sub[~dup].to_numpy())
        detail = np.empty(len(ids), dtype=object)
        lines = sub[dup].map(first_line).to_numpy()
        detail[kept[dup]] = [
            f"{what} repeats line {int(n)} of {self.name} (first kept)" for n in lines
        ]
        mask = np.zeros(len(ids), dtype=bool)
        mask[kept[dup]] = True
        self.reject(mask, "duplicate_image_id", detail)

    def rejections(self) -> list[Rejection]:
        """The rejections in row order."""
        if not self._found:
            return []
        pos = np.concatenate([p for p, *_ in self._found])
        reasons = np.concatenate([np.full(len(p), r, dtype=object) for p, r, _, _ in self._found])
        details = np.concatenate([d for *_, d, _ in self._found])
        paths = np.concatenate(
            [
                pp
                if pp is not None
                else np.array([f"{self.name}:{i + 2}" for i in p], dtype=object)
                for p, _, _, pp in self._found
            ]
        )
        order = np.argsort(pos, kind="stable")
        return [
            Rejection(self.source, str(paths[i]), str(reasons[i]), str(details[i])) for i in order
        ]
