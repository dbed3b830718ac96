"""Reading a metadata CSV for a table reader, with errors that name the file and the reason.

Every cell is read as text (blank = ``""``, nothing parsed as NaN), only the columns a reader asks
for, so free text, birth dates and study dates never enter memory, let alone an output. Failures
are :class:`~pipelines.errors.SourceError`: missing, empty, wrong delimiter, not UTF-8 (with the
byte offset and line), malformed rows, required columns missing, a line longer than
``max_csv_line_bytes`` (:func:`check_lines`, before any parser buffers it), corrupt compression.
Compression (``.gz``, ``.bz2``, ``.xz``, ``.zip``) is inferred from the name.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import lzma
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import pandas as pd

from pipelines.errors import SourceError
from pipelines.limits import MAX_CSV_LINE_BYTES

_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}
_OPENERS: dict[str, Callable[..., object]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
#: What a corrupt or cut compressed file raises while it is read (gzip / bz2 / xz / zip).
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    zipfile.BadZipFile,
)


def with_gz_twins(patterns: Sequence[str]) -> list[str]:
    """``patterns`` in order, each ``*.csv`` one followed by its ``*.csv.gz`` twin (no repeats)."""
    out: list[str] = []
    for pattern in patterns:
        for p in (pattern, pattern + ".gz") if pattern.lower().endswith(".csv") else (pattern,):
            if p not in out:
                out.append(p)
    return out


def find_table(input_path: Path, patterns: Sequence[str], what: str) -> Path:
    """Return ``input_path`` if it is a file, else the single file in it matching ``patterns``.

    A pattern ending in ``.csv`` also finds its gzip twin (``train.csv`` -> ``train.csv.gz``):
    the released tables of MIMIC-CXR and others ship compressed, and :func:`read_table` reads
    them by suffix. A folder holding both a table and its twin is ambiguous (which one is meant?).

    Raises:
        SourceError: the path does not exist, or a folder holds none or several matches.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        return input_path
    if not input_path.exists():
        raise SourceError(f"{input_path}: {what} not found")
    patterns = with_gz_twins(patterns)
    found = sorted({p for pattern in patterns for p in input_path.glob(pattern) if p.is_file()})
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise SourceError(
            f"{input_path}: is a folder; expected exactly one {what} matching "
            f"{' or '.join(patterns)} in it (found {names}); give the file itself"
        )
    return found[0]


def read_table(
    path: Path,
    required: Sequence[str],
    optional: Sequence[str] = (),
    *,
    what: str = "metadata CSV",
    max_line_bytes: int = MAX_CSV_LINE_BYTES,
) -> pd.DataFrame:
    """Read the ``required`` and present ``optional`` columns of a CSV as stripped-name text.

    Every cell is a ``str`` (blank cells are ``""``, nothing is parsed as NaN), so that reader
    code decides what a blank means. Compression (``.gz``, ``.bz2``, ``.xz``, ``.zip``) is
    inferred from the name; a UTF-8 byte-order mark is accepted.

    Args:
        path: the CSV file.
        required: columns that must be present.
        optional: columns read when present.
        what: how errors name the file's role (``"NIH Data_Entry CSV"`` ...).
        max_line_bytes: the longest line (:func:`check_lines`; ``ingest.max_csv_line_bytes``).

    Returns:
        A frame with a RangeIndex (row ``i`` is line ``i + 2`` of the file).

    Raises:
        SourceError: file missing or a folder, empty, no data rows, not UTF-8 (with the byte
            offset and line), one column only (wrong delimiter), malformed (a row with more
            fields than the header: its values cannot be matched to columns), required
            columns missing (all named), a line over ``max_line_bytes``, corrupt compression.
    """
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: {what} not found")
    if not path.is_file():
        raise SourceError(f"{path}: {what} is not a file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: {what} is empty (0 bytes)")
    check_lines(path, what, max_line_bytes)
    header = _read(path, what, nrows=0)
    names = [str(c).strip() for c in header.columns]
    missing = [c for c in required if c not in names]
    if missing:
        if len(names) == 1 and len(required) > 1:
            raise SourceError(_delimiter_message(path, names[0], what, required))
        found = ", ".join(repr(n) for n in names[:40])
        raise SourceError(
            f"{path}: {what} lacks required column(s) {', '.join(repr(c) for c in missing)}"
            f" (found: {found})"
        )
    _check_field_counts(path, what, len(header.columns))
    wanted = set(required) | set(optional)
    df = _read(path, what, usecols=lambda c: str(c).strip() in wanted, index_col=False)
    df.columns = [str(c).strip() for c in df.columns]
    if df.columns.duplicated().any():
        dup = sorted(set(df.columns[df.columns.duplicated()]))
        raise SourceError(f"{path}: {what} has the column(s) {dup} more than once")
    if len(df) == 0:
        raise SourceError(f"{path}: {what} has a header but no data rows")
    return df.reset_index(drop=True)


