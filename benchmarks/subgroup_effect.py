"""Does the evaluation find a subgroup gap that is really in the pixels, and only then?

For each seed, the pipeline's own stages (synthesize -> ingest -> pair -> preprocess -> train ->
evaluate, each ``python -m pipelines.<stage>`` in a scratch folder) run twice on the embedded
dataset: once with ``synthesize.subgroup_effect`` planting a gap (``--finding`` drawn at
``--strength`` times its strength in women) and once without. It prints, per run, the planted
finding's AUROC in women and in men, the gap with its adjusted CI, whether it is flagged, and
every other flag (with no planted gap, a flag is a false alarm).

    .venv/bin/python benchmarks/subgroup_effect.py --seeds 2 --studies 800

Slow (a few minutes per run on 2 cores): a benchmark, not a test. The statistics alone are
tested on simulated predictions in tests/pipelines/evaluation/test_subgroups.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("synthesize", "ingest", "pair", "preprocess", "train", "evaluate")


def params_for(seed: int, studies: int, effect: dict | None) -> dict:
    """The repository's params.yaml at a small scale, with or without the planted effect."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthesize"] |= {"studies": studies, "image_size": 64, "seed": seed,
                             "preset": "easy", "subgroup_effect": effect}  # fmt: skip
    params["preprocess"] |= {"image_size": 64}
    params["augment"] |= {"copies": 0}
    params["train"] |= {"image_size": 64, "epochs": 3, "progress": False, "deterministic": False}
    params["evaluate"] |= {"saliency": False, "bootstrap_resamples": 1000}
    return params


def run(seed: int, studies: int, effect: dict | None) -> dict:
    """One pipeline run in a scratch folder; its subgroup metrics and seconds."""
    with tempfile.TemporaryDirectory(prefix="subgroup-") as tmp:
        (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params_for(seed, studies, effect)))
        env = os.environ | {"PYTHONPATH": str(ROOT), "CXR_SALT": "benchmark-salt"}
        start = time.perf_counter()
        for stage in STAGES:
            module = "pipelines.synthetic" if stage == "synthesize" else f"pipelines.{stage}"
            done = subprocess.run([sys.executable, "-m", module], cwd=tmp, env=env,
                                  capture_output=True, text=True)  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"{stage} failed:\n{done.stderr[-3000:]}")
        metrics = json.loads((Path(tmp) / "metrics/evaluate_subgroups.json").read_text())
        return {"subgroups": metrics, "seconds": time.perf_counter() - start}


def describe(result: dict, finding: str) -> str:
    sub = result["subgroups"]
    sex = sub["attributes"].get("sex", {}).get("findings", {}).get(finding, {})
    groups = sex.get("groups", {})
    aurocs = ", ".join(f"{g} {v.get('auroc', float('nan')):.3f}" for g, v in groups.items())
    gap = sex.get("gap") or {}
    flagged = [f"{g['finding']}/{g['attribute']} {g['high']}>{g['low']}" for g in sub["flagged"]]
    return (
        f"{finding} AUROC by sex: {aurocs}; gap {gap.get('delta', float('nan')):.3f} "
        f"({gap.get('delta_lo', float('nan')):.3f} to {gap.get('delta_hi', float('nan')):.3f}), "
        f"flagged {gap.get('flagged')}; all flags: {flagged or 'none'}; "
        f"{sub['comparisons']} comparisons; {result['seconds']:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--studies", type=int, default=800)
    parser.add_argument("--finding", default="Effusion")
    parser.add_argument("--strength", type=float, default=0.1)
    args = parser.parse_args()
    effect = {"finding": args.finding, "attribute": "sex", "group": "F", "strength": args.strength}
    for seed in range(args.seeds):
        for label, planted in (("planted", effect), ("none   ", None)):
            result = run(seed, args.studies, planted)
            print(f"seed {seed} {label}: {describe(result, args.finding)}", flush=True)


if __name__ == "__main__":
    main()
