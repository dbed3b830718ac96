"""Bad-input campaign: hostile corpora generated at test time, run end to end.

Two corpora, built with pydicom / Pillow / numpy in a temporary folder (16 px images), go through
the real stage functions (``run_ingest`` -> ``run_pair`` -> ``run_preprocess``) as ``dvc repro``
would run them:

- a DICOM folder (source ``dicom``) of 10 patients x 2 studies x (PA + lateral) with hostile
  files planted among them;
- an image-list CSV (source ``csv``) of PNG / JPEG files, with hostile files and rows.

Each hostile input is a :class:`Case`: the stage that must reject it and the reason code it must
give in that stage's rejected file (ingest ``rejected.csv``, pair ``rejected.csv``, preprocess's
rejected CSV), or ``accepted`` for inputs that look hostile but are valid (16-bit and RGBA PNGs,
a PNG named ``.jpg``, a Latin-1 patient id). The tests check that every run finishes, that each
case is where it must be with its reason (and no good input is rejected), that counts add up at
every stage (in = accepted + rejected), that no patient is in two splits, that no planted PHI
reaches an output, and that the "hostile but valid" images decode to the right pixels.

Inputs that are unusable as a whole (an empty CSV, a wrong delimiter, text that is not UTF-8 ...)
stop ingest with one line ``error: <file>: <reason>`` (exit 2) and no outputs: there is no row to
reject. Text that is not UTF-8 is not guessed at (cp1252? Latin-1?): a wrong guess would spell one
patient id two ways, i.e. make two patients of one, which can put one person in two splits.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import MPEG2MPML, generate_uid

from pipelines.data import ShardDataset, read_index
from pipelines.imaging import to_square
from pipelines.ingest import IngestParams, run_ingest
from pipelines.pair import PairParams, run_pair
from pipelines.preprocess import PreprocessParams, run_preprocess
from pipelines.schema import SPLITS
from pipelines.stage import run_stage
from tests.pipelines.sources.test_dicom import jpeg_bytes, jpeg_ds, make_ds, pixels, write

SIZE = 16
PHI = "PHI-"  # every planted patient id starts with it; no output may contain it


@dataclass(frozen=True)
class Case:
    """One hostile (or hostile-looking) input and where it must end up.

    Attributes:
        name: what is wrong with it.
        path: how the rejected file names it (image path relative to the data root, or
            ``list.csv:<line>`` for a CSV row).
        stage: ``ingest``, ``pair``, ``preprocess`` (the stage whose rejected file lists it), or
            ``accepted`` (it must reach the prepared arrays).
        reason: the reason code in that rejected file ('' when accepted).
    """

    name: str
    path: str
    stage: str
    reason: str = ""


@dataclass
class Run:
    """The outputs of one end-to-end run."""

    root: Path
    cases: list[Case]
    n_planted: int  # inputs the ingest reader must count
    ingest: dict[str, Any]
    pair: dict[str, Any]
    preprocess: dict[str, Any]
    manifest: pd.DataFrame
    studies: pd.DataFrame
    rejected: dict[str, pd.DataFrame]  # stage -> its rejected file
    out: Path


def run_pipeline(source: str, input_path: Path, out: Path, labels: Path | None = None) -> dict:
    """ingest -> pair -> preprocess with the stages' own run functions, outputs under ``out``."""
    ingest = run_ingest(
        IngestParams(
            source=source,
            input=str(input_path),
            labels=str(labels) if labels else None,
            workers=1,
            out=str(out / "manifest"),
        )
    )
    pair = run_pair(
        PairParams(manifest=str(out / "manifest" / "manifest.parquet"), out=str(out / "studies")),
        seed=1337,
    )
    return {"ingest": ingest, "pair": pair}


def finish_run(out: Path, first: dict) -> dict:
    params = PreprocessParams(
        studies=str(out / "studies" / "studies.parquet"),
        size=SIZE,
        shard_size=4,
        workers=1,
        grid=2,
        out=str(out / "prepared"),
        rejected=str(out / "prepared_rejected.csv"),
    )
    pre = run_preprocess(params, metrics=out / "metrics.json", grid=out / "grid.png")
    return first | {"preprocess": pre}


