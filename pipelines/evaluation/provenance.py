"""Where a result came from: a fingerprint of the code and the DVC hashes of its inputs.

Shown in the evaluation report and written into the model card. Never anything about patients.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


#: The code whose fingerprint is recorded: the stage package (sources and templates).
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_CODE_SUFFIXES = (".py", ".j2")


def code_fingerprint(root: str | Path = PACKAGE_ROOT) -> str:
    """SHA-256 (16 hex digits) over the package's source files: their relative paths and bytes.

    The same code gives the same fingerprint in every clone, whatever its folder and git state,
    so the outputs that record it stay byte-identical (a git commit would change with every
    commit, including the one that records the outputs).
    """
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in _CODE_SUFFIXES and p.is_file()):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def code_version() -> dict[str, str]:
    """The package's version and its :func:`code_fingerprint`."""
    from pipelines import __version__

    return {"cxr_dag": __version__, "sources_sha256": code_fingerprint()}


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
    """The code's version and the DVC hashes of ``inputs``, for the report's versions section."""
    versions: dict[str, Any] = {"code": code_version()}
    hashes = dvc_hashes(inputs, Path(cwd) / lock_path)
    if hashes:
        versions["dvc"] = hashes
    return versions
