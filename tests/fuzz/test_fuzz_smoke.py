"""CI's fuzzing smoke: every target under libFuzzer for a second or two, no finding.

The same targets and runner as ``benchmarks/fuzz.py`` (which runs them for minutes); here each
runs its seeds and the regression inputs under the contract, then mutates for :data:`SECONDS`,
with only the project instrumented (a faster start). The targets run :data:`PARALLEL` at a time
from one fixture. Skipped where atheris is not installed (``pip install -e .[test]``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fuzz.runner import FuzzResult, parse_output, run_target
from tests.fuzz.targets import TARGETS

SECONDS = 1
PARALLEL = max(2, min(4, os.cpu_count() or 2))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FuzzResult]:
    pytest.importorskip("atheris")
    work = tmp_path_factory.mktemp("fuzz")

    def one(name: str) -> FuzzResult:
        return run_target(name, SECONDS, work, resume=False, libraries=False)

    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(TARGETS, pool.map(one, TARGETS), strict=True))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_runs_without_finding(smoke: dict[str, FuzzResult], name: str) -> None:
    result = smoke[name]
    findings = "; ".join(f"{f.kind}: {f.summary} ({f.artifact})" for f in result.findings)
    assert result.ok, findings or f"libFuzzer exited {result.returncode}: {result.log[-3000:]}"
    assert result.execs > 0 and result.cov > 0


def test_output_parsing() -> None:
    log = (
        "#2\tINITED cov: 10 ft: 12 corp: 2/40b exec/s: 0 rss: 100Mb\n"
        "#64\tNEW    cov: 15 ft: 20 corp: 3/60b lim: 4 exec/s: 32 rss: 101Mb L: 5/5 MS: 1\n"
        " === Uncaught Python exception: ===\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "ValueError: bad\n"
        "==1== ERROR: libFuzzer: fuzz target exited\n"
        "artifact_prefix='a/'; Test unit written to a/crash-1\n"
        "stat::number_of_executed_units: 70\n"
        "stat::average_exec_per_sec:     35\n"
    )
    result = parse_output("t", 2.0, log, 77)
    assert (result.execs, result.exec_per_s, result.cov_start, result.cov, result.ft) == (
        70,
        35,
        10,
        15,
        20,
    )
    assert [(f.kind, f.artifact, f.summary) for f in result.findings] == [
        ("exception", "a/crash-1", "ValueError: bad")
    ]
    assert not result.ok
    timeout = (
        "ALARM: working on the last Unit for 12 seconds\n"
        "artifact_prefix='a/'; Test unit written to a/timeout-2\n"
        "==6== ERROR: libFuzzer: timeout after 12 seconds\n"
    )
    found = parse_output("t", 2.0, timeout, 70).findings
    assert [(f.kind, f.artifact) for f in found] == [("timeout", "a/timeout-2")]
