"""Does test-time augmentation help? The trained checkpoint scored with and without it.

Loads the evaluate stage's checkpoint and prepared shards (``params.yaml``: ``evaluate``,
``augment``, ``base.seed``; run after ``make demo`` or ``dvc repro evaluate``) and scores the
val and test splits once per ``--views`` value: each time the single pass (the images as they
are) and the mean over it and ``K`` seeded draws of the augment policy
(:mod:`pipelines.tta`), exactly as ``evaluate.tta_views: K`` does. Per ``K`` it prints:

- the test macro AUROC with TTA and of the single pass, and the paired difference with its
  patient-bootstrap CI (:func:`pipelines.evaluation.summary.summarize`, the report's numbers),
  and how many findings it helps / hurts;
- the macro ECE (before calibration) of both, since averaging also shrinks probabilities;
- seconds to score val + test, and the ratio to ``K = 0`` measured in the same run.

Usage:
    python benchmarks/tta.py [--views 2 4 8] [--resamples 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.augment import AugmentParams
from pipelines.config import BaseParams, load_params, parse_section
from pipelines.evaluate import EvaluateParams, score_splits
from pipelines.evaluation.summary import summarize
from pipelines.runtime import resolve_device
from pipelines.tta import tta_draws


def _run(params: EvaluateParams, augment: AugmentParams, seed: int, views: int) -> dict:
    device = resolve_device(params.device, "evaluate.device")
    start = time.perf_counter()
    scored = score_splits(params, device, tta_draws(augment, seed, views))
    seconds = time.perf_counter() - start
    ev = summarize(scored.predictions, params)
    dual = ev.modes["dual"]
    return {"ev": ev, "seconds": seconds, "ece": dual.ece_compare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    raw = load_params()
    seed = parse_section(BaseParams, "base", raw, "params.yaml").seed
    params = parse_section(EvaluateParams, "evaluate", raw, "params.yaml")
    params = params.model_copy(update={"bootstrap_resamples": args.resamples, "saliency": False})
    augment = parse_section(AugmentParams, "augment", raw, "params.yaml")
    base = _run(params, augment, seed, 0)
    disc = base["ev"].modes["dual"].discrimination
    print(f"single pass: test macro AUROC {disc.macro_auroc.format()}, "
          f"{base['seconds']:.1f} s (val + test)")  # fmt: skip
    print(f"{'K':>3} {'macro AUROC TTA':>16} {'single':>8} {'difference (CI)':>28} "
          f"{'helps/hurts':>12} {'raw ECE TTA/single':>19} {'s':>6} {'x time':>7}")  # fmt: skip
    for k in args.views:
        r = _run(params, augment, seed, k)
        ev = r["ev"]
        tta = {d.finding: d for d in ev.tta}
        helps = sum(d.verdict == "helps" for d in tta.values())
        hurts = sum(d.verdict == "hurts" for d in tta.values())
        auc = ev.modes["dual"].discrimination.macro_auroc.value
        single = auc - ev.tta_macro.value
        ece = r["ece"].before["macro"].value if r["ece"] else float("nan")
        ece0 = base["ece"].before["macro"].value if base["ece"] else float("nan")
        print(f"{k:>3} {auc:>16.4f} {single:>8.4f} {ev.tta_macro.format(4):>28} "
              f"{helps:>5}/{hurts:<6} {ece:>9.3f}/{ece0:<9.3f} {r['seconds']:>6.1f} "
              f"{r['seconds'] / base['seconds']:>6.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
