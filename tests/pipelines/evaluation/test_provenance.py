"""Where results came from: a fingerprint of the code and the DVC hashes of the inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipelines.evaluation.provenance import (
    PACKAGE_ROOT,
    code_fingerprint,
    code_version,
    collect_versions,
    dvc_hashes,
)


def test_versions_from_the_code_and_dvc_lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: python -m pipelines.train\n    outs:\n"
        "    - path: models/best.pt\n      md5: 0123abcd\n      size: 10\n"
        "  preprocess:\n    outs:\n    - path: data/prepared\n      md5: 99ff.dir\n"
    )
    assert dvc_hashes(["models/best.pt", "data/prepared", "other"], lock) == {
        "models/best.pt": "0123abcd",
        "data/prepared": "99ff.dir",
    }
    assert dvc_hashes(["x"], tmp_path / "missing.lock") == {}
    versions = collect_versions(["models/best.pt"], cwd=tmp_path)
    assert versions == {"code": code_version(), "dvc": {"models/best.pt": "0123abcd"}}


def test_the_code_fingerprint_follows_the_code_not_its_folder(tmp_path: Path) -> None:
    """Two copies of the package in other folders fingerprint alike; one changed byte shows."""
    a, b = tmp_path / "a" / "pipelines", tmp_path / "b" / "pipelines"
    for copy in (a, b):
        shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_fingerprint(a) == code_fingerprint(b) == code_fingerprint(PACKAGE_ROOT)
    (b / "__pycache__").mkdir(exist_ok=True)
    (b / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"compiled")  # not code
    assert code_fingerprint(b) == code_fingerprint(a)
    with open(b / "labels.py", "a") as fh:
        fh.write("\n")
    assert code_fingerprint(b) != code_fingerprint(a)
    assert len(code_fingerprint(a)) == 16