def collect(root: Path, cases: list[Case], n_planted: int, out: Path, summaries: dict) -> Run:
    return Run(
        root=root,
        cases=cases,
        n_planted=n_planted,
        ingest=summaries["ingest"],
        pair=summaries["pair"],
        preprocess=summaries["preprocess"],
        manifest=pd.read_parquet(out / "manifest" / "manifest.parquet"),
        studies=pd.read_parquet(out / "studies" / "studies.parquet"),
        rejected={
            "ingest": pd.read_csv(out / "manifest" / "rejected.csv", dtype=str),
            "pair": pd.read_csv(out / "studies" / "rejected.csv", dtype=str),
            "preprocess": pd.read_csv(out / "prepared_rejected.csv", dtype=str),
        },
        out=out,
    )


# ---------------------------------------------------------------------------------------------
# The DICOM corpus


def study_uid(patient: int, study: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{patient + 1}.{study + 1}"


def dicom_image(patient: str, study: str, view: str | None, seed: int, **kw: Any) -> Dataset:
    return make_ds(
        generate_uid(), patient=patient, study=study, view_position=view, seed=seed, **kw
    )


def build_dicom_corpus(root: Path) -> tuple[list[Case], int, Path]:
    """10 patients x 2 studies of PA + LL (the last patient frontal-only), plus hostile files.

    Returns:
        (cases, number of inputs the reader must count, the labels CSV).
    """
    cases: list[Case] = []
    planted = 0
    labels = ["study_uid,Cardiomegaly,Effusion"]
    for p in range(10):
        for s in range(2):
            uid = study_uid(p, s)
            seed = 10 * p + s
            write(dicom_image(f"{PHI}P{p:02d}", uid, "PA", seed), root / f"P{p:02d}/s{s}/pa.dcm")
            planted += 1
            if p < 9:
                lat = dicom_image(f"{PHI}P{p:02d}", uid, "LL", seed + 5)
                write(lat, root / f"P{p:02d}/s{s}/lat.dcm")
                planted += 1
            labels.append(f"{uid},{(p + s) % 2},{int(p == 3)}")
    (root / "labels.csv").write_text("\n".join(labels) + "\n")  # not an input: the labels option
    (root / "P00" / "loop").symlink_to(root / "P00", target_is_directory=True)  # folder loop
    (root / "P01" / "up").symlink_to(root, target_is_directory=True)  # loop through the root

    def put(name: str, rel: str, stage: str, reason: str, ds: Dataset | None = None, raw=None):
        nonlocal planted
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if ds is not None:
            write(ds, path)
        elif raw is not None:
            path.write_bytes(raw)
        planted += 1
        cases.append(Case(name, rel, stage, reason))
        return path

    h = "hostile"
    pid, uid0 = f"{PHI}P00", study_uid(0, 0)
    # --- ingest must reject --------------------------------------------------------------------
    put("zero-byte DICOM", f"{h}/zero_bytes.dcm", "ingest", "empty_file", raw=b"")
    cut = put(
        "truncated DICOM",
        f"{h}/truncated.dcm",
        "ingest",
        "truncated",
        dicom_image(pid, uid0, "PA", 1),
    )
    cut.write_bytes(cut.read_bytes()[:-100])
    put(
        "text file named .dcm",
        f"{h}/notes.dcm",
        "ingest",
        "not_dicom",
        raw=b"patient,study\nnot a DICOM file at all\n" * 8,
    )
    png = io.BytesIO()
    Image.fromarray(pixels(3).astype(np.uint8)).save(png, format="PNG")
    put("PNG named .dcm", f"{h}/photo.dcm", "ingest", "not_dicom", raw=png.getvalue())
    put(
        "missing PixelData",
        f"{h}/no_pixel_data.dcm",
        "ingest",
        "no_pixel_data",
        dicom_image(pid, uid0, "PA", 2, pixel_data=False),
    )
    mpeg = dicom_image(pid, uid0, "PA", 3, syntax=MPEG2MPML, pixel_data=False)
    mpeg.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\0" * 60])
    mpeg["PixelData"].VR = "OB"
    put(
        "unsupported transfer syntax (MPEG2)",
        f"{h}/mpeg2.dcm",
        "ingest",
        "unsupported_transfer_syntax",
        mpeg,
    )
    private = dicom_image(pid, uid0, "PA", 4, syntax="1.2.3.4.5.6.7", pixel_data=False)
    private.PixelData = encapsulate([b"opaque" * 8])
    private["PixelData"].VR = "OB"
    path = root / h / "unknown_syntax.dcm"
    private.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    planted += 1
    cases.append(
        Case(
            "unknown transfer syntax UID",
            f"{h}/unknown_syntax.dcm",
            "ingest",
            "unsupported_transfer_syntax",
        )
    )
    put(
        "CT modality",
        f"{h}/ct.dcm",
        "ingest",
        "unsupported_modality",
        dicom_image(pid, uid0, "PA", 5, modality="CT"),
    )
    put(
        "MR modality",
        f"{h}/mr.dcm",
        "ingest",
        "unsupported_modality",
        dicom_image(pid, uid0, "PA", 6, modality="MR"),
    )
    put(
        "no view information",
        f"{h}/no_view.dcm",
        "ingest",
        "no_view",
        dicom_image(pid, uid0, None, 7),
    )
    multi = dicom_image(pid, uid0, "PA", 8, pixel_data=False, NumberOfFrames=2)
    multi.PixelData = np.concatenate([pixels(1), pixels(2)]).tobytes()
    put("multi-frame DICOM", f"{h}/multi_frame.dcm", "ingest", "multi_frame", multi)
    palette = dicom_image(pid, uid0, "PA", 9, pixel_data=False)
    palette.PhotometricInterpretation = "PALETTE COLOR"
    palette.BitsAllocated, palette.BitsStored, palette.HighBit = 8, 8, 7
    palette.PixelData = pixels(9).astype(np.uint8).tobytes()
    put(
        "PALETTE COLOR photometric",
        f"{h}/palette.dcm",
        "ingest",
        "unsupported_photometric",
        palette,
    )
    put(
        "BitsStored > BitsAllocated",
        f"{h}/bits_stored_20.dcm",
        "ingest",
        "corrupt",
        dicom_image(pid, uid0, "PA", 10, BitsStored=20, HighBit=19),
    )
    dup = root / "zz_copies" / "duplicate.dcm"  # sorts after P00/: the original is kept
    dup.parent.mkdir()
    shutil.copy(root / "P00/s0/pa.dcm", dup)
    planted += 1
    cases.append(
        Case(
            "duplicated image id (same SOPInstanceUID)",
            "zz_copies/duplicate.dcm",
            "ingest",
            "duplicate_image_id",
        )
    )
    (root / h / "dangling_link.dcm").symlink_to(root / "nowhere.dcm")
    (root / h / "looping_link.dcm").symlink_to(root / h / "looping_link.dcm")
    planted += 2
    cases += [
        Case("symlink to nothing", f"{h}/dangling_link.dcm", "ingest", "broken_link"),
        Case("symlink loop (file)", f"{h}/looping_link.dcm", "ingest", "broken_link"),
    ]
    # --- pair must reject ----------------------------------------------------------------------
    put(
        "decubitus view (OTHER)",
        f"{h}/decubitus.dcm",
        "pair",
        "other_view",
        dicom_image(f"{PHI}P02", study_uid(2, 0), "LLD", 11),
    )
    small = dicom_image(f"{PHI}P01", study_uid(1, 0), "PA", 12, pixel_data=False)
    small.Rows, small.Columns = 8, 8
    small.PixelData = pixels(12, 8, 8).tobytes()
    put("second, smaller PA in a study", f"{h}/second_pa.dcm", "pair", "extra_frontal", small)
    put(
        "lateral-only study",
        f"{h}/lateral_only.dcm",
        "pair",
        "no_frontal",
        dicom_image(f"{PHI}P20", "1.2.826.0.1.3680043.8.498.99.1", "LL", 13),
    )
    conflict = "1.2.826.0.1.3680043.8.498.98.1"
    put(
        "one study UID, two patient ids (a)",
        f"{h}/conflict_a.dcm",
        "pair",
        "study_patient_conflict",
        dicom_image(f"{PHI}P21", conflict, "PA", 14),
    )
    put(
        "one study UID, two patient ids (b)",
        f"{h}/conflict_b.dcm",
        "pair",
        "study_patient_conflict",
        dicom_image(f"{PHI}P22", conflict, "LL", 15),
    )
    # --- preprocess must reject (the header is fine; the pixels are not) ------------------------
    jpeg = jpeg_ds(jpeg_bytes(16), generate_uid())
    jpeg.PatientID, jpeg.StudyInstanceUID = f"{PHI}P23", "1.2.826.0.1.3680043.8.498.97.1"
    jpeg.Rows, jpeg.Columns = 32, 32  # the JPEG stream itself is 16 x 16
    put(
        "JPEG frame size differs from Rows/Columns",
        f"{h}/jpeg_wrong_size.dcm",
        "preprocess",
        "decode_failed",
        jpeg,
    )
    put(
        "lateral of a study whose frontal failed",
        f"{h}/jpeg_wrong_size_lat.dcm",
        "preprocess",
        "frontal_rejected",
        dicom_image(f"{PHI}P23", "1.2.826.0.1.3680043.8.498.97.1", "LL", 17),
    )
    bad_lut = dicom_image(f"{PHI}P24", "1.2.826.0.1.3680043.8.498.96.1", "LL", 18)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]  # 4 entries announced
    item.add_new(0x00283006, "US", [1, 2])  # 2 given
    bad_lut.VOILUTSequence = Sequence([item])
    put(
        "malformed VOI LUT (lateral)",
        f"{h}/bad_voi_lut.dcm",
        "preprocess",
        "decode_failed",
        bad_lut,
    )
    put(
        "frontal of the malformed-LUT study (kept frontal-only)",
        f"{h}/bad_voi_lut_pa.dcm",
        "accepted",
        "",
        dicom_image(f"{PHI}P24", "1.2.826.0.1.3680043.8.498.96.1", "PA", 19),
    )
    # --- accepted although odd -----------------------------------------------------------------
    latin1 = dicom_image(None, "1.2.826.0.1.3680043.8.498.95.1", "PA", 20)
    latin1.add_new(0x00100020, "LO", b"PHI-M\xfcller")  # Latin-1, no SpecificCharacterSet
    put(
        "Latin-1 patient id, no SpecificCharacterSet",
        f"{h}/latin1_patient.dcm",
        "accepted",
        "",
        latin1,
    )
    return cases, planted, root / "labels.csv"


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("bad_dicom")
    root = base / "raw"
    root.mkdir()
    cases, planted, labels = build_dicom_corpus(root)
    out = base / "out"
    first = run_pipeline("dicom", root, out, labels)
    # a file that disappears between the stages (a moved data root, a cleanup job)
    vanished = "P05/s1/pa.dcm"
    (root / vanished).unlink()
    cases += [
        Case("frontal deleted after ingest", vanished, "preprocess", "missing_file"),
        Case(
            "lateral of a study whose frontal vanished",
            "P05/s1/lat.dcm",
            "preprocess",
            "frontal_rejected",
        ),
    ]
    return collect(root, cases, planted, out, finish_run(out, first))


