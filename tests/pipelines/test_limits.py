"""Hostile sizes: each refused with a reason before any large allocation, or read within a bound.

The cases of issue 18, built in a temporary folder in well under a second: sparse files claim
their full size without taking the disk (a 60000 x 60000 DICOM of 3.6 GB, 10,000 frames of
2.6 GB, a CSV whose second "line" is 2 GB), and the decompression bombs are real (a PNG and a
deflated DICOM that inflate to 64 MB and 70 MB from a few hundred KB). Every entry point that
meets them (the ingest readers, the decoder of preprocess and ``cxr predict``, predict's study
collection) runs in one child process whose address space is capped at :data:`CAP_MB` above
what its imports took: an allocation past that fails, and the figure of each case is its
growth of the child's peak RSS (reset before each case), which must stay under
:data:`RSS_BOUND_MB`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pipelines.errors import PredictError
from pipelines.limits import MAX_STUDY_FILES, dataset_bytes_limit, too_many_pixels
from tests.pipelines.sources.test_dicom import jpeg_bytes, jpeg_ds, make_ds, write

ROOT = Path(__file__).resolve().parents[2]
CAP_MB = 1024  # address space the child may take beyond its imports
RSS_BOUND_MB = 48  # what one case may add to the child's peak RSS
TWO_GB = 2 * 1024**3
NIH_HEADER = b"Image Index,Finding Labels,Patient ID,View Position\n"


# ---------------------------------------------------------------------------------------------
# the hostile files


def _dicom(path: Path, pixel_bytes: int, **tags: Any) -> Path:
    """A chest DX header (8-bit) and a Pixel Data element of ``pixel_bytes``, sparse."""
    ds = make_ds(pixel_data=False, **tags)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    write(ds, path)
    with open(path, "ab") as fh:
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, pixel_bytes))
    os.truncate(path, path.stat().st_size + pixel_bytes)
    return path


def _jpeg_dicom(path: Path, rows: int, columns: int) -> Path:
    """A JPEG baseline DICOM whose header claims ``rows`` x ``columns``; a 16 px stream."""
    ds = jpeg_ds(jpeg_bytes())
    ds.Rows, ds.Columns = rows, columns
    return write(ds, path)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png_bomb(path: Path, side: int, rows: int | None = None) -> Path:
    """A valid greyscale PNG of ``side`` x ``side`` zeros (or only ``rows`` of its rows)."""
    deflate = zlib.compressobj(9)
    line = b"\0" * (side + 1)
    data = b"".join(deflate.compress(line) for _ in range(side if rows is None else rows))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
    png += _png_chunk(b"IDAT", data + deflate.flush()) + _png_chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def _jpeg_bomb(path: Path, side: int) -> Path:
    """A 16 px JPEG whose frame header (SOF0) is patched to claim ``side`` x ``side``."""
    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    path.write_bytes(bytes(data))
    return path


def _deflate_bomb(path: Path, extra: int) -> Path:
    """A deflated chest DICOM whose data set inflates to ``extra`` more bytes (zeros)."""
    write(make_ds(syntax=DeflatedExplicitVRLittleEndian), path)
    with open(path, "rb") as fh:
        read_preamble(fh, False)
        _read_file_meta_info(fh)
        start = fh.tell()
        dataset = zlib.decompress(fh.read(), -zlib.MAX_WBITS)
    deflate = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    body = [deflate.compress(dataset)] + [deflate.compress(zeros) for _ in range(extra >> 20)]
    with open(path, "r+b") as fh:
        fh.truncate(start)
        fh.seek(start)
        fh.write(b"".join(body) + deflate.flush())
    return path


def _long_line(path: Path, header: bytes, size: int = TWO_GB) -> Path:
    """``header`` then a line of ``size`` bytes (NULs, sparse) that never ends."""
    path.write_bytes(header + b"a.png,")
    os.truncate(path, len(header) + size)
    return path


def build(folder: Path) -> None:
    """Every hostile file of :data:`CASES` in ``folder``."""
    _dicom(folder / "dicom_60k.dcm", 60_000 * 60_000, Rows=60_000, Columns=60_000)
    _jpeg_dicom(folder / "jpeg_60k.dcm", 60_000, 60_000)
    _dicom(
        folder / "frames_10k.dcm", 10_000 * 512 * 512, NumberOfFrames=10_000, Rows=512, Columns=512
    )
    _dicom(
        folder / "frames_10k_64px.dcm", 10_000 * 64 * 64, NumberOfFrames=10_000, Rows=64, Columns=64
    )
    _png_bomb(folder / "bomb_8k.png", 8_000)
    _png_bomb(folder / "control_4k.png", 4_000)
    _png_bomb(folder / "bomb_60k.png", 60_000, rows=1)
    _jpeg_bomb(folder / "bomb_8k.jpg", 8_000)
    _deflate_bomb(folder / "deflate_bomb.dcm", 70 << 20)
    _long_line(folder / "Data_Entry_2017.csv", NIH_HEADER)
    long_gz = gzip.compress(NIH_HEADER + b"a.png," + b"\0" * (64 << 20), compresslevel=1)
    (folder / "gz").mkdir()
    (folder / "gz" / "Data_Entry_2017.csv.gz").write_bytes(long_gz)
    (folder / "quote").mkdir()
    (folder / "quote" / "Data_Entry_2017.csv").write_bytes(
        NIH_HEADER + b'a.png,"' + b"x,y,z\n" * 200_000
    )
    _long_line(folder / "studies.csv", b"frontal,lateral\n")
    _long_line(folder / "labels.csv", b"study_uid,Edema\n")
    study = folder / "study"
    study.mkdir()
    for i in range(MAX_STUDY_FILES + 1):
        (study / f"{i:05d}.dcm").touch()


# ---------------------------------------------------------------------------------------------
# the entry points, run in the child


def _ingest(name: str, max_pixels: int | None = None) -> Callable[[Path], Any]:
    def run(folder: Path) -> Any:
        from pipelines.sources.dicom import _inspect_file

        limit = {} if max_pixels is None else {"max_pixels": max_pixels}
        return _inspect_file(folder, name, b"salt", **limit)

    return run


def _decode(name: str, **kw: Any) -> Callable[[Path], Any]:
    def run(folder: Path) -> Any:
        from pipelines.imaging import read_image

        return read_image(folder / name, **kw)

    return run


def _predict_decode(folder: Path) -> Any:
    from pipelines.predict.run import _decode as predict_decode

    return predict_decode(folder / "dicom_60k.dcm", 64)


def _verify(folder: Path) -> Any:
    from pipelines.sources.files import image_header

    return image_header(folder / "bomb_8k.png")


def _nih(table: str) -> Callable[[Path], Any]:
    def run(folder: Path) -> Any:
        from pipelines.sources import ReadOptions
        from pipelines.sources.nih import read

        return read(folder / table, ReadOptions(verify_files=False, workers=1, salt=b"s"))

    return run


def _predict_csv(folder: Path) -> Any:
    from pipelines.predict.studies import collect_studies

    return collect_studies(folder / "studies.csv")


def _dicom_labels(folder: Path) -> Any:
    from pipelines.sources.dicom import read_study_labels

    return read_study_labels(folder / "labels.csv", "ignore")


def _study_folder(folder: Path) -> Any:
    from pipelines.predict.studies import find_study_views

    return find_study_views(folder / "study")


#: case -> (entry point, expected outcome: the error type or ``reject``, then the reason or a
#: phrase of the message)
CASES: dict[str, tuple[Callable[[Path], Any], str, str]] = {
    "60000x60000 DICOM: ingest": (_ingest("dicom_60k.dcm"), "reject", "too_large"),
    "60000x60000 DICOM: decode": (_decode("dicom_60k.dcm"), "DecodeError", "too_large"),
    "60000x60000 DICOM: cxr predict": (_predict_decode, "PredictError", "too_large"),
    "60000x60000 JPEG DICOM: ingest": (_ingest("jpeg_60k.dcm"), "reject", "too_large"),
    "60000x60000 JPEG DICOM: decode": (_decode("jpeg_60k.dcm"), "DecodeError", "too_large"),
    "10,000 frames of 512 px: ingest": (_ingest("frames_10k.dcm"), "reject", "multi_frame"),
    "10,000 frames of 512 px: decode": (_decode("frames_10k.dcm"), "DecodeError", "too_large"),
    "10,000 frames of 64 px: decode": (
        _decode("frames_10k_64px.dcm"),
        "DecodeError",
        "multi_frame",
    ),
    "PNG bomb 8000 px: decode": (_decode("bomb_8k.png"), "DecodeError", "too_large"),
    "PNG bomb 8000 px: ingest verify": (_verify, "reject", "too_large"),
    "PNG claiming 60000 px: decode": (_decode("bomb_60k.png"), "DecodeError", "too_large"),
    "JPEG bomb 8000 px: decode": (_decode("bomb_8k.jpg"), "DecodeError", "too_large"),
    "deflate bomb: ingest": (_ingest("deflate_bomb.dcm", max_pixels=1), "reject", "too_large"),
    "deflate bomb: decode": (
        _decode("deflate_bomb.dcm", max_pixels=1),
        "DecodeError",
        "too_large",
    ),
    "2 GB CSV line: NIH": (_nih("Data_Entry_2017.csv"), "SourceError", "line 2 is longer"),
    "64 MB line in a .csv.gz: NIH": (
        _nih("gz/Data_Entry_2017.csv.gz"),
        "SourceError",
        "line 2 is longer",
    ),
    "unclosed quote over 1 MB: NIH": (
        _nih("quote/Data_Entry_2017.csv"),
        "SourceError",
        "quoted value from line 2",
    ),
    "2 GB CSV line: cxr predict": (_predict_csv, "PredictError", "line 2 is longer"),
    "2 GB CSV line: DICOM labels": (_dicom_labels, "SourceError", "line 2 is longer"),
    "1,001-file study folder: cxr predict": (_study_folder, "PredictError", "more than 1,000"),
}
#: what shows that the RSS figures see an allocation: a 4000 x 4000 PNG within the limit
CONTROL = "control: 4000 x 4000 PNG decoded"
CASES[CONTROL] = (_decode("control_4k.png"), "accepted", "array")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field)) / 1024


def _reset_peak_rss() -> float:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs`` 5); returns the RSS (MB)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_mb("VmRSS:")


def _outcome(value: Any) -> dict[str, str]:
    reason = getattr(value, "reason", None)
    if reason is not None:  # an ingest rejection
        return {"kind": "reject" if not value.row else "accepted", "reason": reason}
    if isinstance(value, tuple) and len(value) == 2:  # image_header's (reason, detail)
        return {"kind": "reject", "reason": value[0]}
    return {"kind": "accepted", "reason": repr(value)[:200]}


def child(folder: str) -> None:
    """Run every case under the address-space cap; print each outcome and RSS growth as JSON."""
    import logging
    import resource

    import pipelines.imaging
    import pipelines.predict.run
    import pipelines.sources.dicom
    import pipelines.sources.nih  # noqa: F401  (the imports are not the cases' memory)

    logging.disable(logging.CRITICAL)
    cap = int(_status_mb("VmSize:") + CAP_MB) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    results = {}
    for name, (run, _, _) in CASES.items():
        before = _reset_peak_rss()
        try:
            result = _outcome(run(Path(folder)))
        except Exception as exc:
            result = {"kind": type(exc).__name__, "reason": f"{getattr(exc, 'reason', '')} {exc}"}
        results[name] = result | {"rss_mb": round(_status_mb("VmHWM:") - before, 1)}
    print(json.dumps(results))


# ---------------------------------------------------------------------------------------------
# the tests


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("hostile")
    build(folder)
    code = f"from tests.pipelines.test_limits import child; child({str(folder)!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", [c for c in CASES if c != CONTROL])
def test_hostile_size_is_refused_with_its_reason_before_allocating(
    outcomes: dict[str, dict[str, Any]], case: str
) -> None:
    _, kind, reason = CASES[case]
    got = outcomes[case]
    assert (got["kind"], reason in got["reason"]) == (kind, True), got
    assert got["rss_mb"] < RSS_BOUND_MB, f"{case}: peak RSS grew {got['rss_mb']} MB"


def test_the_rss_figures_see_a_real_decode(outcomes: dict[str, dict[str, Any]]) -> None:
    got = outcomes[CONTROL]
    assert got["kind"] == "accepted", got
    assert got["rss_mb"] > 4_000 * 4_000 * 4 / 2**20, got  # at least its float32 array


def test_the_limits_name_the_sizes_and_the_param() -> None:
    assert too_many_pixels(7071, 7071, 50_000_000) == ""
    message = too_many_pixels(60_000, 60_000, 50_000_000, "ingest")
    assert "60000 x 60000 = 3,600,000,000 pixels" in message
    assert "50,000,000 (ingest.max_image_pixels)" in message
    assert dataset_bytes_limit(50_000_000) == 6 * 50_000_000 + 64 * 1024**2


def test_predict_refuses_a_deflate_bomb_it_finds_in_a_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.predict.studies import find_study_views

    _deflate_bomb(tmp_path / "study" / "bomb.dcm", 2 << 20)
    monkeypatch.setattr("pipelines.dicom.header.dataset_bytes_limit", lambda: 1 << 20)
    with pytest.raises(PredictError, match=r"bomb\.dcm: too_large: the deflated data set"):
        find_study_views(tmp_path / "study")


@pytest.mark.slow
def test_a_study_folder_of_100000_files_is_refused_after_reading_1001(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.predict import studies

    folder = tmp_path / "archive"
    folder.mkdir()
    for i in range(100_000):
        os.close(os.open(folder / f"{i:06d}.dcm", os.O_CREAT | os.O_WRONLY, 0o644))
    seen = []
    real_scandir = os.scandir

    class Counting:
        def __init__(self, path: Any) -> None:
            self.it = real_scandir(path)

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.it.close()

        def __iter__(self) -> Any:
            for entry in self.it:
                seen.append(entry.name)
                yield entry

    monkeypatch.setattr(studies.os, "scandir", Counting)
    with pytest.raises(PredictError, match="more than 1,000 files"):
        studies.find_study_views(folder)
    assert len(seen) == MAX_STUDY_FILES + 1
