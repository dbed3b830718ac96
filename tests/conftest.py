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
