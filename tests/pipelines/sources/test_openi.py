"""Open-i / IU reader: the real paired sample, MeSH mapping, and no report text in outputs."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.keys import make_key
from pipelines.labels import FINDINGS
from pipelines.schema import MANIFEST_COLUMNS
from pipelines.sources import ReadOptions
from pipelines.sources.openi import mesh_findings, read

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "real-cxr"
SAMPLE = REAL / "metadata_samples" / "openi_iu_paired_sample.csv"
SALT = b"test-salt"


def opts(**kw) -> ReadOptions:
    return ReadOptions(salt=SALT, **({"verify_files": False} | kw))


def sample() -> tuple[Path, list[dict[str, str]]]:
    if not SAMPLE.exists():
        pytest.skip(f"real data not available: {SAMPLE}")
    with SAMPLE.open(newline="") as fh:
        return SAMPLE, list(csv.DictReader(fh))


def count_main_term(raw: list[dict[str, str]], *terms: str) -> int:
    """Rows whose mesh_major has one of ``terms`` as a main term (regex on the raw text)."""
    alt = "|".join(re.escape(t) for t in terms)
    pattern = re.compile(rf"(?:^|\|)(?:{alt})(?:/|\||$)", re.IGNORECASE)
    return sum(bool(pattern.search(r["mesh_major"])) for r in raw)


def test_real_sample():
    table, raw = sample()
    result = read(table, opts())
    assert result.n_inputs == len(result.manifest) + len(result.rejected) == 62
    m = result.manifest
    assert list(m.columns) == list(MANIFEST_COLUMNS) and not result.rejected
    assert dict(Counter(m["view_raw"])) == dict(Counter(r["view_position"] for r in raw))
    assert dict(Counter(m["view"])) == {"PA": 31, "LATERAL": 30, "AP": 1}
    assert m["path"].tolist() == [r["png_name"] for r in raw]
    assert m["width"].tolist() == [int(float(r["columns"])) for r in raw]
    assert m["height"].tolist() == [int(float(r["rows"])) for r in raw]
    # IU has no patient ids: patient = study
    assert m["study_key"].nunique() == m["patient_key"].nunique() == 30
    assert m.loc[0, "patient_key"] == make_key("patient", "openi:CXR1001", SALT)
    assert m.loc[0, "study_key"] == make_key("study", "openi:CXR1001", SALT)
    assert m.loc[0, "image_id"] == make_key("image", "openi:CXR1001_IM-0004-1001", SALT)
    assert not m[list(FINDINGS)].isna().any().any()
    for finding, terms in [
        ("Atelectasis", ["Pulmonary Atelectasis"]),
        ("Cardiomegaly", ["Cardiomegaly"]),
        ("Effusion", ["Pleural Effusion"]),
        ("Emphysema", ["Emphysema", "Pulmonary Emphysema"]),
        ("Fibrosis", ["Fibrosis"]),
        ("Hernia", ["Hernia, Hiatal"]),
    ]:
        want = count_main_term(raw, *terms)
        assert want > 0 and int((m[finding] == 1).sum()) == want, finding
    assert int((m["Pleural_Thickening"] == 1).sum()) == sum(
        "Thickening/pleura" in r["mesh_major"] for r in raw
    )
    normal = np.array([r["mesh_major"] == "normal" for r in raw])
    assert normal.sum() == 10 and (m.loc[normal, list(FINDINGS)] == 0).all().all()


def test_free_text_never_reaches_output():
    table, raw = sample()
    result = read(table, opts())
    text = result.manifest.astype(str).to_csv()
    for r in raw:
        for column in ("findings", "impression"):
            words = r[column].strip()
            if len(words) > 12:
                assert words[:40] not in text


def test_mesh_mapping_rules():
    mesh = pd.Series(
        [
            "normal",
            "No Indexing",
            "",
            "Thickening/pleura/apex/left|Nodule/lung",
            "Thickening/bronchi|Granuloma",
            "pleural effusion/right|CARDIOMEGALY/mild|Infiltrate",
            "Hernia, Hiatal|Mass/mediastinum",
            "Airspace Disease/pleura",
        ]
    )
    out = mesh_findings(mesh)
    assert (out.loc[0] == 0).all()
    assert out.loc[[1, 2]].isna().all().all()  # not indexed / blank: not annotated

    def positives(i: int) -> list[str]:
        return out.columns[out.loc[i] == 1].tolist()

    assert positives(3) == ["Nodule", "Pleural_Thickening"]
    assert positives(4) == []
    assert positives(5) == ["Cardiomegaly", "Effusion", "Infiltration"]
    assert positives(6) == ["Mass", "Hernia"]
    assert positives(7) == []


def test_missing_png_and_duplicates(tmp_path):
    table = tmp_path / "openi.csv"
    table.write_text(
        "study_uid,image_id,png_name,view_position,rows,columns,mesh_major,findings,impression\n"
        "CXR1,CXR1_1,CXR1_1.png,PA,10,10,normal,secret words,more\n"
        "CXR1,CXR1_2,,LL,10,10,normal,,\n"
        "CXR1,CXR1_1,CXR1_1b.png,PA,10,10,normal,,\n"
    )
    result = read(table, opts())
    assert [(r.path, r.reason) for r in result.rejected] == [
        ("openi.csv:3", "missing_value"),
        ("openi.csv:4", "duplicate_image_id"),
    ]
    assert result.manifest["path"].tolist() == ["CXR1_1.png"]
    verified = read(table, opts(verify_files=True))
    assert verified.n_inputs == 3 and [r.reason for r in verified.rejected][-1] == "missing_file"
