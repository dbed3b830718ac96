"""Benchmark the patient-level bootstrap: vectorised AUROC vs scikit-learn in a loop.

Simulates a test split (default 10,000 studies of 5,000 patients, 14 findings, some labels
missing) and times, in the same process:

- the vectorised bootstrap of :mod:`pipelines.evaluation.metrics`: per-finding AUROC + AUPRC
  replicates (one pass), and the whole :func:`~pipelines.evaluation.metrics.compute_roc_auc`
  (AUROC, AUPRC, macro, micro with CIs) for all resamples;
- the baseline: ``sklearn.metrics.roc_auc_score`` per finding on explicitly resampled index
  arrays, looped over a few resamples (``--baseline-resamples``) and extrapolated per resample.

It checks that both give the same AUROC on the baseline's resamples and prints the ratio.
Timings depend on the machine's load: rerun on a quiet machine before quoting them.

Usage:
    python benchmarks/bench_bootstrap.py [--resamples 2000] [--studies 10000] [--patients 5000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from pipelines.evaluation.bootstrap import PatientBootstrap
from pipelines.evaluation.metrics import bootstrap_rank_metrics, compute_roc_auc
from pipelines.labels import FINDINGS


def simulate(studies: int, patients: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Labels (with 5 % NaN), probabilities and patient keys of a simulated test split."""
    rng = np.random.default_rng(seed)
    extra = rng.integers(0, patients, max(0, studies - patients))
    patient = np.sort(np.r_[np.arange(min(patients, studies)), extra])  # each patient >= 1 study
    prevalence = np.linspace(0.02, 0.3, len(FINDINGS))
    y = (rng.random((studies, len(FINDINGS))) < prevalence).astype(np.float64)
    p = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 1.2 * y - 1.5)))
    p = np.round(p, 4)  # float32-like resolution: some ties, as real scores have
    y[rng.random(y.shape) < 0.05] = np.nan
    return y, p, patient.astype(str)


def sklearn_loop(y: np.ndarray, p: np.ndarray, boot: PatientBootstrap, n: int) -> np.ndarray:
    """AUROC replicates of the first ``n`` resamples by scikit-learn on resampled indices."""
    out = np.full((n, y.shape[1]), np.nan)
    weights = next(boot.weights())[:n].astype(np.int64)
    for b in range(n):
        idx = np.repeat(np.arange(len(y)), weights[b])
        for f in range(y.shape[1]):
            yy, pp = y[idx, f], p[idx, f]
            keep = ~np.isnan(yy)
            if len(np.unique(yy[keep])) == 2:
                out[b, f] = roc_auc_score(yy[keep], pp[keep])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--patients", type=int, default=5_000)
    parser.add_argument("--baseline-resamples", type=int, default=20)
    args = parser.parse_args()

    y, p, keys = simulate(args.studies, args.patients)
    boot = PatientBootstrap(keys, args.resamples, seed=0)
    print(
        f"{args.studies} studies, {boot.n_patients} patients, {y.shape[1]} findings, "
        f"{args.resamples} resamples"
    )

    start = time.perf_counter()
    auc, _ = bootstrap_rank_metrics(y, p, boot)
    vec_s = time.perf_counter() - start
    start = time.perf_counter()
    compute_roc_auc(y, p, boot, list(FINDINGS))
    full_s = time.perf_counter() - start

    n = min(args.baseline_resamples, args.resamples)
    start = time.perf_counter()
    ref = sklearn_loop(y, p, boot, n)
    base_s = time.perf_counter() - start
    diff = float(np.nanmax(np.abs(ref - auc[:n])))

    vec_per = vec_s / args.resamples
    base_per = base_s / n
    print(f"vectorised AUROC+AUPRC, all findings: {vec_s:7.2f} s ({vec_per * 1e3:.2f} ms/resample)")
    print(f"compute_roc_auc (+ macro, micro, CIs): {full_s:7.2f} s")
    print(
        f"sklearn loop, AUROC only, {n} resamples: {base_s:7.2f} s "
        f"({base_per * 1e3:.1f} ms/resample)"
    )
    print(f"sklearn extrapolated to {args.resamples} resamples: {base_per * args.resamples:7.1f} s")
    print(f"speed-up per resample (AUROC+AUPRC vs sklearn AUROC only): {base_per / vec_per:.1f}x")
    print(f"max |AUROC difference| on the shared resamples: {diff:.2e}")


if __name__ == "__main__":
    main()
