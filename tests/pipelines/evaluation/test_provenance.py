"""Where results came from: the git commit and the DVC hashes of the inputs."""

from __future__ import annotations

import re
import shutil
import subprocess

from pipelines.evaluation.provenance import collect_versions, dvc_hashes, git_commit


def test_versions_from_git_and_dvc_lock(tmp_path):
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
    assert git_commit(tmp_path) is None  # not a repository
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
        subprocess.run(
            [
                "git",
                "-c",
                "user.email=a@b",
                "-c",
                "user.name=t",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                "x",
            ],
            cwd=tmp_path,
            check=True,
        )
        versions = collect_versions(["models/best.pt"], cwd=tmp_path)
        assert re.fullmatch(r"[0-9a-f]{40}", versions["git"]["commit"])
        assert versions["dvc"] == {"models/best.pt": "0123abcd"}
