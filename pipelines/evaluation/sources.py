"""AUROC per data source: the external-validation view of a multi-source evaluation.

A model trained on some datasets and tested on another (``pair.holdout_source``) is judged by
how it does on each source, not by one pooled number: pooling hides a source on which it fails.
When the scored studies come from two sources or more, :func:`by_source` computes, for each
(split, source), the per-finding and macro AUROC with its own patient-level bootstrap (a
source's patients are resampled among themselves): with a held-out source, its test column is
the external validation and the other sources' validation columns the internal one.
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
    """Each (split, source)'s AUROC with CIs when the rows hold several sources (else empty).

    Args:
        df: a validated predictions table (see :mod:`pipelines.evaluation.summary`); without a
            ``source`` column nothing is broken down.
        findings: the findings to score (the trained ones).
        resamples, seed, level: the bootstrap of every CI.
    """
    if "source" not in df:
        return []
    dual = df[(df["mode"] == "dual") & df["split"].isin(SPLITS)]
    if dual["source"].nunique() < 2:
        return []
    out = []
    for split in SPLITS:
        part = dual[dual["split"] == split]
        for name in sorted(set(part["source"])):
            rows = part[part["source"] == name].sort_values("study_key")
            y = rows[[f"y_{f}" for f in findings]].to_numpy(np.float64)
            p = rows[[f"p_{f}" for f in findings]].to_numpy(np.float64)
            boot = PatientBootstrap(rows["patient_key"].to_numpy(), resamples, seed)
            out.append(SourceResult(split, name, compute_roc_auc(y, p, boot, findings, level)))
    return out