# ---------------------------------------------------------------------------------------------
# The image-list CSV corpus


def gray16() -> np.ndarray:
    """A 16-bit gradient over the full range (an 8-bit reading would saturate or go black)."""
    y, x = np.mgrid[0:20, 0:24]
    return ((x * 20 + y * 13) * 65535 // (23 * 20 + 19 * 13)).astype(np.uint16)


def rgba() -> np.ndarray:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, size=(18, 22, 4), dtype=np.uint8)
    arr[..., 3] = np.linspace(0, 255, 22, dtype=np.uint8)[None, :]  # alpha ramps left to right
    return arr


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds no pixels (Pillow refuses it as a bomb at open)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def build_csv_corpus(root: Path) -> tuple[list[Case], int, Path]:
    """6 patients x 2 studies of PA + lateral PNGs, plus hostile files and rows."""
    img = root / "images"
    img.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["path,patient,study,view,Cardiomegaly,labels"]
    cases: list[Case] = []

    def row(path: str, patient: str, study: str, view: str, card: str = "", terms: str = ""):
        lines.append(f"{path},{patient},{study},{view},{card},{terms}")
        return f"list.csv:{len(lines)}"

    def png(name: str, h: int = 20, w: int = 24) -> str:
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(img / name)
        return f"images/{name}"

    for p in range(6):
        for s in range(2):
            row(png(f"c{p}s{s}_pa.png"), f"{PHI}C{p}", f"C{p}-S{s}", "PA", str((p + s) % 2))
            row(png(f"c{p}s{s}_lat.png"), f"{PHI}C{p}", f"C{p}-S{s}", "LATERAL", "", "")

    # --- accepted although odd: must decode to the right pixels --------------------------------
    Image.fromarray(gray16()).save(img / "gray16.png")
    assert Image.open(img / "gray16.png").mode.startswith("I")
    row("images/gray16.png", f"{PHI}G", "G-1", "PA", "1")
    row(png("g_lat.png"), f"{PHI}G", "G-1", "LATERAL")
    Image.fromarray(rgba(), "RGBA").save(img / "rgba.png")
    row("images/rgba.png", f"{PHI}R", "R-1", "AP", "0")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(
        img / "png_named.jpg", format="PNG"
    )
    row("images/png_named.jpg", f"{PHI}M", "M-1", "PA")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(
        img / "jpeg_named.png", format="JPEG", quality=95
    )
    row("images/jpeg_named.png", f"{PHI}M", "M-1", "LL")
    cases += [
        Case("16-bit grey PNG", "images/gray16.png", "accepted"),
        Case("RGBA PNG", "images/rgba.png", "accepted"),
        Case("PNG named .jpg", "images/png_named.jpg", "accepted"),
        Case("JPEG named .png", "images/jpeg_named.png", "accepted"),
    ]
    # --- ingest must reject ----------------------------------------------------------------------
    (img / "text_named.png").write_text("not an image\n" * 10)
    row("images/text_named.png", f"{PHI}T", "T-1", "PA")
    row("images/missing.png", f"{PHI}T", "T-2", "PA")
    (img / "loop.png").symlink_to(img / "loop.png")
    row("images/loop.png", f"{PHI}T", "T-3", "PA")
    (img / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    row("images/bomb.png", f"{PHI}T", "T-4", "PA")
    cases += [
        Case("text file named .png", "images/text_named.png", "ingest", "unreadable_image"),
        Case("listed image missing", "images/missing.png", "ingest", "missing_file"),
        Case("symlink loop (file)", "images/loop.png", "ingest", "unreadable_image"),
        Case(
            "decompression bomb (PNG header: 100000 x 100000)",
            "images/bomb.png",
            "ingest",
            "too_large",  # the decoder's reason for it too (pipelines.limits)
        ),
        Case(
            "label out of domain (code 2)",
            row(png("lab_a.png"), f"{PHI}L", "L-1", "PA", "2"),
            "ingest",
            "label_out_of_domain",
        ),
        Case(
            "label out of domain (unknown term)",
            row(png("lab_b.png"), f"{PHI}L", "L-2", "PA", "", "Unicorn"),
            "ingest",
            "label_out_of_domain",
        ),
        Case(
            "duplicated image id (same path twice)",
            row("./images/c0s0_pa.png", f"{PHI}C0", "C0-S0", "PA"),
            "ingest",
            "duplicate_image_id",
        ),
        Case("blank patient id", row(png("nopat.png"), "", "N-1", "PA"), "ingest", "missing_value"),
        Case(
            "path climbing out of the image root",
            row("../outside.png", f"{PHI}O", "O-1", "PA"),
            "ingest",
            "path_outside_root",
        ),
    ]
    # --- pair must reject ------------------------------------------------------------------------
    row(png("oblique.png"), f"{PHI}C1", "C1-S0", "OBLIQUE")
    row(png("conf_a.png"), f"{PHI}X1", "X-1", "PA")
    row(png("conf_b.png"), f"{PHI}X2", "X-1", "LATERAL")
    cases += [  # pair names the image path, not the CSV line
        Case("oblique view (OTHER)", "images/oblique.png", "pair", "other_view"),
        Case(
            "one study id, two patient ids (a)",
            "images/conf_a.png",
            "pair",
            "study_patient_conflict",
        ),
        Case(
            "one study id, two patient ids (b)",
            "images/conf_b.png",
            "pair",
            "study_patient_conflict",
        ),
    ]
    # --- preprocess must reject (header fine, pixels cut short) ----------------------------------
    whole = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(whole, format="PNG")
    (img / "truncated.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    row("images/truncated.png", f"{PHI}U", "U-1", "PA")
    row(png("u_lat.png"), f"{PHI}U", "U-1", "LATERAL")
    cases += [
        Case("truncated PNG (header intact)", "images/truncated.png", "preprocess", "truncated"),
        Case(
            "lateral of a study whose frontal failed",
            "images/u_lat.png",
            "preprocess",
            "frontal_rejected",
        ),
    ]
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return cases, len(lines) - 1, root / "list.csv"


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("bad_csv")
    root = base / "raw"
    cases, n_rows, table = build_csv_corpus(root)
    out = base / "out"
    first = run_pipeline("csv", table, out)
    return collect(root, cases, n_rows, out, finish_run(out, first))


# ---------------------------------------------------------------------------------------------
# What every run must satisfy


def where(run: Run) -> dict[str, tuple[str, str]]:
    """path -> (stage, reason) over the three rejected files (a path is listed once at most)."""
    found: dict[str, tuple[str, str]] = {}
    for stage, df in run.rejected.items():
        for path, reason in zip(df["path"], df["reason"], strict=True):
            assert path not in found, f"{path} rejected twice: {found[path]} and {stage}"
            found[path] = (stage, reason)
    return found


def prepared_paths(run: Run) -> set[str]:
    """Image paths that reached the prepared arrays (frontal, and lateral where kept)."""
    meta = ShardDataset(run.out / "prepared", list(SPLITS)).meta
    studies = run.studies.set_index("study_key").loc[meta["study_key"]]
    laterals = studies.loc[meta["has_lateral"].to_numpy(), "lateral_path"]
    return set(studies["frontal_path"]) | set(laterals)


@pytest.fixture(params=["dicom", "csv"])
def run(request: pytest.FixtureRequest) -> Run:
    return request.getfixturevalue(f"{request.param}_run")


def test_each_case_is_rejected_by_its_stage_with_its_reason(run: Run) -> None:
    found = where(run)
    expected = {c.path: (c.stage, c.reason) for c in run.cases if c.stage != "accepted"}
    got = {p: found.get(p, ("accepted?", "")) for p in expected}
    assert got == expected
    # and nothing else was rejected: every good input made it through
    assert set(found) == set(expected)
    reached = prepared_paths(run)
    accepted = {c.path for c in run.cases if c.stage == "accepted"}
    assert accepted <= reached
    assert not reached & set(expected)


def test_every_rejection_names_the_input_and_says_why(run: Run) -> None:
    for stage, df in run.rejected.items():
        assert list(df.columns[:4]) == ["source", "path", "reason", "detail"], stage
        assert df[["source", "path", "reason", "detail"]].notna().all().all(), stage
        assert (df["detail"].str.len() > 10).all(), stage


def test_counts_add_up_at_every_stage(run: Run) -> None:
    ing, pair, pre = run.ingest, run.pair, run.preprocess
    # ingest: every planted input is accepted or rejected
    assert ing["inputs"] == run.n_planted == ing["images"] + len(run.rejected["ingest"])
    assert sum(ing["rejected"].values()) == len(run.rejected["ingest"])
    # pair: every manifest image is used in a study or rejected
    used = pair["studies"] + pair["dual_view"]
    assert len(run.manifest) == ing["images"] == used + len(run.rejected["pair"])
    assert sum(pair["images_unused"].values()) == len(run.rejected["pair"])
    # preprocess: every study is written or dropped; every image decoded or rejected
    assert sum(pre["studies_in"].values()) == pair["studies"] == len(run.studies)
    assert (
        sum(pre["studies_in"].values()) == sum(pre["studies_out"].values()) + pre["studies_dropped"]
    )
    assert pre["images_in"] == used == pre["images_decoded"] + pre["images_rejected"]
    assert pre["images_rejected"] == len(run.rejected["preprocess"])
    index = read_index(run.out / "prepared")
    assert sum(e["n"] for s in SPLITS for e in index["splits"][s]) == sum(
        pre["studies_out"].values()
    )


def test_split_is_by_patient_everywhere(run: Run) -> None:
    # several patients have two studies; each patient's studies share one split ...
    per_patient = run.studies.groupby("patient_key")["split"].nunique()
    assert (per_patient == 1).all()
    assert (run.studies.groupby("patient_key").size() >= 2).sum() >= 6
    # ... in the prepared arrays too, and the splits are not trivially one
    meta = ShardDataset(run.out / "prepared", list(SPLITS)).meta
    split_of = {}
    for split in SPLITS:
        part = ShardDataset(run.out / "prepared", split).meta
        for key in part["patient_key"]:
            assert split_of.setdefault(key, split) == split
    assert len(set(split_of.values())) >= 2 and len(split_of) == meta["patient_key"].nunique()


def test_no_planted_phi_in_any_output(run: Run) -> None:
    for path in sorted(run.out.rglob("*")):
        if path.is_file() and path.suffix in (".csv", ".json", ".parquet"):
            data = path.read_bytes()
            assert PHI.encode() not in data, path
            assert b"M\xfcller" not in data and "Müller".encode() not in data, path


def test_dicom_details_name_the_specific_problem(dicom_run: Run) -> None:
    details = {
        p: d
        for df in dicom_run.rejected.values()
        for p, d in zip(df["path"], df["detail"], strict=True)
    }
    assert "'CT'" in details["hostile/ct.dcm"] and "'MR'" in details["hostile/mr.dcm"]
    assert "MPEG2" in details["hostile/mpeg2.dcm"]
    assert "'1.2.3.4.5.6.7'" in details["hostile/unknown_syntax.dcm"]
    assert "2 frames" in details["hostile/multi_frame.dcm"]
    assert "PALETTE COLOR" in details["hostile/palette.dcm"]
    assert "100 bytes" in details["hostile/truncated.dcm"]
    assert "P00/s0/pa.dcm" in details["zz_copies/duplicate.dcm"]
    assert "loops" in details["hostile/looping_link.dcm"]
    assert "points to nothing" in details["hostile/dangling_link.dcm"]
    assert details["hostile/decubitus.dcm"].endswith("'LLD'")
    assert details["hostile/bad_voi_lut.dcm"].startswith("lateral: modality/VOI LUT")
    assert "frontal" in details["P05/s1/lat.dcm"]
    # the folder loops were walked once: no path through a loop was read
    assert not dicom_run.manifest["path"].str.contains("loop/|up/").any()
    # the Latin-1 patient id became a key like any other
    latin = dicom_run.manifest.set_index("path").loc["hostile/latin1_patient.dcm"]
    assert len(latin["patient_key"]) >= 16 and "PHI" not in latin["patient_key"]


def test_preprocess_actions_keep_or_drop_the_study(dicom_run: Run) -> None:
    rej = dicom_run.rejected["preprocess"].set_index("path")
    assert rej.loc["hostile/jpeg_wrong_size.dcm", "action"] == "study_dropped"
    assert rej.loc["hostile/jpeg_wrong_size_lat.dcm", "action"] == "study_dropped"
    assert rej.loc["hostile/bad_voi_lut.dcm", "action"] == "lateral_dropped"
    assert dicom_run.preprocess["studies_dropped"] == 2
    assert dicom_run.preprocess["laterals_dropped"] == 1


def test_hostile_but_valid_images_decode_to_the_right_pixels(csv_run: Run) -> None:
    ds = ShardDataset(csv_run.out / "prepared", list(SPLITS))
    frontal = dict(
        zip(
            csv_run.studies.set_index("study_key").loc[ds.meta["study_key"], "frontal_path"],
            range(len(ds)),
            strict=True,
        )
    )
    lateral_of = csv_run.studies.set_index("lateral_path")["study_key"]

    def prepared(path: str, view: str = "frontal") -> np.ndarray:
        if view == "frontal":
            return ds[frontal[path]]["frontal"][0].numpy()
        i = list(ds.meta["study_key"]).index(lateral_of[path])
        return ds[i]["lateral"][0].numpy()

    img = csv_run.root / "images"
    # 16 bits: the full range is used (an 8-bit reading would give a black or white image)
    want16 = to_square(gray16().astype(np.float32) / 65535.0, SIZE)
    np.testing.assert_array_equal(prepared("images/gray16.png"), want16)
    assert prepared("images/gray16.png").max() > 200
    # RGBA: luminance composited onto black by alpha (the left edge, alpha 0, is black)
    a = rgba().astype(np.float32)
    luma = (a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)) * a[..., 3] / 255.0**2
    np.testing.assert_allclose(
        prepared("images/rgba.png").astype(int), to_square(luma, SIZE).astype(int), atol=1
    )
    # misnamed files: read by content
    want = to_square(np.asarray(Image.open(img / "png_named.jpg"), np.float32) / 255.0, SIZE)
    np.testing.assert_array_equal(prepared("images/png_named.jpg"), want)
    with Image.open(img / "jpeg_named.png") as im:
        assert im.format == "JPEG"
        want = to_square(np.asarray(im.convert("L"), np.float32) / 255.0, SIZE)
    np.testing.assert_array_equal(prepared("images/jpeg_named.png", "lateral"), want)
    sizes = csv_run.manifest.set_index("path")
    assert sizes.loc["images/gray16.png", ["width", "height", "bits"]].tolist() == [24, 20, 16]
    assert sizes.loc["images/rgba.png", "photometric"] == "RGBA"


def test_csv_details_name_the_specific_problem(csv_run: Run) -> None:
    rej = csv_run.rejected["ingest"].set_index("path")["detail"]
    lab = [c.path for c in csv_run.cases if c.reason == "label_out_of_domain"]
    assert rej[lab[0]] == "column 'Cardiomegaly' has value '2'"
    assert rej[lab[1]] == "unknown label 'unicorn'"
    assert "symbolic links" in rej["images/loop.png"]
    assert "exceeds limit" in rej["images/bomb.png"]
    pre = csv_run.rejected["preprocess"].set_index("path")
    assert pre.loc["images/truncated.png", "action"] == "study_dropped"


# ---------------------------------------------------------------------------------------------
# Inputs unusable as a whole: one line naming the file and the reason, exit 2, no outputs

GOOD_HEADER = b"path,patient,study,view\n"


@pytest.mark.parametrize(
    ("case", "source", "content", "message"),
    [
        ("empty CSV (0 bytes)", "csv", b"", r"list\.csv: image-list CSV is empty \(0 bytes\)"),
        ("header only", "csv", GOOD_HEADER, "has a header but no data rows"),
        (
            "missing column",
            "csv",
            b"path,patient,view\na.png,p,PA\n",
            r"lacks required column\(s\) 'study'",
        ),
        (
            "wrong delimiter",
            "csv",
            b"path;patient;study;view\na.png;p;s;PA\n",
            "wrong delimiter.*semicolon-separated",
        ),
        (
            "not UTF-8 (Latin-1 name)",
            "csv",
            GOOD_HEADER + b"a.png,PHI-M\xfcller,s,PA\n",
            r"not UTF-8 text: byte 0xfc at byte offset 35 \(line 2\)",
        ),
        (  # pandas would take the first fields as an index and shift every row's values
            "first row with extra fields",
            "csv",
            GOOD_HEADER + b"a.png,p,s,PA,extra,cells\nb.png,q,t,PA\n",
            "not a well-formed CSV: line 2 has 6 fields but the header has 4",
        ),
        (  # an unquoted comma in a value: every later value of the row moves one column
            "unquoted comma in a later row",
            "csv",
            GOOD_HEADER + b"a.png,p,s,PA\nb.png,Doe, Jane,t,PA\n",
            "not a well-formed CSV: line 3 has 5 fields but the header has 4",
        ),
        (
            "DICOM labels CSV not UTF-8",
            "dicom",
            b"study_uid,Effusion\n1.2\xe9,1\n",
            r"labels\.csv: labels CSV is not UTF-8 text: byte 0xe9",
        ),
        (
            "DICOM labels out of domain",
            "dicom",
            b"study_uid,Effusion\n1.2.3,2\n",
            r"labels\.csv: line 2, column 'Effusion': value '2'",
        ),
    ],
)
def test_unusable_input_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str, source: str, content, message: str
) -> None:
    if source == "csv":
        (tmp_path / "list.csv").write_bytes(content)
        params = IngestParams(source="csv", input=str(tmp_path / "list.csv"), out="out")
        named = "list.csv"
    else:
        folder = tmp_path / "dicom"
        write(dicom_image(f"{PHI}P0", "1.2.3", "PA", 0), folder / "a.dcm")
        (tmp_path / "labels.csv").write_bytes(content)
        params = IngestParams(
            source="dicom",
            input=str(folder),
            labels=str(tmp_path / "labels.csv"),
            workers=1,
            out=str(tmp_path / "out"),
        )
        named = "labels.csv"
    params = params.model_copy(update={"out": str(tmp_path / "out")})
    with pytest.raises(SystemExit) as info:
        run_stage(lambda: run_ingest(params))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = err[-1]
    assert line.startswith("error: ") and named in line, (case, err)
    assert re.search(message, line), (case, line)
    assert not any("Traceback" in e for e in err)
    assert PHI not in line and "ller" not in line  # the bad cell is located, not quoted
    assert not (tmp_path / "out").exists()  # nothing half-written for DVC to pick up
