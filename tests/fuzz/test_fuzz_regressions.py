"""Every input a fuzzing run ever failed on, replayed: each now ends in its documented outcome.

``tests/fixtures/fuzz/<target>/<name>.bin`` holds the input as libFuzzer wrote it, and
``expected.json`` its outcome (the target's return value: ``DecodeError:<reason>``,
``reject:<reason>``, ``SourceError`` ...) with a line saying what the finding was. The targets
(:mod:`tests.fuzz.targets`) check the whole contract on the way (the error names the file, the
reason is a documented one, counts add up), and need no atheris.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fuzz"
EXPECTED: dict[str, dict[str, str]] = json.loads((FIXTURES / "expected.json").read_text())
REAL_CXR = Path(__file__).resolve().parents[2].parent / "shared" / "real-cxr"


def test_every_input_has_an_expected_outcome() -> None:
    files = {p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("*/*.bin")}
    assert files == set(EXPECTED)
    assert {key.split("/")[0] for key in EXPECTED} <= set(TARGETS)


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_finding_ends_in_its_documented_outcome(key: str) -> None:
    target, _ = key.split("/")
    data = (FIXTURES / key).read_bytes()
    assert TARGETS[target].check(data) == EXPECTED[key]["outcome"], EXPECTED[key]["finding"]


WINDOW = 64


def _windows(data: bytes) -> set[bytes]:
    """Every ``WINDOW``-byte window of ``data`` of varied bytes (a run of zeros, a DICOM
    preamble, is in every file)."""
    return {
        data[i : i + WINDOW]
        for i in range(max(0, len(data) - WINDOW + 1))
        if len(set(data[i : i + WINDOW])) >= 24
    }


def test_no_input_carries_bytes_of_the_real_images() -> None:
    """The real radiographs' licences keep them out of the repository, pieces of them too: no
    run of 96 bytes of a real file (it holds a window starting at a multiple of 32) is kept."""
    if not REAL_CXR.is_dir():
        pytest.skip(f"real data not available at {REAL_CXR}")
    kept = set().union(*(_windows((FIXTURES / key).read_bytes()) for key in EXPECTED))
    for real in sorted(p for p in REAL_CXR.rglob("*") if p.is_file()):
        data = real.read_bytes()
        starts = range(0, max(0, len(data) - WINDOW + 1), WINDOW // 2)
        assert not any(data[i : i + WINDOW] in kept for i in starts), real.name
