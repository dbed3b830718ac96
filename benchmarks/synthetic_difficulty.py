"""How hard the embedded dataset is: the demo's figures for given params, in a scratch repository.

Copies the pipeline (code, ``dvc.yaml``, ``params.yaml``) into a temporary git + DVC repository,
applies ``--set section.key=value`` overrides (YAML values), runs ``dvc repro evaluate`` and
prints what issue-level targets of the demo are about:

- test macro AUROC (dual view) and the highest per-finding AUROC;
- per finding: AUROC with its CI, the lateral-view gain with its paired CI and verdict;
- the median width of the per-finding AUROC CIs, and the test split's size;
- the wall time of each stage (from DVC's log).

    .venv/bin/python benchmarks/synthetic_difficulty.py
    .venv/bin/python benchmarks/synthetic_difficulty.py --set synthesize.realism.devices=0.5 \\
        --set train.epochs=6 --keep /tmp/run1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.process import child_env  # noqa: E402


def scratch_repo(folder: Path, overrides: dict[str, object]) -> Path:
    """A git + DVC repository with this project's pipeline and the overridden params."""
    repo = folder / "repo"
    repo.mkdir(parents=True)
    shutil.copytree(
        ROOT / "pipelines", repo / "pipelines", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in overrides.items():
        *path, key = dotted.split(".")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = str(Path(sys.executable).with_name("dvc"))
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True)
    git = ["git", "-c", "user.email=b@cxr.invalid", "-c", "user.name=bench"]
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "scratch"], cwd=repo, check=True)
    return repo


def run(repo: Path, target: str) -> dict[str, float]:
    """``dvc repro target``, streaming nothing; returns seconds per stage."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    stages: dict[str, float] = {}
    current, started = None, time.perf_counter()
    proc = subprocess.Popen(
        [dvc, "repro", target], cwd=repo, env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        tail = [*tail[-30:], line.rstrip()]
        if line.startswith("Running stage '"):
            now = time.perf_counter()
            if current:
                stages[current] = now - started
            current, started = line.split("'")[1], now
    if proc.wait() != 0:
        raise SystemExit("dvc repro failed:\n" + "\n".join(tail))
    if current:
        stages[current] = time.perf_counter() - started
    return stages


def report(repo: Path, stages: dict[str, float]) -> dict[str, object]:
    """The figures of the run (see the module docstring)."""
    headline = json.loads((repo / "metrics/evaluate.json").read_text())
    findings = json.loads((repo / "metrics/evaluate_findings.json").read_text())["findings"]
    widths = [f["auroc_hi"] - f["auroc_lo"] for f in findings.values() if "auroc_hi" in f]
    rows = {
        name: {
            "auroc": f.get("auroc"),
            "ci": [f.get("auroc_lo"), f.get("auroc_hi")],
            "lateral_gain": f.get("lateral_delta"),
            "gain_ci": [f.get("lateral_delta_lo"), f.get("lateral_delta_hi")],
            "verdict": f.get("lateral_verdict"),
            "n_pos": f.get("n_pos"),
        }
        for name, f in findings.items()
    }
    return {
        "macro_auroc": headline.get("macro_auroc"),
        "macro_ci": [headline.get("macro_auroc_lo"), headline.get("macro_auroc_hi")],
        "max_finding_auroc": max(r["auroc"] for r in rows.values() if r["auroc"] is not None),
        "helps": sorted(n for n, r in rows.items() if r["verdict"] == "helps"),
        "median_ci_width": statistics.median(widths) if widths else None,
        "test_studies": headline.get("test_studies"),
        "test_patients": headline.get("test_patients"),
        "seconds": {k: round(v, 1) for k, v in stages.items()},
        "findings": rows,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--target", default="evaluate", help="last stage to run (default: evaluate)")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = ap.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    folder = args.keep or Path(tempfile.mkdtemp(prefix="cxr-difficulty-"))
    try:
        repo = scratch_repo(folder, overrides)
        stages = run(repo, args.target)
        result = report(repo, stages) if args.target in ("evaluate", "export") else stages
        print(json.dumps({"overrides": overrides, **result}, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
