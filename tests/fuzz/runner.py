"""Run a fuzz target under libFuzzer (atheris) in a subprocess and read what it reports.

The child (``python -m tests.fuzz.runner TARGET PACKAGES -- LIBFUZZER_ARGS``) imports the
target's modules inside :func:`atheris.instrument_imports` (only the packages named: the project,
pydicom, Pillow's plugins ...), running every seed once there so that lazily imported decoders
are instrumented too, then hands the target to libFuzzer. Its address space is capped
(:data:`HEADROOM_MB` above what the imports took), so that an unbounded allocation fails with a
``MemoryError`` instead of swapping the machine: that error escapes as a finding, or, swallowed
by a catch-all, shows in a detail that the target's contract rejects.

The parent keeps a corpus folder per target (a later run resumes from it), writes the seeds and
the regression inputs of ``tests/fixtures/fuzz/<target>/`` beside it, and parses libFuzzer's
output into a :class:`FuzzResult`: executions, coverage (``cov``: edges; ``ft``: features) and
findings (an uncaught exception, a breach of the contract, a timeout, out-of-memory, a crash),
each with the input libFuzzer wrote.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "fuzz"
#: how much more address space than its imports a fuzzing process may take (MiB)
HEADROOM_MB = 2048
#: libFuzzer's per-input time limit (seconds) and RSS limit (MiB), unless the caller says
TIMEOUT_S = 10
RSS_LIMIT_MB = 3072

_KINDS = {
    "Uncaught Python exception": "exception",
    "ALARM: working on the last Unit": "timeout",
    "libFuzzer: timeout": "timeout",
    "libFuzzer: out-of-memory": "oom",
    "libFuzzer: deadly signal": "crash",
    "libFuzzer: fuzz target exited": "exit",
}


@dataclass(frozen=True)
class Finding:
    """What libFuzzer reported: ``kind`` (exception, timeout, oom, crash, exit), the input it
    wrote, and a one-line summary (the exception's last line)."""

    kind: str
    artifact: str
    summary: str


@dataclass
class FuzzResult:
    """The figures of one run of one target."""

    target: str
    seconds: float
    execs: int = 0
    exec_per_s: int = 0
    cov_start: int = 0
    ft_start: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    new_units: int = 0
    peak_rss_mb: int = 0
    returncode: int = 0
    findings: list[Finding] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        """No finding, and libFuzzer ended normally."""
        return not self.findings and self.returncode == 0


_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)")


def parse_output(target: str, seconds: float, text: str, returncode: int) -> FuzzResult:
    """Read libFuzzer's status lines, final stats and error reports."""
    result = FuzzResult(target, seconds, returncode=returncode, log=text)
    kind, summary = "", ""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        status = _STATUS.match(line)
        if status:
            runs, event, cov, ft, corp = status.groups()
            result.execs, result.cov, result.ft, result.corpus = (
                int(runs),
                int(cov),
                int(ft),
                int(corp),
            )
            if event == "INITED":
                result.cov_start, result.ft_start = int(cov), int(ft)
            continue
        stat = _STAT.match(line)
        if stat:
            _read_stat(result, *stat.groups())
            continue
        for marker, name in _KINDS.items():
            if marker in line and not kind:
                kind, summary = name, _summary(lines, i, name)
        if "Test unit written to " in line:
            artifact = line.split("Test unit written to ", 1)[1].strip()
            result.findings.append(Finding(kind or "crash", artifact, summary))
            kind, summary = "", ""
    if kind and not result.findings:  # an error without an input written (e.g. in the seed run)
        result.findings.append(Finding(kind, "", summary))
    return result


def _read_stat(result: FuzzResult, key: str, value: str) -> None:
    number = int(value)
    if key == "number_of_executed_units":
        result.execs = max(result.execs, number)
    elif key == "average_exec_per_sec":
        result.exec_per_s = number
    elif key == "new_units_added":
        result.new_units = number
    elif key == "peak_rss_mb":
        result.peak_rss_mb = number


