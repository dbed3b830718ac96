"""Shared pieces of the table readers (nih, chexpert, mimic, padchest, openi, csv).

- :func:`read_table`: read a metadata CSV as text columns, failing with a :class:`SourceError`
  that names the file and the reason (missing, empty, wrong delimiter, not UTF-8 with the byte
  offset, required columns missing). Only the columns a reader asks for are read, so free text,
  birth dates and study dates never enter memory, let alone an output.
- :class:`Rows`: row-level rejections built from boolean masks (first reason wins), so that every
  input row ends up either accepted or rejected exactly once.
- :func:`coded_labels` / :func:`term_labels`: vectorised label parsing (1/0/-1/blank codes, or
  joined term lists) into the :data:`~pipelines.labels.FINDINGS` matrix.
- :func:`verify_files`: with ``ReadOptions.verify_files``, open each image's header in a thread
  pool for its size, bit depth and colour mode (format detected from content).

Rejection paths: row-level problems name the row as ``<csv name>:<line>`` (the header is line 1,
so the first data row is line 2; exact when no quoted field spans lines), file-level problems
name the image path relative to the image root. Details never quote identifier values.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from pipelines.dicom.view import canonical_views
from pipelines.errors import SourceError
from pipelines.io import Rejection
from pipelines.keys import get_salt, make_keys
from pipelines.labels import FINDINGS, UncertainPolicy, apply_uncertain_policy
from pipelines.schema import conform_manifest
from pipelines.sources import ReadOptions, SourceResult

__all__ = [
    "Rows",
    "blank",
    "coded_labels",
    "extract",
    "find_table",
    "finish",
    "flat_term_labels",
    "image_header",
    "index_images",
    "make_source_keys",
    "read_table",
    "term_labels",
    "to_int",
    "utf8_error_message",
    "verify_files",
    "view_columns",
]

_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}
_OPENERS: dict[str, Callable[..., object]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_TEXT_CHARS = 60  # how much of a bad value a detail may quote


# --- reading ----------------------------------------------------------------------------------


def find_table(input_path: Path, patterns: Sequence[str], what: str) -> Path:
    """Return ``input_path`` if it is a file, else the single file in it matching ``patterns``.

    Raises:
        SourceError: the path does not exist, or a folder holds none or several matches.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        return input_path
    if not input_path.exists():
        raise SourceError(f"{input_path}: {what} not found")
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

    Returns:
        A frame with a RangeIndex (row ``i`` is line ``i + 2`` of the file).

    Raises:
        SourceError: file missing or a folder, empty, no data rows, not UTF-8 (with the byte
            offset and line), one column only (wrong delimiter), malformed (a row with more
            fields than the header: its values cannot be matched to columns), or required
            columns missing (all named).
    """
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: {what} not found")
    if not path.is_file():
        raise SourceError(f"{path}: {what} is not a file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: {what} is empty (0 bytes)")
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
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise SourceError(f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from exc


def _open_text(path: Path) -> IO[str]:
    """``path`` as UTF-8 text (BOM skipped), decompressed by its suffix as pandas infers it."""
    suffix = path.suffix.lower()
    if suffix == ".zip":
        archive = zipfile.ZipFile(path)
        names = [n for n in archive.namelist() if not n.endswith("/")]
        if len(names) != 1:
            raise SourceError(f"{path}: expected one file in the ZIP archive, found {len(names)}")
        return io.TextIOWrapper(archive.open(names[0]), encoding="utf-8-sig", newline="")
    opener = _OPENERS.get(suffix)
    if opener is not None:
        return opener(path, "rt", encoding="utf-8-sig", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8-sig", newline="")


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
    except (OSError, EOFError) as exc:  # corrupt compression, unreadable file
        raise SourceError(f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from exc


def utf8_error_message(path: Path, what: str) -> str:
    """Locate the first byte that is not UTF-8 (only called on failure: reads the whole file)."""
    opener = _OPENERS.get(path.suffix.lower(), open)
    with opener(path, "rb") as fh:  # type: ignore[operator]
        data = fh.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return (
            f"{path}: {what} is not UTF-8 text: byte 0x{data[err.start]:02x} at byte offset "
            f"{err.start} (line {line}) is invalid; re-save the file as UTF-8"
        )
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


# --- row rejections ---------------------------------------------------------------------------


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


# --- labels -----------------------------------------------------------------------------------


def coded_labels(
    df: pd.DataFrame,
    columns: Mapping[str, str],
    rows: Rows,
    *,
    blank_value: float,
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
        blank_value: value of a blank cell.
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
            detail = "column '" + col + "' has value '" + text.str.slice(0, _TEXT_CHARS) + "'"
            rows.reject(bad, "label_out_of_domain", detail.to_numpy(dtype=object))
        num[is_blank] = blank_value
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
            detail[at] = ("unknown label '" + first.str.slice(0, _TEXT_CHARS) + "'").to_numpy()
            rows.reject(mask, "label_out_of_domain", detail)
    hits = cols[known].explode()
    mat = np.zeros((n, len(FINDINGS)), dtype=np.float32)
    if len(hits):
        mat[hits.index.to_numpy(dtype=np.int64), hits.to_numpy(dtype=np.int64)] = 1.0
    return pd.DataFrame(mat, columns=list(FINDINGS))


# --- keys, views, sizes -----------------------------------------------------------------------


def make_source_keys(
    source: str,
    patient: pd.Series,
    study: pd.Series,
    image: pd.Series,
    salt: bytes,
) -> dict[str, np.ndarray]:
    """Salted keys of ``source:<value>`` for the three id kinds (an empty salt -> the project's).

    Returns:
        ``{"patient_key": ..., "study_key": ..., "image_id": ...}``, arrays of key strings.
    """
    salt = salt or get_salt()
    prefix = f"{source}:"
    return {
        "patient_key": make_keys("patient", prefix + patient.astype(str), salt),
        "study_key": make_keys("study", prefix + study.astype(str), salt),
        "image_id": make_keys("image", prefix + image.astype(str), salt),
    }


def extract(values: pd.Series, pattern: str) -> pd.DataFrame:
    """``values.str.extract(pattern)`` (named groups) via pyarrow's RE2, several times faster.

    Non-matching rows are NaN in every column. Falls back to pandas when pyarrow cannot run the
    pattern.

    Args:
        values: text cells.
        pattern: a regular expression with named groups (RE2 syntax).
    """
    try:
        found = pc.extract_regex(pa.array(values.astype(str).array), pattern)
    except (pa.ArrowException, TypeError):
        return values.astype(str).str.extract(pattern)
    names = [found.type.field(i).name for i in range(found.type.num_fields)]
    return pd.DataFrame(
        {n: pd.Series(pc.struct_field(found, n).to_pandas(), dtype=str) for n in names},
        index=values.index,
    )


def view_columns(raw: pd.Series) -> dict[str, pd.Series]:
    """``view`` (canonical; unknown -> OTHER) and ``view_raw`` (stripped text) from raw cells."""
    text = raw.astype(str).str.strip()
    return {"view": canonical_views(text), "view_raw": text}


def to_int(values: pd.Series) -> np.ndarray:
    """Text numbers (``2592``, ``2592.0``, blank) as int64; blank or invalid -> 0."""
    num = pd.to_numeric(values.astype(str).str.strip(), errors="coerce").to_numpy(
        np.float64, copy=True
    )
    num[~np.isfinite(num) | (num < 0)] = 0
    return num.astype(np.int64)


def index_images(root: Path, subdirs: Sequence[str] = ("", "images*", "images*/images")) -> dict:
    """Map file name -> path relative to ``root`` over ``root`` and the given glob subfolders.

    Files in earlier entries win. Used for NIH, whose release splits the images across
    ``images_001/images`` ... ``images_012/images``.
    """
    found: dict[str, str] = {}
    root = Path(root)
    for pattern in subdirs:
        dirs = [root] if pattern == "" else sorted(p for p in root.glob(pattern) if p.is_dir())
        for folder in dirs:
            rel = "" if folder == root else folder.relative_to(root).as_posix() + "/"
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        if entry.name not in found and entry.is_file():
                            found[entry.name] = rel + entry.name
            except OSError:
                continue
    return found


# --- file verification ------------------------------------------------------------------------

_MODES: dict[str, tuple[int, str]] = {
    "1": (1, "MONOCHROME2"),
    "L": (8, "MONOCHROME2"),
    "LA": (8, "MONOCHROME2"),
    "La": (8, "MONOCHROME2"),
    "I;16": (16, "MONOCHROME2"),
    "I;16L": (16, "MONOCHROME2"),
    "I;16B": (16, "MONOCHROME2"),
    "I;16N": (16, "MONOCHROME2"),
    "I": (32, "MONOCHROME2"),
    "F": (32, "MONOCHROME2"),
    "P": (8, "PALETTE COLOR"),
    "PA": (8, "PALETTE COLOR"),
    "RGB": (8, "RGB"),
    "RGBX": (8, "RGB"),
    "RGBA": (8, "RGBA"),
    "RGBa": (8, "RGBA"),
    "CMYK": (8, "CMYK"),
    "YCbCr": (8, "YBR_FULL"),
    "LAB": (8, "LAB"),
    "HSV": (8, "HSV"),
}


def image_header(path: Path) -> tuple[int, int, int, str] | tuple[str, str]:
    """Read one image's header with PIL (format from the content, not the file name).

    Returns:
        ``(width, height, bits, photometric)``, or ``(reason, detail)`` on failure with reason
        ``missing_file`` or ``unreadable_image``.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            mode, fmt = im.mode, im.format
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return "missing_file", "image file not found under the image root"
    except UnidentifiedImageError:
        return "unreadable_image", "not an image format Pillow recognises"
    except Image.DecompressionBombError as exc:
        return "unreadable_image", f"refused by Pillow: {exc}"
    except (OSError, SyntaxError, ValueError) as exc:
        why = f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else ""
        return "unreadable_image", f"cannot read image header: {type(exc).__name__}{why}"
    if width <= 0 or height <= 0:
        return "unreadable_image", f"{fmt} header gives size {width}x{height}"
    bits, photometric = _MODES.get(mode, (0, mode))
    if fmt == "PNG" and mode == "I":  # older Pillow opens 16-bit grey PNG as "I"
        bits = 16
    return width, height, bits, photometric


def verify_files(
    df: pd.DataFrame, root: Path | str, workers: int = 0
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Check that each manifest image exists and read its header (thread pool).

    Width, height, bits and photometric are replaced by what the file says. Missing files are
    rejected as ``missing_file``, unreadable ones as ``unreadable_image`` with the reason; the
    rejection path is the image path relative to ``root``.

    Args:
        df: manifest rows (``path``, ``source``, size columns).
        root: the image root that ``path`` is relative to.
        workers: threads (0 = min(32, cores + 4), Python's default for I/O-bound pools).

    Returns:
        (the accepted rows with sizes from the files, the rejections).
    """
    if df.empty:
        return df, []
    root = Path(root)
    paths = df["path"].astype(str).tolist()
    n_threads = workers if workers > 0 else min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(max_workers=max(1, n_threads)) as pool:
        results = list(pool.map(lambda p: image_header(root / p), paths))
    ok = np.array([len(r) == 4 for r in results], dtype=bool)
    good = [r for r in results if len(r) == 4]
    out = df.loc[ok].copy()
    if good:
        width, height, bits, photometric = zip(*good, strict=True)
        out["width"] = np.asarray(width, dtype=np.int64)
        out["height"] = np.asarray(height, dtype=np.int64)
        out["bits"] = np.asarray(bits, dtype=np.int64)
        out["photometric"] = pd.array(photometric, dtype="string")
    sources = df["source"].astype(str).to_numpy()
    rejections = [
        Rejection(sources[i], paths[i], str(results[i][0]), str(results[i][1]))
        for i in np.flatnonzero(~ok)
    ]
    return out.reset_index(drop=True), rejections


# --- the end of every reader ------------------------------------------------------------------


def finish(
    frame: pd.DataFrame | dict,
    rows: Rows,
    root: Path,
    options: ReadOptions,
    n_inputs: int,
) -> SourceResult:
    """Conform the accepted rows, verify files if asked, and package the result.

    Args:
        frame: manifest columns for the accepted rows (findings missing -> NaN).
        rows: the row tracker holding the row-level rejections.
        root: image root (``path`` is relative to it); recorded as ``data_root`` as given.
        options: reader options (``verify_files``, ``workers``).
        n_inputs: rows read from the table.
    """
    manifest = conform_manifest(pd.DataFrame(frame))
    rejected = rows.rejections()
    if options.verify_files:
        manifest, missing = verify_files(manifest, root, options.workers)
        rejected += missing
    manifest.attrs["data_root"] = str(root)
    return SourceResult(
        manifest=manifest, rejected=rejected, n_inputs=n_inputs, data_root=str(root)
    )
