"""AUROC per data source: the external-validation view of a multi-source evaluation.

A model trained on some datasets and tested on another (``pair.holdout_source``) is judged by
how it does on each source, not by one pooled number: pooling hides a source on which it fails.
For every scored split whose dual-view rows come from two sources or more,
:func:`by_source` computes each source's per-finding and macro AUROC with its own
patient-level bootstrap (a source's patients are resampled among themselves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.evaluation.bootstrap import PatientBootstrap
from pipelines.evaluation.metrics import DiscriminationReport, compute_roc_auc

#: The splits broken down, in the order the report shows them.
SPLITS: tuple[str, ...] = ("test", "val")


@dataclass(frozen=True)
class SourceResult:
    """One source's discrimination on one split (dual view)."""

    split: str
    source: str
    discrimination: DiscriminationReport


def by_source(
    df: pd.DataFrame, findings: list[str], resamples: int, seed: int, level: float
) -> list[SourceResult]:
    """Per split holding several sources, each source's AUROC with CIs (empty otherwise).

    Args:
        df: a validated predictions table (see :mod:`pipelines.evaluation.summary`); without a
            ``source`` column nothing is broken down.
        findings: the findings to score (the trained ones).
        resamples, seed, level: the bootstrap of every CI.
    """
    if "source" not in df:
        return []
    out = []
    for split in SPLITS:
        part = df[(df["split"] == split) & (df["mode"] == "dual")]
        names = sorted(set(part["source"]))
        if len(names) < 2:
            continue
        for name in names:
            rows = part[part["source"] == name].sort_values("study_key")
            y = rows[[f"y_{f}" for f in findings]].to_numpy(np.float64)
            p = rows[[f"p_{f}" for f in findings]].to_numpy(np.float64)
            boot = PatientBootstrap(rows["patient_key"].to_numpy(), resamples, seed)
            out.append(SourceResult(split, name, compute_roc_auc(y, p, boot, findings, level)))
    return out