def _check_field_counts(path: Path, what: str, n_header: int) -> None:
    """Fail on the first record with more fields than the header.

    pandas does not: reading chosen columns it drops the surplus, and when the first data row
    has it, it takes the first fields as an index and shifts every row's values by one column,
    so a path would be read as a patient id. A surplus field is nearly always an unquoted comma
    inside a value, which moves every later value of that row into the wrong column.
    """
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh)
            next(reader, None)
            for record in reader:
                if len(record) > n_header:
                    raise SourceError(
                        f"{path}: {what} is not a well-formed CSV: line {reader.line_num} has "
                        f"{len(record)} fields but the header has {n_header} (a value with an "
                        "unquoted comma?); quote such values or fix the row"
                    )
    except UnicodeDecodeError as exc:
        raise SourceError(utf8_error_message(path, what)) from exc
    except csv.Error as exc:
        raise SourceError(f"{path}: {what} is not a well-formed CSV: {exc}") from exc
    except READ_ERRORS as exc:
        raise SourceError(f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from exc


def check_lines(
    path: Path,
    what: str,
    max_line_bytes: int = MAX_CSV_LINE_BYTES,
    param: str = "ingest.max_csv_line_bytes",
) -> None:
    """Refuse a CSV with a line, or a quoted value spanning lines, over ``max_line_bytes``.

    Read a line at a time, at most ``max_line_bytes + 1`` bytes of it (the memory bound), before
    pandas or the ``csv`` module see the file: both hold a whole line (pandas a whole quoted
    value) in memory, so that a 2 GB "line" would take 2 GB. Quotes are counted per line, so
    that a value opened by an odd quote and never closed is caught too.

    Args:
        path: the CSV (decompressed by its suffix).
        what: how the error names the file's role.
        max_line_bytes: the limit (line end included).
        param: where the limit is set, named in the error.

    Raises:
        SourceError: naming the line, the limit and its param; or corrupt compression.
    """
    line_no, quoted_from, span = 0, 0, 0
    try:
        with _open_binary(path) as fh:
            while line := fh.readline(max_line_bytes + 1):
                line_no += 1
                if len(line) > max_line_bytes:
                    raise SourceError(
                        f"{path}: {what} line {line_no} is longer than {max_line_bytes:,} bytes "
                        f"({param}): refused before reading it"
                    )
                open_before = quoted_from > 0
                if line.count(b'"') % 2:
                    quoted_from = 0 if open_before else line_no
                span = span + len(line) if quoted_from else 0
                if span > max_line_bytes:
                    raise SourceError(
                        f"{path}: {what} has a quoted value from line {quoted_from} running past "
                        f"{max_line_bytes:,} bytes ({param}; an unclosed quote?): refused before "
                        "reading it"
                    )
    except READ_ERRORS as exc:
        raise SourceError(f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from exc


def _open_binary(path: Path) -> IO[bytes]:
    """``path`` as bytes, decompressed by its suffix as pandas infers it."""
    suffix = path.suffix.lower()
    if suffix == ".zip":
        archive = zipfile.ZipFile(path)
        names = [n for n in archive.namelist() if not n.endswith("/")]
        if len(names) != 1:
            raise SourceError(f"{path}: expected one file in the ZIP archive, found {len(names)}")
        return archive.open(names[0])
    opener = _OPENERS.get(suffix)
    if opener is not None:
        return opener(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _open_text(path: Path) -> IO[str]:
    """``path`` as UTF-8 text (BOM skipped), decompressed by its suffix as pandas infers it."""
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8-sig", newline="")


def _read(path: Path, what: str, **kwargs: object) -> pd.DataFrame:
    try:
        return pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            encoding="utf-8-sig",
            skipinitialspace=False,
            **kwargs,
        )
    except UnicodeDecodeError as exc:
        raise SourceError(utf8_error_message(path, what)) from exc
    except pd.errors.EmptyDataError as exc:
        raise SourceError(f"{path}: {what} is empty (no header line)") from exc
    except pd.errors.ParserError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"{path}: {what} is not a well-formed CSV: {reason}") from exc
    except READ_ERRORS as exc:  # corrupt compression, unreadable file
        raise SourceError(f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from exc


def utf8_error_message(path: Path, what: str) -> str:
    """Locate the first byte that is not UTF-8 (only called on failure; reads 1 MiB at a time)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1  # bytes and lines before the current chunk
    try:
        with _open_binary(path) as fh:
            while True:
                chunk = fh.read(1 << 20)
                pending = decoder.getstate()[0]  # the start of a character cut by the last chunk
                try:
                    decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as err:
                    data = pending + chunk
                    start = offset - len(pending) + err.start
                    line = lines + data.count(b"\n", 0, err.start)
                    return (
                        f"{path}: {what} is not UTF-8 text: byte 0x{data[err.start]:02x} at byte "
                        f"offset {start} (line {line}) is invalid; re-save the file as UTF-8"
                    )
                if not chunk:
                    break
                offset, lines = offset + len(chunk), lines + chunk.count(b"\n")
    except (*READ_ERRORS, SourceError):
        pass
    return f"{path}: {what} is not UTF-8 text; re-save the file as UTF-8"


def _delimiter_message(path: Path, header: str, what: str, required: Sequence[str]) -> str:
    counts = {d: header.count(d) for d in _DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    looks = (
        f"it looks {_DELIMITERS[best]}-separated ({best!r})"
        if counts[best]
        else "no other delimiter was recognised"
    )
    return (
        f"{path}: {what} header parses as a single column: wrong delimiter? {looks}, but "
        f"comma-separated values are expected (required columns: {', '.join(required)})"
    )