def _summary(lines: list[str], start: int, kind: str) -> str:
    """The exception line of a Python traceback after ``start``, else the error line itself."""
    if kind == "exception":
        for line in lines[start + 1 :]:
            if line and not line.startswith((" ", "Traceback", "\t")):
                return line.strip()[:300]
    return lines[start].strip()[:300]


def write_inputs(folder: Path, inputs: dict[str, bytes]) -> None:
    """Write ``{name: bytes}`` into ``folder`` (emptied first)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_file():
            old.unlink()
    for name, data in inputs.items():
        (folder / name).write_bytes(data)


def regression_inputs(target: str) -> dict[str, bytes]:
    """The inputs earlier runs found for ``target`` (``tests/fixtures/fuzz/<target>/``)."""
    folder = FIXTURES / target
    if not folder.is_dir():
        return {}
    return {f"regression-{p.name}": p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def run_target(
    name: str,
    seconds: int,
    work: Path,
    *,
    timeout_s: int = TIMEOUT_S,
    rss_limit_mb: int = RSS_LIMIT_MB,
    nice: int = 0,
    resume: bool = True,
    libraries: bool = True,
) -> FuzzResult:
    """Fuzz ``name`` for ``seconds`` in a child process; its folders live under ``work/name``.

    Args:
        name: a key of :data:`tests.fuzz.targets.TARGETS`.
        seconds: libFuzzer's ``-max_total_time`` (the seed run included).
        work: the parent of the target's corpus, seeds, artifacts and scratch folders.
        timeout_s: libFuzzer's per-input time limit.
        rss_limit_mb: libFuzzer's RSS limit.
        nice: niceness added to the child.
        resume: keep the corpus of an earlier run (False: start from the seeds alone).
        libraries: instrument the libraries the target names (pydicom, Pillow ...) besides the
            project; False starts faster (the smoke), with coverage of the project alone.
    """
    from tests.fuzz.targets import TARGETS

    target = TARGETS[name]
    base = work / name
    corpus, seed_dir, artifacts = base / "corpus", base / "seeds", base / "artifacts"
    if not resume and corpus.is_dir():
        write_inputs(corpus, {})
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    write_inputs(seed_dir, target.seeds() | regression_inputs(name))
    args = [
        str(corpus),
        str(seed_dir),
        f"-max_total_time={seconds}",
        f"-timeout={timeout_s}",
        f"-rss_limit_mb={rss_limit_mb}",
        f"-max_len={target.max_len}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    instrument = ",".join(target.instrument if libraries else ("pipelines",))
    cmd = [sys.executable, "-m", "tests.fuzz.runner", name, instrument, "--", *args]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    env = os.environ | {"PYTHONPATH": str(ROOT), "CXR_FUZZ_TMP": str(base / "scratch")}
    start = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=seconds + 300,
        check=False,
    )
    (base / "log.txt").write_text(proc.stdout)
    return parse_output(name, time.monotonic() - start, proc.stdout, proc.returncode)


# ---------------------------------------------------------------------------------------------
# the child


def _vm_size_mb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) // 1024
    return 0


def _cap_address_space(headroom_mb: int) -> None:
    import resource

    limit = (_vm_size_mb() + headroom_mb) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child(name: str, instrument: list[str], args: list[str]) -> None:
    """Instrument, run the seeds of ``args[1]`` once (lazy imports: codecs, plugins), fuzz."""
    import logging
    import warnings

    import atheris

    logging.disable(logging.CRITICAL)  # the readers log what they reject: not findings
    warnings.simplefilter("ignore")
    import numpy  # noqa: F401  (heavy libraries the targets use, imported uninstrumented)
    import pandas  # noqa: F401

    with atheris.instrument_imports(include=instrument):
        from tests.fuzz.targets import TARGETS

        target = TARGETS[name]
        for seed in sorted(Path(args[1]).iterdir()):
            try:
                target.check(seed.read_bytes())
            except Exception:  # libFuzzer runs the seeds again and reports
                continue
    _cap_address_space(HEADROOM_MB)

    def one_input(data: bytes) -> None:
        target.check(data)

    atheris.Setup([sys.argv[0], *args], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    _name, _instrument, _sep, *_args = sys.argv[1:]
    _child(_name, _instrument.split(","), _args)
