"""Small I/O helpers every stage uses: atomic writes, JSON summaries, rejected records."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.errors import OutputError

REJECTED_COLUMNS = ("source", "path", "reason", "detail")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once, at import (os.umask is process-wide)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A reader never sees a half-written file: a crash leaves the old file (or none), and a
    killed process leaves at most a hidden ``.<name>.*.tmp`` beside it.

    Raises:
        OutputError: the folder cannot be made or written, the disk is full, or any other
            :class:`OSError` while writing ``path``; the message names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _output_error(exc, path) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp's 0600 -> what open() would have made
        os.replace(tmp_path, path)
    except OutputError:
        raise
    except OSError as exc:
        raise _output_error(exc, path) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _output_error(exc: OSError, path: Path) -> OutputError:
    """``exc`` re-raised as an :class:`OutputError` naming the output ``path``."""
    err = OutputError(exc.errno, exc.strerror or str(exc) or type(exc).__name__, str(path))
    if exc.errno is None:  # e.g. pyarrow's "IOError: ...": no errno, the text says it all
        err.strerror = str(exc) or type(exc).__name__
    return err


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, keys sorted, for stable diffs and DVC metrics."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


#: Keys that say how a run went, not what it produced (timings, speed, worker counts): they are
#: logged, never written into a stage's metrics, so the same inputs give byte-identical outputs
#: on every run and machine, and dvc.lock records the same hashes on every clone.
RUN_FACTS: frozenset[str] = frozenset(
    {"seconds", "images_per_s", "pairs_per_s", "workers", "part_seconds", "seconds_per_study",
     "export_seconds"}
)  # fmt: skip


def without_run_facts(data: Any) -> Any:
    """``data`` with every :data:`RUN_FACTS` key removed, at any depth."""
    if isinstance(data, dict):
        return {k: without_run_facts(v) for k, v in data.items() if k not in RUN_FACTS}
    if isinstance(data, list):
        return [without_run_facts(v) for v in data]
    return data


def write_metrics(path: str | Path, summary: dict[str, Any]) -> None:
    """Write a stage's summary as its DVC metrics file, without its :data:`RUN_FACTS`."""
    write_json(path, without_run_facts(summary))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame to Parquet atomically (``df.attrs`` are kept by pandas >= 2.1)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


@dataclass(frozen=True)
class Rejection:
    """One input that was not accepted, and why.

    Attributes:
        source: the reader that saw it (``dicom``, ``nih`` ...).
        path: the file or row, relative to the input root (row numbers as ``file.csv:17``).
        reason: a stable machine-readable code (``not_dicom``, ``missing_column`` ...).
        detail: a human sentence; must not contain PHI (no header values of identifying tags).
    """

    source: str
    path: str
    reason: str
    detail: str


def rejected_frame(rejections: list[Rejection]) -> pd.DataFrame:
    """Rejections as a DataFrame with the standard columns (empty but typed when none)."""
    return pd.DataFrame([r.__dict__ for r in rejections], columns=list(REJECTED_COLUMNS))


def write_rejected(rejections: list[Rejection] | pd.DataFrame, path: str | Path) -> None:
    """Write the rejected-records CSV atomically (always written, header only when empty)."""
    df = rejections if isinstance(rejections, pd.DataFrame) else rejected_frame(rejections)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
