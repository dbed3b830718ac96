"""CheXpert: ``train.csv`` / ``valid.csv`` (or ``.csv.gz``) -> manifest rows.

Columns used: ``Path``, ``Frontal/Lateral``, ``AP/PA`` and the CheXpert observations mapped by
:data:`pipelines.labels.CHEXPERT_TO_FINDINGS` (Atelectasis, Cardiomegaly, Consolidation, Edema,
Pleural Effusion -> Effusion, Pneumonia, Pneumothorax), and ``Sex`` / ``Age`` when present (kept
only as sex and a 10-year age band, :mod:`pipelines.demographics`; ``Unknown`` sex is unknown).

- Image root: ``options.images`` if given. Otherwise ``Path`` values start with the dataset
  folder (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``), and the CSV
  normally sits inside that folder, so the root is **the folder above the dataset folder**: the
  CSV folder's parent when the CSV folder is named like the first ``Path`` component, else the
  CSV folder itself (a CSV kept beside the dataset folder). ``path`` is ``Path`` unchanged,
  relative to that root.
- Keys: patient ``patientN`` and study ``patientN/studyN`` taken from ``Path``; image = the
  ``patientN/studyN/file`` tail (so the small and full-size releases give the same ids); all
  prefixed ``chexpert:``. A ``Path`` without that pattern is rejected (``unparsable_path``).
- View: ``Lateral`` -> LATERAL; Frontal -> ``AP/PA`` through the canonical view map (PA, AP;
  anything else OTHER). ``view_raw`` is ``Frontal/AP``-style text.
- Labels: 1 positive, 0 negative, -1 uncertain (``options.uncertain``: ignore -> NaN, ones,
  zeros). Blank (the labeler found no mention in the report) by ``options.blank``: ``zeros``
  (the default: negative), ``nan`` (not annotated) or ``nan_unless_no_finding`` (negative in
  rows whose ``No Finding`` is 1, else NaN; the CSV must have ``No Finding``). Why zeros is the
  default: ``docs/label-mapping.md``. The seven other ChestX-ray14 findings are not annotated by
  CheXpert (NaN). Any other cell value is ``label_out_of_domain``.
- Sizes: not in the CSV (0 / '' unless ``verify_files`` reads them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.demographics import age_bands, sexes
from pipelines.dicom.view import canonical_views
from pipelines.labels import CHEXPERT_NO_FINDING, CHEXPERT_TO_FINDINGS
from pipelines.sources import ReadOptions, SourceResult
from pipelines.sources.common import extract, finish, make_source_keys
from pipelines.sources.label_parsing import blank_fill, coded_labels
from pipelines.sources.rows import Rows
from pipelines.sources.tables import find_table, read_table

SOURCE = "chexpert"
PATH, FRONTAL_LATERAL, AP_PA = "Path", "Frontal/Lateral", "AP/PA"
SEX, AGE = "Sex", "Age"
_ID_PATTERN = r"(?:^|/)(?P<image>(?P<patient>patient\d+)/(?P<study>study\d+)/[^/]+)$"


def default_root(table: Path, paths: pd.Series) -> Path:
    """The folder that ``Path`` values are relative to (see the module docstring)."""
    head = paths.iloc[:1000]  # the prefix is shared: a sample decides
    first = head[head.str.contains("/", regex=False)].str.split("/", n=1).str[0]
    if len(first) and table.parent.name == first.value_counts().idxmax():
        return table.parent.parent
    return table.parent


def read(input_path: Path, options: ReadOptions) -> SourceResult:
    """Read a CheXpert ``train.csv`` / ``valid.csv``.

    Args:
        input_path: the CSV (or a folder holding exactly one ``train.csv`` or
            ``train.csv.gz``).
        options: reader options (``images``, ``uncertain``, ``blank``, ``verify_files``,
            ``salt`` ...).

    Raises:
        SourceError: the CSV is missing, unreadable or lacks a required column (``No Finding``
            too under ``blank: nan_unless_no_finding``).
    """
    table = find_table(input_path, ["train.csv"], "CheXpert CSV")
    required = [PATH, FRONTAL_LATERAL, AP_PA, *CHEXPERT_TO_FINDINGS]
    df = read_table(
        table,
        required,
        [CHEXPERT_NO_FINDING, SEX, AGE],
        what="CheXpert CSV",
        max_line_bytes=options.max_csv_line_bytes,
    )
    blank_value = blank_fill(df, options.blank, table, "CheXpert CSV")
    path = df[PATH].str.strip().str.replace("\\", "/", regex=False)
    root = Path(options.images) if options.images else default_root(table, path)
    rows = Rows(len(df), SOURCE, table)
    rows.reject_blank(df, [PATH])
    ids = extract(path, _ID_PATTERN)
    rows.reject(
        ids["image"].isna().to_numpy(), "unparsable_path", "Path has no patientN/studyN/<file> tail"
    )
    labels = coded_labels(
        df, CHEXPERT_TO_FINDINGS, rows, blank_value=blank_value, policy=options.uncertain
    )
    rows.reject_duplicates(ids["image"].fillna(""))

    keep = rows.keep
    sub = df.loc[keep].reset_index(drop=True)
    ids = ids.loc[keep].reset_index(drop=True)
    fl = sub[FRONTAL_LATERAL].str.strip()
    appa = sub[AP_PA].str.strip()
    frontal = canonical_views(appa)
    view = np.where(
        fl.str.lower() == "lateral",
        "LATERAL",
        np.where(frontal.isin(["PA", "AP"]).to_numpy(), frontal.to_numpy(), "OTHER"),
    )
    frame = pd.DataFrame(
        {
            **make_source_keys(
                SOURCE,
                ids["patient"],
                ids["patient"] + "/" + ids["study"],
                ids["image"],
                options.salt,
            ),
            "source": SOURCE,
            "path": path[keep].reset_index(drop=True),
            "view": view,
            "view_raw": (fl + "/" + appa).str.strip("/"),
            "width": 0,
            "height": 0,
            "bits": 0,
            "photometric": "",
            "sex": sexes(sub[SEX]) if SEX in sub else "",
            "age_band": age_bands(sub[AGE]) if AGE in sub else "",
        }
    )
    frame = pd.concat([frame, labels.loc[keep].reset_index(drop=True)], axis=1)
    return finish(frame, rows, root, options, len(df))
