"""Shared fixtures: a fixed salt, the real-data folder, a DVC mini-repo, Prefect's harness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_CXR = ROOT.parent / "shared" / "real-cxr"

os.environ.setdefault("CXR_SALT", "test-salt-not-secret")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


#: DICOM header keywords that identify a patient or study: never in any output, log or artifact.
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


def dicom_phi_values(folder: Path) -> set[str]:
    """The identifying header values of every DICOM below ``folder`` (and name parts of 4+
    letters): what a PHI scan of the outputs must never find."""
    import pydicom

    values: set[str] = set()
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in PHI_KEYWORDS:
            value = str(ds.get(keyword, "") or "").strip()
            if len(value) >= 4:
                values.add(value)
                values.update(p for p in value.split("^") if len(p) >= 4)
    return values


@pytest.fixture
def real_cxr() -> Path:
    """``../shared/real-cxr`` beside the checkout; skips the test when it is absent."""
    if not REAL_CXR.is_dir():
        pytest.skip(f"real data not available at {REAL_CXR}")
    return REAL_CXR


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness (temporary database + server) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the venv's dvc in ``repo``."""
    exe = Path(sys.executable).with_name("dvc")
    return subprocess.run([str(exe), *args], cwd=repo, capture_output=True, text=True, check=False)


@pytest.fixture
def mini_dvc_repo(tmp_path: Path) -> Path:
    """A git + DVC repo with a two-stage pipeline (``make`` -> ``count``) and a params file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert dvc(repo, "init", "-q").returncode == 0
    (repo / "params.yaml").write_text("make:\n  n: 3\n")
    (repo / "make.py").write_text(
        "import yaml\n"
        "n = yaml.safe_load(open('params.yaml'))['make']['n']\n"
        "open('numbers.txt', 'w').write('\\n'.join(map(str, range(n))))\n"
        "print('made', n)\n"
    )
    (repo / "count.py").write_text(
        "import json\n"
        "n = len(open('numbers.txt').read().split())\n"
        "json.dump({'count': n}, open('count.json', 'w'))\n"
        "print('counted', n)\n"
    )
    (repo / "dvc.yaml").write_text(
        f"""stages:
  make:
    cmd: {sys.executable} make.py
    deps: [make.py]
    params: [make]
    outs: [numbers.txt]
  count:
    cmd: {sys.executable} count.py
    deps: [count.py, numbers.txt]
    metrics:
      - count.json:
          cache: false
"""
    )
    return repo


TRAIN_LIKE_STAGE = """import json, os, sys, yaml
p = yaml.safe_load(open('params.yaml'))['train']
if p['lr'] > 0.1:
    sys.exit('error: lr too high')
os.makedirs('metrics', exist_ok=True)
os.makedirs('dvclive/train', exist_ok=True)
json.dump({'val_macro_auroc': p['lr'] * 100}, open('metrics/train.json', 'w'))
json.dump({'val': {'macro_auroc': p['lr'] * 100}}, open('dvclive/train/metrics.json', 'w'))
json.dump({'macro_auroc': p['lr'] * 50}, open('metrics/evaluate.json', 'w'))
json.dump({'macro_auroc': 0.0}, open('metrics/other.json', 'w'))
"""


@pytest.fixture
def experiments_repo(tmp_path: Path) -> Path:
    """A git + DVC repo whose one stage, ``train``, writes metrics where this project's train
    and evaluate stages do (``train.lr`` > 0.1 makes it fail with ``error: lr too high``)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("train:\n  lr: 0.002\n")
    (repo / "train.py").write_text(TRAIN_LIKE_STAGE)
    metrics = ["metrics/train.json", "dvclive/train/metrics.json", "metrics/evaluate.json"]
    metrics.append("metrics/other.json")  # a second `macro_auroc`: DVC prefixes the columns
    (repo / "dvc.yaml").write_text(
        f"stages:\n  train:\n    cmd: {sys.executable} train.py\n    deps: [train.py]\n"
        "    params: [train]\n    metrics:\n"
        + "".join(f"      - {m}:\n          cache: false\n" for m in metrics)
    )
    git(repo, "init", "-q")
    assert dvc(repo, "init", "-q").returncode == 0
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one stage")
    return repo


# --------------------------------------------------------------------------------------------
# The real DAG at toy scale: every stage of dvc.yaml on a small synthetic dataset, run once per
# session (about 100 s on 2 cores) and shared by the end-to-end, PHI, DVC-remote and Prefect
# tests. Tests that change it must put it back.
# --------------------------------------------------------------------------------------------

TINY_PARAMS: dict[str, dict] = {
    "synthesize": {"studies": 150, "image_size": 64},
    "preprocess": {"image_size": 64},
    "train": {"image_size": 64, "epochs": 1, "progress": False, "deterministic": False},
    "evaluate": {"bootstrap_resamples": 200},
    "export": {"calibration_studies": 16},
}


def stage_env() -> dict[str, str]:
    """Environment for ``dvc`` subprocesses: the venv's ``python`` first on PATH."""
    from tasks.process import child_env

    return child_env()


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """Run git in ``repo`` with a fixed identity; raises on failure."""
    return subprocess.run(
        ["git", "-c", "user.email=ci@cxr.invalid", "-c", "user.name=cxr-ci", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )


def make_pipeline_repo(
    repo: Path, remote: Path | None = None, overrides: dict | None = None
) -> Path:
    """A git + DVC repo with this project's pipeline code, dvc.yaml and toy-scale params."""
    import shutil

    import yaml

    repo.mkdir(parents=True)
    shutil.copytree(
        ROOT / "pipelines", repo / "pipelines", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for layer in (TINY_PARAMS, overrides or {}):  # each section key by key
        for section, values in layer.items():
            params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "init", "-q")
    assert dvc(repo, "init", "-q").returncode == 0
    if remote is not None:
        assert dvc(repo, "remote", "add", "-d", "local", str(remote)).returncode == 0
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline at toy scale")  # dvclive needs a commit
    return repo


def repro(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """``dvc repro`` in ``repo`` with the venv on PATH (not raising)."""
    exe = Path(sys.executable).with_name("dvc")
    return subprocess.run(
        [str(exe), "repro", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env=stage_env(),
        check=False,
    )


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole DAG reproduced once at toy scale; ``repo/repro.log`` holds its output."""
    base = tmp_path_factory.mktemp("pipeline")
    repo = make_pipeline_repo(base / "repo", remote=base / "remote")
    proc = repro(repo)
    (repo / "repro.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        pytest.fail(f"dvc repro failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "reproduced")
    return repo
