"""Coverage-guided fuzzing of every entry point that reads untrusted bytes (atheris + libFuzzer).

Runs each target of :data:`tests.fuzz.targets.TARGETS` for ``--seconds`` in its own process
(``tests/fuzz/runner.py``: the contract, the per-input time limit, the address-space cap) and
prints, per target, the executions, the coverage at the start (the seeds) and at the end (``cov``:
edges, ``ft``: features), the corpus, and the findings with the input that triggered each. The
baseline of the coverage figures is the seed corpus, measured in the same run.

A target's corpus is kept in ``--work`` (default ``.fuzz/``, ignored by git), so a later run
resumes where this one stopped. Keep each finding as a regression input once it is fixed: copy
it to ``tests/fixtures/fuzz/<target>/<name>.bin`` and record its outcome in ``expected.json``
(``tests/fuzz/test_fuzz_regressions.py`` replays them all).

Example:
    .venv/bin/python benchmarks/fuzz.py --seconds 600 --jobs 2 --nice 10
    .venv/bin/python benchmarks/fuzz.py --targets image,params --seconds 60
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzz.runner import TIMEOUT_S, FuzzResult, run_target  # noqa: E402
from tests.fuzz.targets import TARGETS  # noqa: E402


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="all", help=f"comma-separated of {', '.join(TARGETS)}")
    parser.add_argument("--seconds", type=int, default=60, help="per target (seeds included)")
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the fuzzing processes")
    parser.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds per input")
    parser.add_argument("--work", type=Path, default=ROOT / ".fuzz", help="corpora, findings")
    parser.add_argument("--fresh", action="store_true", help="start from the seeds alone")
    return parser.parse_args(argv)


def _line(r: FuzzResult) -> str:
    findings = "; ".join(f"{f.kind}: {f.summary} -> {f.artifact}" for f in r.findings)
    if not findings and r.returncode:
        findings = f"libFuzzer exited {r.returncode} (see {r.target}/log.txt)"
    return (
        f"{r.target:<17} {r.seconds:6.0f} {r.execs:>9,} {r.exec_per_s:>6} "
        f"{r.cov_start:>5} -> {r.cov:<5} {r.ft_start:>6} -> {r.ft:<6} {r.corpus:>6}  "
        f"{findings or 'none'}"
    )


def main(argv: list[str] | None = None) -> int:
    """Fuzz the targets; exit status 1 when any has a finding."""
    args = _args(argv)
    names = list(TARGETS) if args.targets == "all" else args.targets.split(",")
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; choose among {', '.join(TARGETS)}")
    print(
        f"{'target':<17} {'wall s':>6} {'execs':>9} {'exec/s':>6} {'cov: seeds -> end':<17} "
        f"{'ft: seeds -> end':<18} {'corpus':>6}  findings",
        flush=True,
    )

    def one(name: str) -> FuzzResult:
        result = run_target(
            name,
            args.seconds,
            args.work,
            timeout_s=args.timeout,
            nice=args.nice,
            resume=not args.fresh,
        )
        print(_line(result), flush=True)
        return result

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, names))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
