"""The label space: the 14 NIH ChestX-ray14 findings, and how values are coded.

Every source maps its labels into :data:`FINDINGS`. A value is 1.0 (present), 0.0 (absent) or
NaN (not annotated by the source, or uncertain under the ``ignore`` policy). NaN is masked in the
loss and left out of that finding's AUROC. ``docs/label-mapping.md`` tabulates every mapping of
this module (a test keeps the two equal).
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

#: PadChest ``Labels`` terms (lower case, stripped) -> findings: the finding's own term and the
#: terms that name a kind of it (PadChest's label tree puts a term under its parent; a child
#: implies its parent, so ``consolidation`` is also an infiltrate). A term may imply two findings
#: (hydropneumothorax: air and fluid in the pleural space). Every other term sets no finding; a
#: row with real labels is annotated for all 14 (absent -> 0).
PADCHEST_TO_FINDINGS: dict[str, tuple[str, ...]] = {
    "atelectasis": ("Atelectasis",),
    "atelectasis basal": ("Atelectasis",),
    "laminar atelectasis": ("Atelectasis",),
    "lobar atelectasis": ("Atelectasis",),
    "round atelectasis": ("Atelectasis",),
    "segmental atelectasis": ("Atelectasis",),
    "total atelectasis": ("Atelectasis",),
    "cardiomegaly": ("Cardiomegaly",),
    "pleural effusion": ("Effusion",),
    "loculated pleural effusion": ("Effusion",),
    "loculated fissural effusion": ("Effusion",),
    "empyema": ("Effusion",),
    "hemothorax": ("Effusion",),
    "hydropneumothorax": ("Effusion", "Pneumothorax"),
    "infiltrates": ("Infiltration",),
    "interstitial pattern": ("Infiltration",),
    "reticular interstitial pattern": ("Infiltration",),
    "reticulonodular interstitial pattern": ("Infiltration",),
    "ground glass pattern": ("Infiltration",),
    "alveolar pattern": ("Infiltration",),
    "miliary opacities": ("Infiltration",),
    "consolidation": ("Consolidation", "Infiltration"),
    "air bronchogram": ("Consolidation", "Infiltration"),
    "mass": ("Mass",),
    "pulmonary mass": ("Mass",),
    "mediastinal mass": ("Mass",),
    "pleural mass": ("Mass",),
    "nodule": ("Nodule",),
    "multiple nodules": ("Nodule",),
    "pneumonia": ("Pneumonia",),
    "atypical pneumonia": ("Pneumonia",),
    "pneumothorax": ("Pneumothorax",),
    "pulmonary edema": ("Edema",),
    "emphysema": ("Emphysema",),
    "pulmonary fibrosis": ("Fibrosis",),
    "fibrotic band": ("Fibrosis",),
    "post radiotherapy changes": ("Fibrosis",),
    "asbestosis signs": ("Fibrosis",),
    "pleural thickening": ("Pleural_Thickening",),
    "apical pleural thickening": ("Pleural_Thickening",),
    "calcified pleural thickening": ("Pleural_Thickening",),
    "pleural plaques": ("Pleural_Thickening",),
    "calcified pleural plaques": ("Pleural_Thickening",),
    "hiatal hernia": ("Hernia",),
}

#: PadChest's "normal": a valid label that sets no finding (all 14 are 0).
PADCHEST_NORMAL = "normal"

#: PadChest terms that say nothing about the image's findings: ``unchanged`` (no change from a
#: previous study, whose labels are not given), ``exclude`` and ``suboptimal study`` (flagged by
#: the curators as not reportable). A row whose terms are all placeholders is not annotated
#: (all 14 NaN); beside real terms they are ignored.
PADCHEST_PLACEHOLDERS: frozenset[str] = frozenset({"unchanged", "exclude", "suboptimal study"})

#: Notable PadChest terms that map to no finding, and why (a look-alike of a finding's term, a
#: sign that accompanies a finding without being it, or a finding outside the lung).
PADCHEST_NOT_MAPPED: dict[str, str] = {
    "breast mass": "a breast lesion, outside the chest cavity",
    "soft tissue mass": "a chest-wall lesion, outside the chest cavity",
    "lung metastasis": "seen as nodules or as masses: the term does not say which",
    "pseudonodule": "a nodule mimic (PadChest's parent of nipple shadow and end on vessel)",
    "nipple shadow": "a nodule mimic (under pseudonodule in PadChest's tree)",
    "end on vessel": "a nodule mimic (under pseudonodule in PadChest's tree)",
    "granuloma": "a benign diagnosis PadChest labels apart from nodule",
    "calcified granuloma": "under calcified densities in PadChest's tree, not under nodule",
    "increased density": "an unspecified opacity, not under infiltrates in PadChest's tree",
    "subcutaneous emphysema": "air in the soft tissues of the chest wall, not lung emphysema",
    "copd signs": "a clinical impression that names no single finding",
    "hyperinflated lung": "accompanies emphysema but also asthma or a deep inspiration",
    "flattened diaphragm": "accompanies emphysema but also asthma or a deep inspiration",
    "air trapping": "accompanies emphysema but also small-airway disease",
    "bullas": "bullae occur with and without emphysema",
    "costophrenic angle blunting": "effusion or pleural thickening: the term does not say which",
    "fissure thickening": "fluid in the fissure or a thickened fissure: neither is certain",
    "minor fissure thickening": "as fissure thickening",
    "major fissure thickening": "as fissure thickening",
    "pericardial effusion": "fluid around the heart, not in the pleural space",
    "pneumomediastinum": "air in the mediastinum, not in the pleural space",
    "pneumoperitoneo": "air under the diaphragm, not in the pleural space",
    "heart insufficiency": "a clinical diagnosis (heart failure), not a radiographic finding",
    "kerley lines": "septal lines of interstitial edema, but also of lymphangitic tumour",
    "vascular redistribution": "raised venous pressure, before edema",
    "central vascular redistribution": "raised venous pressure, before edema",
    "hilar congestion": "raised venous pressure, before edema",
    "volume loss": "a smaller lung or lobe without the term atelectasis",
    "hypoexpansion": "a shallow inspiration, not a collapse",
    "hypoexpansion basal": "a shallow inspiration, not a collapse",
    "mediastinal enlargement": "a wide mediastinum is not cardiomegaly (nor a mass unless named)",
    "diaphragmatic eventration": "a thin, raised diaphragm, not a hernia",
    "chilaiditi sign": "bowel between liver and diaphragm, not a hernia",
    "tuberculosis": "a diagnosis with many appearances, none implied",
    "tuberculosis sequelae": "a diagnosis with many appearances, none implied",
    "abscess": "a cavitated infection PadChest labels apart from pneumonia",
    "respiratory distress": "a clinical syndrome, not one radiographic finding",
    "chronic changes": "unspecific",
}

# PadChest's label vocabulary: the 193 terms of the released label file (lower case), plus
# "hemothorax", which its label tree holds but no image carries.
_PADCHEST_TERMS = """
abnormal foreign body, abscess, adenopathy, air bronchogram, air fluid level, air trapping,
alveolar pattern, aortic aneurysm, aortic atheromatosis, aortic button enlargement,
aortic elongation, aortic endoprosthesis, apical pleural thickening,
artificial aortic heart valve, artificial heart valve, artificial mitral heart valve,
asbestosis signs, ascendent aortic elongation, atelectasis, atelectasis basal,
atypical pneumonia, axial hyperostosis, azygoesophageal recess shift, azygos lobe,
blastic bone lesion, bone cement, bone metastasis, breast mass, bronchiectasis,
bronchovascular markings, bullas, calcified adenopathy, calcified densities,
calcified fibroadenoma, calcified granuloma, calcified mediastinal adenopathy,
calcified pleural plaques, calcified pleural thickening, callus rib fracture, cardiomegaly,
catheter, cavitation, central vascular redistribution, central venous catheter,
central venous catheter via jugular vein, central venous catheter via subclavian vein,
central venous catheter via umbilical vein, cervical rib, chest drain tube, chilaiditi sign,
chronic changes, clavicle fracture, consolidation, copd signs,
costochondral junction hypertrophy, costophrenic angle blunting, cyst, dai,
descendent aortic elongation, dextrocardia, diaphragmatic eventration, double j stent,
dual chamber device, electrical device, emphysema, empyema, end on vessel, endoprosthesis,
endotracheal tube, esophagic dilatation, exclude, external foreign body, fibrotic band,
fissure thickening, flattened diaphragm, fracture, gastrostomy tube, goiter, granuloma,
ground glass pattern, gynecomastia, heart insufficiency, heart valve calcified,
hemidiaphragm elevation, hemothorax, hiatal hernia, hilar congestion, hilar enlargement,
humeral fracture, humeral prosthesis, hydropneumothorax, hyperinflated lung, hypoexpansion,
hypoexpansion basal, increased density, infiltrates, interstitial pattern, kerley lines,
kyphosis, laminar atelectasis, lepidic adenocarcinoma, lipomatosis, lobar atelectasis,
loculated fissural effusion, loculated pleural effusion, lung metastasis, lung vascular paucity,
lymphangitis carcinomatosa, lytic bone lesion, major fissure thickening, mammary prosthesis,
mass, mastectomy, mediastinal enlargement, mediastinal mass, mediastinal shift,
mediastinic lipomatosis, metal, miliary opacities, minor fissure thickening, multiple nodules,
nephrostomy tube, nipple shadow, nodule, non axial articular degenerative changes, normal,
nsg tube, obesity, osteopenia, osteoporosis, osteosynthesis material, pacemaker,
pectum carinatum, pectum excavatum, pericardial effusion, pleural effusion, pleural mass,
pleural plaques, pleural thickening, pneumomediastinum, pneumonia, pneumoperitoneo,
pneumothorax, post radiotherapy changes, prosthesis, pseudonodule, pulmonary artery enlargement,
pulmonary artery hypertension, pulmonary edema, pulmonary fibrosis, pulmonary hypertension,
pulmonary mass, pulmonary venous hypertension, reservoir central venous catheter,
respiratory distress, reticular interstitial pattern, reticulonodular interstitial pattern,
rib fracture, right sided aortic arch, round atelectasis, sclerotic bone lesion, scoliosis,
segmental atelectasis, single chamber device, soft tissue mass,
sternoclavicular junction hypertrophy, sternotomy, subacromial space narrowing,
subcutaneous emphysema, suboptimal study, superior mediastinal enlargement,
supra aortic elongation, surgery, surgery breast, surgery heart, surgery humeral, surgery lung,
surgery neck, suture material, thoracic cage deformation, total atelectasis, tracheal shift,
tracheostomy tube, tuberculosis, tuberculosis sequelae, unchanged, vascular hilar enlargement,
vascular redistribution, ventriculoperitoneal drain tube, vertebral anterior compression,
vertebral compression, vertebral degenerative changes, vertebral fracture, volume loss
"""

#: Every PadChest label term (lower case): a term outside it is ignored by the reader and counted.
PADCHEST_TERMS: frozenset[str] = frozenset(
    t.strip() for t in _PADCHEST_TERMS.replace("\n", " ").split(",") if t.strip()
)

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
