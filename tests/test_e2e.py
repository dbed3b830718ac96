"""End to end: the whole DAG of dvc.yaml at toy scale, as `make demo` runs it.

The ``pipeline_repo`` fixture (tests/conftest.py) reproduces every stage once per session. These
tests then check what a team relies on: DVC caches each stage, a training-only change leaves
the data stages alone, no header PHI reaches any output, the exported model answers ``cxr
predict`` on a DICOM study, and a second clone gets the same results from the DVC remote
without recomputing.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipelines.evaluation.gate import reference_path
from pipelines.imaging import read_image
from pipelines.labels import FINDINGS
from tests.conftest import dicom_phi_values, dvc, git, repro, stage_env

pytestmark = pytest.mark.slow

STAGES = ["synthesize", "ingest", "pair", "preprocess", "augment", "train", "evaluate", "export"]


def test_every_stage_ran_and_a_second_repro_skips_them_all(pipeline_repo: Path) -> None:
    log = (pipeline_repo / "repro.log").read_text()
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
    again = repro(pipeline_repo)
    assert again.returncode == 0, again.stderr
    assert "Running stage" not in again.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout
    status = json.loads(dvc(pipeline_repo, "status", "--json").stdout or "{}")
    assert status == {}


def test_a_training_param_change_invalidates_train_only(pipeline_repo: Path) -> None:
    params_path = pipeline_repo / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["train"]["lr"] = params["train"]["lr"] / 2
    try:
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        status = json.loads(dvc(pipeline_repo, "status", "--json").stdout)
        # DVC lists the stage whose own inputs changed; downstream reruns follow from train
        assert set(status) == {"train"}
        assert '"params.yaml": {"train": "modified"}' in json.dumps(status["train"])
        dry = subprocess.run(
            [str(Path(sys.executable).with_name("dvc")), "repro", "--dry"],
            cwd=pipeline_repo,
            capture_output=True,
            text=True,
            env=stage_env(),
            check=True,
        ).stdout
        # (a dry run cannot know train's outputs will change, so it stops listing there)
        assert "Running stage 'train'" in dry
        for stage in ("synthesize", "ingest", "pair", "preprocess", "augment"):
            assert f"Stage '{stage}' didn't change, skipping" in dry
    finally:
        params_path.write_text(original)
    assert json.loads(dvc(pipeline_repo, "status", "--json").stdout or "{}") == {}


def test_outputs_are_what_the_readme_promises(pipeline_repo: Path) -> None:
    r = pipeline_repo
    evaluation = json.loads((r / "metrics/evaluate.json").read_text())
    assert 0.0 <= evaluation["macro_auroc_lo"] <= evaluation["macro_auroc"]
    assert evaluation["macro_auroc"] <= evaluation["macro_auroc_hi"] <= 1.0
    html = (r / "outputs/evaluation/report.html").read_text()
    assert "<img" in html and "http://" not in html and "https://" not in html
    export = json.loads((r / "metrics/export.json").read_text())
    assert export["passed"] is True
    assert {"torchscript", "onnx", "int8", "mobile"} <= set(export["parity"])
    card = json.loads((r / "models/export/metadata.json").read_text())
    assert [f for f in card["output"]["findings"]] == list(FINDINGS)
    for rel in ("plots/preprocess/grid.png", "plots/augment/preview.png"):
        assert (r / rel).stat().st_size > 1000
    train = json.loads((r / "metrics/train.json").read_text())
    assert train["epochs_run"] == 1


def _planted_phi(raw: Path) -> set[str]:
    """Identifying header values of the synthetic DICOMs; the UIDs all share the generator's
    root, so the root stands for them (a leaked UID contains it) and keeps the scan fast."""
    values = dicom_phi_values(raw)
    uids = {v for v in values if re.fullmatch(r"[0-9.]{20,}", v)}
    return (values - uids) | {u.rsplit(".", 1)[0][:26] for u in uids}


_TENSOR_MEMBER = re.compile(r"/(data|constants)/\d+$")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DATA_URI = re.compile(rb"data:image/png;base64,([A-Za-z0-9+/=]+)")


def _png_chunks(png: bytes) -> Iterator[bytes]:
    """Every chunk of a PNG but its compressed pixels (IDAT): text and metadata chunks can
    carry a header value, while deflated pixels are noise in which a short name turns up by
    chance (as a report's base64 images did: 'Yuki' in 3 MB of base64 text)."""
    assert png.startswith(_PNG_SIGNATURE), "an embedded image is not a PNG"
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        if kind != b"IDAT":
            yield kind + png[pos + 8 : pos + 8 + length]
        pos += 12 + length


def _contents(path: Path) -> Iterator[bytes]:
    """The bytes that could carry text: Parquet's text columns, names and attrs, archives member
    by member, PNGs (files
    and an HTML page's embedded images) chunk by chunk, and every file whole, except the
    payloads of numeric arrays, weight tensors and compressed pixels (numbers, not text)."""
    if path.suffix == ".parquet":  # text columns and metadata (attrs); digits of probabilities
        frame = pd.read_parquet(path)  # can spell an 8-digit birth date by chance
        yield frame.select_dtypes(exclude="number").to_csv().encode()
        yield json.dumps(frame.attrs, default=str).encode() + " ".join(frame.columns).encode()
        return
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        with open(path, "rb") as fh:
            yield fh.read(256)  # the header
        if arr.dtype.kind not in "biuf":
            yield path.read_bytes()
        return
    if path.suffix == ".onnx":
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            init.ClearField("raw_data")
        yield model.SerializeToString()
        return
    data = path.read_bytes()
    if data.startswith(_PNG_SIGNATURE):
        yield from _png_chunks(data)
        return
    if _DATA_URI.search(data):
        yield _DATA_URI.sub(b"", data)
        for uri in _DATA_URI.finditer(data):
            yield from _png_chunks(base64.b64decode(uri.group(1)))
        return
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in archive.namelist():
                yield name.encode()
                if not _TENSOR_MEMBER.search(name):
                    yield archive.read(name)
        return
    yield data


_DECIMAL = re.compile(rb"(?<![\d.])\d+\.\d+(?:[eE][-+]?\d+)?(?![\d.])")


def _text(blob: bytes) -> bytes:
    """``blob`` without its decimal numbers (one dot: 0.8197309245), whose digits can spell an
    8-digit birth date by chance; a dotted UID (several dots) and an integer stay."""
    return _DECIMAL.sub(b" ", blob)


def test_no_header_phi_in_any_output_or_log(pipeline_repo: Path) -> None:
    phi = _planted_phi(pipeline_repo / "data/raw/synthetic")
    assert len(phi) > 300  # names, MRNs, birth dates, accessions, institutions, the UID root
    inputs = ("data/raw/", ".git/", ".dvc/", "pipelines/")
    scanned, hits = 0, []
    for path in sorted(pipeline_repo.rglob("*")):
        rel = path.relative_to(pipeline_repo).as_posix()
        if path.is_dir() or rel.startswith(inputs):
            continue
        scanned += 1
        for blob in map(_text, _contents(path)):
            hits += [(rel, s) for s in phi if s.encode() in blob]
    assert scanned > 60  # manifests, shards, checkpoints, reports, plots, models, logs
    assert hits == []


def test_cxr_predict_reads_a_dicom_study_with_the_exported_model(pipeline_repo: Path) -> None:
    studies = sorted(p for p in (pipeline_repo / "data/raw/synthetic/dicom").glob("*/*"))
    study = next(s for s in studies if len(list(s.glob("*.dcm"))) == 2)
    cxr = Path(sys.executable).with_name("cxr")
    proc = subprocess.run(
        [str(cxr), "predict", str(study), "--format", "json"],
        cwd=pipeline_repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["studies"][0]
    assert result["views"] == "frontal+lateral"
    assert list(result["findings"]) == list(FINDINGS)
    card = json.loads((pipeline_repo / "models/export/metadata.json").read_text())
    trained = [f for f, s in card["output"]["status"].items() if s == "trained"]
    assert trained  # the toy run teaches some findings; the others say why not
    for name, finding in result["findings"].items():
        if name not in trained:
            assert finding["status"] == "not trained" and finding["probability"] is None
            continue
        assert 0.0 <= finding["probability"] <= 1.0
        if abs(finding["probability"] - finding["threshold"]) > 1e-5:  # JSON rounds to 1e-6
            assert finding["positive"] == (finding["probability"] >= finding["threshold"])


def test_cxr_report_rerenders_the_stage_report_without_the_model(pipeline_repo: Path) -> None:
    cxr = Path(sys.executable).with_name("cxr")
    proc = subprocess.run(
        [str(cxr), "report", "--out", "outputs/rerendered"],
        cwd=pipeline_repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    stage = json.loads((pipeline_repo / "metrics/evaluate.json").read_text())
    again = json.loads((pipeline_repo / "outputs/rerendered/metrics.json").read_text())
    # same predictions, resamples and seed: the same figures
    for key in ("macro_auroc", "macro_auroc_lo", "macro_auroc_hi"):
        assert again[key] == stage[key]
    assert (pipeline_repo / "outputs/rerendered/report.html").stat().st_size > 10_000
    shutil.rmtree(pipeline_repo / "outputs/rerendered")


def test_a_second_clone_pulls_the_same_results_from_the_remote(
    pipeline_repo: Path, tmp_path: Path
) -> None:
    # a raw input that no stage produces is tracked with `dvc add` (README: real data)
    extra = pipeline_repo / "data" / "raw" / "site_b"
    extra.mkdir(parents=True)
    (extra / "labels.csv").write_text("path,patient,study,view,Effusion\n")
    assert dvc(pipeline_repo, "add", "data/raw/site_b").returncode == 0
    # ingest, pair and preprocess read data/raw: they rerun, give the same outputs, and the
    # stages after them stay cached
    rerun = repro(pipeline_repo)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "Running stage 'ingest'" in rerun.stdout
    assert "Running stage 'train'" not in rerun.stdout
    git(pipeline_repo, "add", "-A")
    git(pipeline_repo, "commit", "-qm", "track a raw input")
    push = dvc(pipeline_repo, "push")
    assert push.returncode == 0, push.stderr
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(pipeline_repo), str(clone))
    pull = dvc(clone, "pull")
    assert pull.returncode == 0, pull.stderr
    # everything is there and up to date: nothing would rerun
    assert json.loads(dvc(clone, "status", "--json").stdout or "{}") == {}
    dry = repro(clone, "--dry")
    assert "Running stage" not in dry.stdout
    for rel in (
        "metrics/evaluate.json",
        "metrics/export.json",
        "models/export/model.onnx",
        "data/raw/site_b/labels.csv",
    ):
        assert (clone / rel).read_bytes() == (pipeline_repo / rel).read_bytes()
    shutil.rmtree(clone)


def test_the_gate_refuses_every_real_non_chest_image_and_few_test_studies(pipeline_repo: Path):
    """evaluate's measurement of the gate on the toy model, and cxr predict refusing a CT slice
    saved as a PNG pair with the exported model (the pixels, no header to go by)."""
    gate = json.loads((pipeline_repo / "metrics/evaluate_ood.json").read_text())
    assert gate["fitted"] is True
    for kind in ("CT", "MR", "US"):  # pydicom's bundled acquisitions: every one refused
        assert gate["by_kind"][kind]["refused"] == gate["by_kind"][kind]["images"] > 0, kind
    assert gate["reference_refused"] == gate["reference_images"] >= 14
    assert gate["test_refusal_rate"] <= 0.02
    assert gate["auroc"]["mahalanobis"] == 1.0
    card = json.loads((pipeline_repo / "models/export/metadata.json").read_text())
    assert card["output"]["ood_gate"]["thresholds"] == pytest.approx(gate["thresholds"], rel=1e-3)
    assert set(card["output"]["calibration"]) == {"dual", "frontal_only"}
    ct = read_image(reference_path("pydicom.data", "test_files/CT_small.dcm"))
    png = pipeline_repo.parent / "ct.png"
    Image.fromarray((ct * 255).round().astype(np.uint8)).save(png)
    cxr = Path(sys.executable).with_name("cxr")
    proc = subprocess.run(
        [str(cxr), "predict", str(png), str(png)],
        cwd=pipeline_repo,
        capture_output=True,
        text=True,
        env=stage_env(),
    )
    assert proc.returncode == 2 and "refused: the frontal view is unlike" in proc.stderr
