"""The workspace of Prefect names: per checkout, stable, no user name or path, overridable."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from tasks import workspace as ws
from tasks.workspace import CHECKOUT_FILE, NAME, WORKSPACE_ENV, scoped, workspace
from tests.conftest import ROOT, git


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """No override from the caller's shell; every test derives names anew."""
    monkeypatch.delenv(WORKSPACE_ENV, raising=False)
    ws._derived.cache_clear()
    yield
    ws._derived.cache_clear()


def _repo(path: Path, text: str = "a") -> Path:
    path.mkdir(parents=True)
    (path / "f.txt").write_text(text)
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "first")
    return path


def test_clones_are_workspaces_of_one_repository(tmp_path):
    first = _repo(tmp_path / "alice" / "cxr-dag")
    git(tmp_path, "clone", "-q", str(first), str(tmp_path / "bob" / "cxr-dag"))
    second = tmp_path / "bob" / "cxr-dag"
    other = _repo(tmp_path / "other", "b")
    root = git(first, "rev-list", "--max-parents=0", "HEAD").stdout.strip()
    a, b, c = workspace(first), workspace(second), workspace(other)
    assert a.startswith(root[:6] + "-") and b.startswith(root[:6] + "-")
    assert a != b and not c.startswith(root[:6])
    for name in (a, b, c):
        assert NAME.match(name) and "alice" not in name and "bob" not in name
    assert (first / ".git" / CHECKOUT_FILE).read_text().strip() == a[-6:]
    assert scoped("evaluate-auroc", first) == f"cxr-{a}-evaluate-auroc"


def test_a_checkout_keeps_its_name_across_processes_and_moves(tmp_path):
    repo = _repo(tmp_path / "repo")
    name = workspace(repo)
    ws._derived.cache_clear()
    assert workspace(repo) == name
    moved = tmp_path / "elsewhere"
    shutil.move(repo, moved)
    ws._derived.cache_clear()
    assert workspace(moved) == name
    code = f"from tasks.workspace import workspace; print(workspace({str(moved)!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == name


def test_processes_drawing_at_once_agree(tmp_path):
    repo = _repo(tmp_path / "repo")
    code = f"from tasks.workspace import workspace; print(workspace({str(repo)!r}))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    names = {p.communicate()[0].strip() for p in procs}
    assert len(names) == 1 and names != {""}
    assert not [p for p in (repo / ".git").iterdir() if p.name.startswith(CHECKOUT_FILE + ".")]


def test_worktrees_are_workspaces_too(tmp_path):
    repo = _repo(tmp_path / "repo")
    git(repo, "worktree", "add", "-q", str(tmp_path / "wt"), "-b", "other")
    assert workspace(repo) != workspace(tmp_path / "wt")
    assert workspace(repo)[:6] == workspace(tmp_path / "wt")[:6]


def test_outside_git_a_stable_hash(tmp_path):
    (tmp_path / "plain").mkdir()
    name = workspace(tmp_path / "plain")
    assert name.startswith("norepo-") and NAME.match(name)
    ws._derived.cache_clear()
    assert workspace(tmp_path / "plain") == name
    (tmp_path / "plain2").mkdir()
    assert workspace(tmp_path / "plain2") != name


def test_a_damaged_checkout_file_is_drawn_again(tmp_path):
    repo = _repo(tmp_path / "repo")
    (repo / ".git" / CHECKOUT_FILE).write_text("not hex\n")
    name = workspace(repo)
    assert NAME.match(name) and (repo / ".git" / CHECKOUT_FILE).read_text().strip() == name[-6:]


def test_the_environment_overrides_and_is_checked(tmp_path, monkeypatch):
    repo = _repo(tmp_path / "repo")
    monkeypatch.setenv(WORKSPACE_ENV, "ward-a")
    assert workspace(repo) == "ward-a" and scoped("sweep", repo) == "cxr-ward-a-sweep"
    assert not (repo / ".git" / CHECKOUT_FILE).exists()
    for bad in ("Ward A", "-a", "a" * 41, "ward_a"):
        monkeypatch.setenv(WORKSPACE_ENV, bad)
        with pytest.raises(ConfigError, match=WORKSPACE_ENV):
            workspace(repo)


def test_kinds_must_be_valid_key_parts(tmp_path):
    with pytest.raises(ValueError, match="lowercase"):
        scoped("Evaluate_AUROC", tmp_path)
