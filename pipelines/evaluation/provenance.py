"""Where a result came from: the code's git commit and the DVC hashes of its inputs.

Shown in the evaluation report and written into the model card. Never anything about patients.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


def git_commit(cwd: str | Path = ".") -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the working tree, or None outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}


def dvc_hashes(paths: Sequence[str], lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """md5 of each path as recorded in ``dvc.lock`` by the stage that produced it.

    Paths that no stage lists among its outputs (or a missing lock file) are left out.
    """
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        return {}
    try:
        lock = yaml.safe_load(lock_path.read_text()) or {}
    except yaml.YAMLError:
        log.warning("%s: not valid YAML; DVC hashes left out of the report", lock_path)
        return {}
    wanted = {str(Path(p)): p for p in paths}
    found: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            key = str(Path(str(out.get("path", ""))))
            if key in wanted and out.get("md5"):
                found[wanted[key]] = str(out["md5"])
    return found


def collect_versions(
    inputs: Sequence[str] = (), lock_path: str | Path = "dvc.lock", cwd: str | Path = "."
) -> dict[str, Any]:
    """Git commit and the DVC hashes of ``inputs``, for the report's versions section."""
    versions: dict[str, Any] = {}
    git = git_commit(cwd)
    if git:
        versions["git"] = git
    hashes = dvc_hashes(inputs, Path(cwd) / lock_path)
    if hashes:
        versions["dvc"] = hashes
    return versions
