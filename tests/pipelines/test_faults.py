"""Faults: a preprocess killed mid-run then rerun, and outputs that cannot be written.

- SIGKILL: ``python -m pipelines.preprocess`` is killed once it has written a few shards, in a
  folder that also holds a complete earlier run with other params. The killed folder has no
  index, so no reader accepts it; every shard under its final name is whole (atomic writes);
  the rerun removes what the killed run and the earlier one left (shards, temporary files) and
  writes shards, index, rejected CSV and metrics byte-for-byte equal to an uninterrupted run.
  (Training has its own: ``test_sigkill_then_resume_reaches_the_uninterrupted_result`` in
  ``tests/pipelines/test_train.py``.)
- An output folder under a regular file, a read-only output folder (skipped as root, where
  permissions do not bind) and a full disk (``ENOSPC`` from the write, as the OS raises it): each
  of ingest, pair and preprocess exits 2 with one line ``error: <path>: <reason>`` naming the
  output, no traceback, and leaves no partial or temporary file behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipelines.config import load_section
from pipelines.data import ShardDataset
from pipelines.ingest import IngestParams, run_ingest
from pipelines.labels import FINDINGS
from pipelines.pair import PairParams, run_pair
from pipelines.preprocess import PreprocessParams, run_preprocess
from pipelines.schema import STUDY_COLUMNS
from pipelines.stage import run_stage
from tasks.process import child_env

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32


def make_studies(root: Path, n: int) -> pd.DataFrame:
    """``n`` studies of two 64 px PNGs over three splits; a few missing or broken images."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        for view in ("f", "l"):
            px = rng.integers(0, 256, (64, 48 + 8 * (i % 3)), dtype=np.uint8)
            Image.fromarray(px).save(root / f"{i:04d}{view}.png")
        lateral = f"{i:04d}l.png" if i % 7 else ("" if i % 2 else "gone.png")
        row = {
            "study_key": f"s{i:04d}",
            "patient_key": f"p{i // 2:04d}",
            "source": "csv",
            "frontal_id": f"{i}f",
            "frontal_path": f"{i:04d}f.png",
            "frontal_view": "PA",
            "frontal_bits": 8,
            "lateral_id": f"{i}l" if lateral else "",
            "lateral_path": lateral,
            "lateral_bits": 8 if lateral else 0,
            "has_lateral": bool(lateral),
            "sex": "F",
            "age_band": "",
            "split": ("train", "train", "train", "val", "test")[(i // 2) % 5],
        }
        rows.append(row | {f: float((i + k) % 3 == 0) for k, f in enumerate(FINDINGS)})
    (root / "0005f.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")  # a frontal that fails
    df = pd.DataFrame(rows).loc[:, list(STUDY_COLUMNS)]
    df.attrs["data_root"] = str(root)
    return df


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> sha256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def new_shards(out: Path, since_ns: int) -> list[Path]:
    """Shards written at or after ``since_ns`` (files may vanish while we look: the run clears)."""
    found = []
    for path in out.glob("*.images.npy"):
        try:
            if path.stat().st_mtime_ns >= since_ns:
                found.append(path)
        except FileNotFoundError:
            continue
    return found


def stage_env() -> dict[str, str]:
    return child_env({"PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_sigkill_mid_preprocess_then_rerun_equals_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    studies = make_studies(tmp_path / "raw", 60)
    table = tmp_path / "studies.parquet"
    studies.to_parquet(table)
    section = {
        "studies": str(table),
        "image_size": SIZE,
        "shard_size": 2,  # 30 shards: the kill lands long before the last
        "workers": 1,
        "grid": 2,
        "out": "data/prepared",
        "rejected": "data/prepared_rejected.csv",
    }
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump({"preprocess": section}))
    out = work / "data" / "prepared"

    # the uninterrupted run, for reference
    ref = tmp_path / "ref"
    ref_params = PreprocessParams(
        **section | {"out": str(ref / "prepared"), "rejected": str(ref / "rejected.csv")}
    )
    ref_summary = run_preprocess(ref_params, metrics=ref / "metrics.json", grid=ref / "grid.png")
    # a complete earlier run with other params in the folder the killed run will write
    earlier = PreprocessParams(  # every path under work/: nothing lands in the test's cwd
        **section | {"out": str(out), "shard_size": 3, "rejected": str(out.parent / "rej.csv")}
    )
    run_preprocess(earlier, metrics=tmp_path / "m.json", grid=tmp_path / "g.png")
    old_shards = len(list(out.glob("*.images.npy")))
    started = time.time_ns()

    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.preprocess"],
        cwd=work,
        env=stage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if len(new_shards(out, started)) >= 3:
                break
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    log = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{log}"

    # the killed folder: no index, so no reader takes it; every named shard is whole
    assert not (out / "index.json").exists()
    with pytest.raises(FileNotFoundError, match="no shard index"):
        ShardDataset(out, "train")
    named = sorted(out.glob("*.images.npy"))
    assert 3 <= len(named) < old_shards + 30
    for shard in named:
        images = np.load(shard)  # a torn file would fail here (short read / bad header)
        assert images.dtype == np.uint8 and images.shape[1:] == (SIZE, SIZE)
    # what a kill inside a write leaves: a hidden temporary file (planted, to be sure of one)
    (out / ".train-00041.images.npy.k1ll3d.tmp").write_bytes(b"\x93NUMPY torn")

    # the rerun: what `python -m pipelines.preprocess` runs (in this process: no start-up cost)
    monkeypatch.chdir(work)
    run_stage(lambda: run_preprocess(load_section(PreprocessParams, "preprocess")))
    # shards, index: byte for byte the uninterrupted run's (nothing stale, nothing torn)
    assert folder_digest(out) == folder_digest(ref / "prepared")
    assert len(ShardDataset(out, ["train", "val", "test"])) == sum(
        ref_summary["studies_out"].values()
    )
    rejected = (work / "data" / "prepared_rejected.csv").read_bytes()
    assert rejected == (ref / "rejected.csv").read_bytes()
    assert b"0005f.png" in rejected and b"gone.png" in rejected

    def counts(path: Path) -> dict:
        timing = {"seconds", "images_per_s"}
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in timing}

    assert counts(work / "metrics" / "preprocess.json") == counts(ref / "metrics.json")


# ---------------------------------------------------------------------------------------------
# Outputs that cannot be written


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny image-list CSV, its manifest and its studies table."""
    base = tmp_path_factory.mktemp("faults_inputs")
    img = base / "images"
    img.mkdir()
    lines = ["path,patient,study,view"]
    for i in range(6):
        for view in ("PA", "LATERAL"):
            Image.new("L", (20, 24), 40 * i).save(img / f"{i}{view}.png")
            lines.append(f"images/{i}{view}.png,p{i},s{i},{view}")
    (base / "list.csv").write_text("\n".join(lines) + "\n")
    run_ingest(IngestParams(source="csv", input=str(base / "list.csv"), out=str(base / "m")))
    run_pair(PairParams(manifest=str(base / "m" / "manifest.parquet"), out=str(base / "s")), 0)
    return {
        "csv": base / "list.csv",
        "manifest": base / "m" / "manifest.parquet",
        "studies": base / "s" / "studies.parquet",
    }


def stage_call(stage: str, inputs: dict[str, Path], out: Path) -> tuple[Callable, Path]:
    """(the stage run with every output under ``out``, the first file it writes)."""
    if stage == "ingest":
        params = IngestParams(source="csv", input=str(inputs["csv"]), out=str(out))
        return (lambda: run_ingest(params)), out / "manifest.parquet"
    if stage == "pair":
        p = PairParams(manifest=str(inputs["manifest"]), out=str(out))
        return (lambda: run_pair(p, 0)), out / "studies.parquet"
    pre = PreprocessParams(
        studies=str(inputs["studies"]),
        size=16,
        workers=1,
        out=str(out / "prepared"),
        rejected=str(out / "rejected.csv"),
    )

    def call() -> dict:
        return run_preprocess(pre, metrics=out / "m.json", grid=out / "g.png")

    return call, out / "prepared" / "train-00000.images.npy"


def one_line_error(fn: Callable, capsys: pytest.CaptureFixture) -> str:
    """Run ``fn`` as a stage: it must exit 2 with a single ``error:`` line and no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_stage(fn)
    assert info.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert not any("Traceback" in ln for ln in err)
    errors = [ln for ln in err if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == err[-1], err
    return errors[0]


STAGES = ["ingest", "pair", "preprocess"]


@pytest.mark.parametrize("stage", STAGES)
def test_output_under_a_regular_file(stage, inputs, tmp_path, capsys) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    fn, _ = stage_call(stage, inputs, blocker / "out")
    line = one_line_error(fn, capsys)
    assert str(blocker / "out") in line and "Not a directory" in line, line
    assert "a part of the path is a file" in line


@pytest.mark.parametrize("stage", STAGES)
def test_read_only_output_folder(stage, inputs, tmp_path, capsys) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions (see test_output_under_a_regular_file)")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        fn, _ = stage_call(stage, inputs, ro / "out")
        line = one_line_error(fn, capsys)
    finally:
        ro.chmod(0o700)
    assert str(ro / "out") in line and "Permission denied" in line, line


@pytest.mark.parametrize("stage", STAGES)
def test_disk_full(stage, inputs, tmp_path, capsys, monkeypatch) -> None:
    """The first data write fails with ENOSPC halfway through, as write(2) reports it."""

    def full(written: Callable[[object], None]) -> Callable:
        def fail(*args, **kwargs):
            target = args[1] if stage != "preprocess" else args[0]
            written(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no filename, as the OS

        return fail

    def half_file(target: object) -> None:
        if hasattr(target, "write"):
            target.write(b"\x93NUMPY half a shard")
        else:
            Path(target).write_bytes(b"PAR1 half a file")

    if stage == "preprocess":
        monkeypatch.setattr(np.lib.format, "write_array_header_1_0", full(half_file))
    else:
        monkeypatch.setattr(pd.DataFrame, "to_parquet", full(half_file))
    out = tmp_path / "out"
    fn, first = stage_call(stage, inputs, out)
    line = one_line_error(fn, capsys)
    assert line == (
        f"error: cannot write {first}: No space left on device "
        "(the disk is full; free space or point the output elsewhere)"
    )
    left = [p.name for p in out.rglob("*") if p.is_file()]
    assert first.name not in left and not [n for n in left if n.endswith(".tmp")], left


@pytest.mark.slow
def test_stage_command_reports_unwritable_output_in_one_line(inputs, tmp_path) -> None:
    """The real entry point (``python -m pipelines.ingest``), as ``dvc repro`` runs it."""
    (tmp_path / "blocker").write_text("")
    section = {"source": "csv", "input": str(inputs["csv"]), "out": "blocker/manifest"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ingest": section}))
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.ingest"],
        cwd=tmp_path,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write blocker/manifest/manifest.parquet: Not a directory")
