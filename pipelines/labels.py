"""The label space: the 14 NIH ChestX-ray14 findings, and how values are coded.

Every source maps its labels into :data:`FINDINGS`. A value is 1.0 (present), 0.0 (absent) or
NaN (not annotated by the source, or uncertain under the ``ignore`` policy). NaN is masked in the
loss and left out of that finding's AUROC.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from pipelines.errors import ConfigError

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

#: What a blank CheXpert / MIMIC cell ("not mentioned in the report") becomes: ``zeros``
#: (negative), ``nan`` (not annotated), ``nan_unless_no_finding`` (negative where the row's
#: ``No Finding`` is 1, else not annotated).
BlankPolicy = Literal["zeros", "nan", "nan_unless_no_finding"]
BLANK_POLICIES: tuple[str, ...] = ("zeros", "nan", "nan_unless_no_finding")


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


def blank_values(policy: BlankPolicy, no_finding: np.ndarray | None, n: int) -> np.ndarray:
    """The value of a blank (not mentioned) CheXpert / MIMIC cell, row by row.

    Args:
        policy: see :data:`BlankPolicy`.
        no_finding: the rows' ``No Finding`` codes (float, NaN when blank); needed only by
            ``nan_unless_no_finding``.
        n: number of rows.

    Returns:
        float32 (n,): 0.0 or NaN per row.

    Raises:
        ConfigError: an unknown policy.
        ValueError: ``nan_unless_no_finding`` without ``no_finding``.
    """
    if policy == "zeros":
        return np.zeros(n, dtype=np.float32)
    if policy == "nan":
        return np.full(n, np.nan, dtype=np.float32)
    if policy == "nan_unless_no_finding":
        if no_finding is None:
            raise ValueError("blank policy nan_unless_no_finding needs the No Finding column")
        return np.where(np.asarray(no_finding) == 1, 0.0, np.nan).astype(np.float32)
    raise ConfigError(f"unknown blank policy '{policy}'; choose one of {', '.join(BLANK_POLICIES)}")


# --- Each source's mapping into FINDINGS -------------------------------------------------------
# Source terms are matched exactly (after the normalisation each reader documents), never as
# substrings: "mass" must not match "breast mass", "emphysema" not "subcutaneous emphysema".

#: NIH ChestX-ray14 ``Finding Labels``: the 14 names themselves, or ``No Finding``.
NIH_NO_FINDING = "No Finding"

#: CheXpert / MIMIC-CXR (chexpert and negbio labelers) column -> finding. The other CheXpert
#: observations (Lung Opacity, Fracture, ...) have no ChestX-ray14 counterpart; the findings
#: missing here (Infiltration, Mass, Nodule, Emphysema, Fibrosis, Pleural_Thickening, Hernia) are
#: not annotated by these sources (NaN).
CHEXPERT_TO_FINDINGS: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural Effusion": "Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
}

#: The CheXpert / MIMIC column that is 1 when the labeler found no pathology (positive or
#: uncertain) in the report.
CHEXPERT_NO_FINDING = "No Finding"

#: PadChest ``Labels`` terms (lower case, stripped) -> findings. A term may imply two findings
#: (hydropneumothorax: air and fluid in the pleural space). ``normal`` and every other term (the
#: 190-term PadChest tree: devices, bones, ...) set no finding; all 14 are annotated (absent -> 0).
PADCHEST_TO_FINDINGS: dict[str, tuple[str, ...]] = {
    "atelectasis": ("Atelectasis",),
    "laminar atelectasis": ("Atelectasis",),
    "lobar atelectasis": ("Atelectasis",),
    "segmental atelectasis": ("Atelectasis",),
    "round atelectasis": ("Atelectasis",),
    "total atelectasis": ("Atelectasis",),
    "atelectasis basal": ("Atelectasis",),
    "cardiomegaly": ("Cardiomegaly",),
    "pleural effusion": ("Effusion",),
    "loculated pleural effusion": ("Effusion",),
    "loculated fissural effusion": ("Effusion",),
    "hydropneumothorax": ("Effusion", "Pneumothorax"),
    "infiltrates": ("Infiltration",),
    "interstitial pattern": ("Infiltration",),
    "reticular interstitial pattern": ("Infiltration",),
    "reticulonodular interstitial pattern": ("Infiltration",),
    "ground glass pattern": ("Infiltration",),
    "alveolar pattern": ("Infiltration",),
    "mass": ("Mass",),
    "pulmonary mass": ("Mass",),
    "mediastinal mass": ("Mass",),
    "pleural mass": ("Mass",),
    "nodule": ("Nodule",),
    "multiple nodules": ("Nodule",),
    "pneumonia": ("Pneumonia",),
    "atypical pneumonia": ("Pneumonia",),
    "pneumothorax": ("Pneumothorax",),
    "consolidation": ("Consolidation",),
    "air bronchogram": ("Consolidation",),
    "pulmonary edema": ("Edema",),
    "edema": ("Edema",),
    "emphysema": ("Emphysema",),
    "pulmonary fibrosis": ("Fibrosis",),
    "fibrotic band": ("Fibrosis",),
    "pleural thickening": ("Pleural_Thickening",),
    "apical pleural thickening": ("Pleural_Thickening",),
    "calcified pleural thickening": ("Pleural_Thickening",),
    "hiatal hernia": ("Hernia",),
}

#: Open-i / IU ``mesh_major`` main terms (the text before the first ``/``, lower case) ->
#: findings. ``normal`` sets none; terms not listed are ignored; all 14 are annotated.
OPENI_MESH_TO_FINDINGS: dict[str, tuple[str, ...]] = {
    "pulmonary atelectasis": ("Atelectasis",),
    "atelectasis": ("Atelectasis",),
    "atelectases": ("Atelectasis",),
    "cardiomegaly": ("Cardiomegaly",),
    "pleural effusion": ("Effusion",),
    "infiltrate": ("Infiltration",),
    "mass": ("Mass",),
    "nodule": ("Nodule",),
    "pneumonia": ("Pneumonia",),
    "pneumothorax": ("Pneumothorax",),
    "hydropneumothorax": ("Effusion", "Pneumothorax"),
    "consolidation": ("Consolidation",),
    "pulmonary edema": ("Edema",),
    "edema": ("Edema",),
    "pulmonary emphysema": ("Emphysema",),
    "emphysema": ("Emphysema",),
    "fibrosis": ("Fibrosis",),
    "pulmonary fibrosis": ("Fibrosis",),
    "pleural thickening": ("Pleural_Thickening",),
    "hernia, hiatal": ("Hernia",),
}

#: Open-i terms whose finding depends on a ``/`` modifier: (main term, modifier) -> findings.
OPENI_MESH_QUALIFIED: dict[tuple[str, str], tuple[str, ...]] = {
    ("thickening", "pleura"): ("Pleural_Thickening",),
}

#: Open-i reports that were never indexed: their findings are not annotated (NaN).
OPENI_NOT_INDEXED = "no indexing"
