"""Atomic writes: readable like any file, never half-written."""

from __future__ import annotations

import stat

import pytest

from pipelines.io import atomic_path, write_json


def test_atomic_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    plain = tmp_path / "b.json"
    plain.write_text("{}")  # what open() gives under this process's umask
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_a_failed_block_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
