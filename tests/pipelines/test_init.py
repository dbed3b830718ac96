"""A stage started by an interpreter without the project's packages (``.venv/bin/dvc repro``
with the venv not active) re-runs itself with the repository's venv, or says what to do."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python with none of the project's packages (a fresh venv without pip)."""
    folder = tmp_path_factory.mktemp("bare") / "venv"
    venv.create(folder, with_pip=False)
    return folder / "bin" / "python"


def repo_copy(tmp_path: Path, with_venv: bool) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(
        ROOT / "pipelines", repo / "pipelines", ignore=shutil.ignore_patterns("__pycache__")
    )
    if with_venv:
        (repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return repo


def test_a_stage_reruns_itself_with_the_repository_venv(bare_python, tmp_path):
    repo = repo_copy(tmp_path, with_venv=True)
    code = "import sys, pandas; print(sys.prefix)"
    (repo / "pipelines" / "where.py").write_text(code)
    proc = subprocess.run(
        [str(bare_python), "-m", "pipelines.where"], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == Path(sys.prefix).resolve()


def test_without_a_venv_the_stage_says_what_to_do_in_one_line(bare_python, tmp_path):
    repo = repo_copy(tmp_path, with_venv=False)
    proc = subprocess.run(
        [str(bare_python), "-m", "pipelines.ingest"], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: this Python")
    assert "source .venv/bin/activate" in proc.stderr and "Traceback" not in proc.stderr


def test_importing_the_package_without_its_packages_is_a_clear_import_error(bare_python, tmp_path):
    repo = repo_copy(tmp_path, with_venv=True)
    proc = subprocess.run(
        [str(bare_python), "-c", "import pipelines"], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "ImportError: this Python" in proc.stderr
