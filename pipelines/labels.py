"""The label space: the 14 NIH ChestX-ray14 findings, and how values are coded.

Every source maps its labels into :data:`FINDINGS`. A value is 1.0 (present), 0.0 (absent) or
NaN (not annotated by the source, or uncertain under the ``ignore`` policy). NaN is masked in the
loss and left out of that finding's AUROC.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

UncertainPolicy = Literal["ignore", "ones", "zeros"]


def apply_uncertain_policy(values: np.ndarray, policy: UncertainPolicy) -> np.ndarray:
    """Map CheXpert/MIMIC-style codes (1, 0, -1 uncertain, NaN blank) to 1 / 0 / NaN.

    Args:
        values: float array of codes.
        policy: ``ignore`` (uncertain -> NaN), ``ones`` (-> 1) or ``zeros`` (-> 0).
    """
    out = np.asarray(values, dtype=np.float32).copy()
    uncertain = out == -1
    out[uncertain] = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}[policy]
    return out
