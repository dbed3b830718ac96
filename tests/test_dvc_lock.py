"""The committed ``dvc.lock`` records the committed code and params (nobody commits a stale lock).

``dvc.lock`` holds, per stage, the hash of every code dependency and the value of every param it
read. Code or params changed without rerunning ``make demo`` leave a lock that no longer says
what produced the demo's results; ``dvc status`` then reports those dependencies as modified.
Data dependencies (``data/raw``, the stages' outputs) are not in a clean clone, so only code and
params count here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import dvc, git

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("pipelines",)
PARAMS = "params.yaml"


def stale_dependencies(repo: Path) -> list[str]:
    """The code files and params sections whose recorded hash or value differs from ``repo``'s.

    Raises:
        RuntimeError: ``dvc status`` failed.
    """
    proc = dvc(repo, "status", "--json")
    if proc.returncode != 0:
        raise RuntimeError(f"dvc status failed: {proc.stderr.strip()[-2000:]}")
    stale = set()
    for stage, entries in json.loads(proc.stdout or "{}").items():
        for entry in entries if isinstance(entries, list) else []:
            changed = entry.get("changed deps", {}) if isinstance(entry, dict) else {}
            for path, state in changed.items():
                if path == PARAMS and isinstance(state, dict):
                    stale |= {f"{stage}: {PARAMS} {k} {v}" for k, v in state.items()}
                elif path.split("/")[0] in CODE_DIRS and state == "modified":
                    stale.add(f"{stage}: {path}")
    return sorted(stale)


def _tiny_repo(dest: Path) -> Path:
    """A git + DVC repo with one stage whose code is under ``pipelines/``, reproduced once."""
    (dest / "pipelines").mkdir(parents=True)
    (dest / "pipelines" / "step.py").write_text(
        "import yaml\n"
        "n = yaml.safe_load(open('params.yaml'))['step']['n']\n"
        "open('out.txt', 'w').write(str(n))\n"
    )
    (dest / PARAMS).write_text("step:\n  n: 3\n")
    (dest / "dvc.yaml").write_text(
        f"stages:\n  step:\n    cmd: {sys.executable} pipelines/step.py\n"
        "    deps: [pipelines/step.py]\n    params: [step]\n    outs: [out.txt]\n"
    )
    git(dest, "init", "-q")
    assert dvc(dest, "init", "-q").returncode == 0
    assert dvc(dest, "repro").returncode == 0
    return dest


@pytest.mark.skipif(not (ROOT / "dvc.lock").is_file(), reason="no dvc.lock committed")
def test_the_committed_lock_matches_the_code_and_params() -> None:
    stale = stale_dependencies(ROOT)
    assert not stale, (
        "dvc.lock is stale: run `make demo` and commit dvc.lock (and the README's figures):\n"
        + "\n".join(stale)
    )


def test_the_check_catches_a_changed_module_and_a_changed_param(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path / "repo")
    assert stale_dependencies(repo) == []  # just reproduced: the lock is fresh
    with (repo / "pipelines" / "step.py").open("a") as f:
        f.write("# a change nobody reran the pipeline for\n")
    assert stale_dependencies(repo) == ["step: pipelines/step.py"]
    (repo / PARAMS).write_text("step:\n  n: 4\n")
    assert stale_dependencies(repo) == [
        "step: params.yaml step modified",
        "step: pipelines/step.py",
    ]
    assert dvc(repo, "repro").returncode == 0
    assert stale_dependencies(repo) == []
