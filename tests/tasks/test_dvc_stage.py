"""DVC stage tasks: the graph comes from dvc.yaml; status, streaming, lock waits, failures."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tasks.dvc_stage import (
    StageFailed,
    _is_lock_error,
    read_stage_graph,
    stage_is_up_to_date,
    stream_stage,
)

ROOT = Path(__file__).resolve().parents[2]


def test_graph_of_this_project_follows_dvc_yaml():
    stages = read_stage_graph(ROOT)
    names = [s.name for s in stages]
    assert names[:3] == ["synthesize", "ingest", "pair"]
    by = {s.name: s for s in stages}
    assert by["pair"].upstream == ("synthesize", "ingest")  # data/raw: official split lists
    assert by["ingest"].upstream == ("synthesize",)


def test_graph_targets_keep_only_upstream(mini_dvc_repo):
    assert [s.name for s in read_stage_graph(mini_dvc_repo, ["make"])] == ["make"]
    assert [s.name for s in read_stage_graph(mini_dvc_repo)] == ["make", "count"]
    with pytest.raises(ValueError, match="unknown stage"):
        read_stage_graph(mini_dvc_repo, ["nope"])


def test_graph_leaves_dvc_added_inputs_out(mini_dvc_repo):
    """A `dvc add`ed raw input is a .dvc file stage: data for the DAG, never a task."""
    from tests.conftest import dvc

    raw = mini_dvc_repo / "raw"
    raw.mkdir()
    (raw / "a.txt").write_text("1\n")
    assert dvc(mini_dvc_repo, "add", "raw").returncode == 0
    dvc_yaml = mini_dvc_repo / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("deps: [make.py]", "deps: [make.py, raw]"))
    assert [s.name for s in read_stage_graph(mini_dvc_repo)] == ["make", "count"]


def test_stream_then_up_to_date(mini_dvc_repo):
    logger = logging.getLogger("test")
    assert not stage_is_up_to_date("make", mini_dvc_repo)
    stream_stage("make", mini_dvc_repo, False, None, 10, logger)
    assert (mini_dvc_repo / "numbers.txt").read_text().split() == ["0", "1", "2"]
    assert stage_is_up_to_date("make", mini_dvc_repo)


def test_failed_stage_names_itself(mini_dvc_repo):
    (mini_dvc_repo / "bad.py").write_text("import sys\nsys.exit('error: bad label column')\n")
    (mini_dvc_repo / "dvc.yaml").write_text("stages:\n  bad:\n    cmd: python3 bad.py\n")
    with pytest.raises(StageFailed, match=r"stage 'bad' failed .*bad label column"):
        stream_stage("bad", mini_dvc_repo, False, None, 5, logging.getLogger("test"))


def test_lock_error_is_recognised():
    assert _is_lock_error("ERROR: '/x' is busy, it is being blocked by:\n  (PID 1): dvc repro")
    assert not _is_lock_error("ERROR: failed to reproduce 'ingest'")
