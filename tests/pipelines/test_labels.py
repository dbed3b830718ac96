"""labels: coding rules, and the mapping tables of docs/label-mapping.md generated from labels.py.

The tables between ``<!-- BEGIN name -->`` / ``<!-- END name -->`` in the doc must equal what
:func:`render_blocks` makes of :mod:`pipelines.labels`; ``python -m tests.pipelines.test_labels``
rewrites them after a mapping change.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import ConfigError
from pipelines.labels import (
    BLANK_POLICIES,
    CHEXPERT_TO_FINDINGS,
    FINDINGS,
    OPENI_MESH_QUALIFIED,
    OPENI_MESH_TO_FINDINGS,
    PADCHEST_NORMAL,
    PADCHEST_NOT_MAPPED,
    PADCHEST_PLACEHOLDERS,
    PADCHEST_TERMS,
    PADCHEST_TO_FINDINGS,
    blank_values,
)
from pipelines.sources import ReadOptions
from pipelines.sources.padchest import read as read_padchest

DOC = Path(__file__).resolve().parents[2] / "docs" / "label-mapping.md"
_BLOCK = re.compile(r"<!-- BEGIN (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- END (?P=name) -->", re.S)


# ---------------------------------------------------------------------------------------------
# the generated tables


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def _first_finding(findings: tuple[str, ...]) -> int:
    return min(FINDINGS.index(f) for f in findings)


def render_blocks() -> dict[str, str]:
    """Every generated block of the doc, by name, from :mod:`pipelines.labels`."""
    padchest = sorted(PADCHEST_TO_FINDINGS.items(), key=lambda kv: (_first_finding(kv[1]), kv[0]))
    handled = set(PADCHEST_TO_FINDINGS) | set(PADCHEST_NOT_MAPPED) | set(PADCHEST_PLACEHOLDERS)
    others = sorted(PADCHEST_TERMS - handled - {PADCHEST_NORMAL})
    openi = [(t, ", ".join(f)) for t, f in OPENI_MESH_TO_FINDINGS.items()]
    openi += [(f"{t}/{m}", ", ".join(f)) for (t, m), f in OPENI_MESH_QUALIFIED.items()]
    return {
        "chexpert": _table(
            ("CheXpert / MIMIC column", "finding"), list(CHEXPERT_TO_FINDINGS.items())
        ),
        "padchest-mapped": _table(
            ("PadChest term", "finding(s)"), [(t, ", ".join(f)) for t, f in padchest]
        ),
        "padchest-not-mapped": _table(
            ("PadChest term", "why it maps to no finding"), sorted(PADCHEST_NOT_MAPPED.items())
        ),
        "padchest-placeholders": "".join(f"- `{t}`\n" for t in sorted(PADCHEST_PLACEHOLDERS)),
        "padchest-others": ", ".join(f"`{t}`" for t in others) + "\n",
        "openi": _table(("Open-i MeSH term", "finding(s)"), sorted(openi)),
    }


def doc_blocks(text: str) -> dict[str, str]:
    """The generated blocks found in the doc's text, by name."""
    return {m["name"]: m["body"] for m in _BLOCK.finditer(text)}


def rewrite_doc(path: Path = DOC) -> None:
    """Replace every generated block of the doc with :func:`render_blocks`."""
    blocks = render_blocks()

    def body(m: re.Match) -> str:
        name = m["name"]
        return f"<!-- BEGIN {name} -->\n{blocks[name]}<!-- END {name} -->"

    path.write_text(_BLOCK.sub(body, path.read_text()))


def test_doc_tables_are_generated_from_labels_py():
    found = doc_blocks(DOC.read_text())
    assert set(found) == set(render_blocks())
    for name, body in render_blocks().items():
        assert found[name] == body, (
            f"{DOC.name} block '{name}' differs from pipelines/labels.py: run "
            "`python -m tests.pipelines.test_labels` to regenerate it"
        )


def _doc_rows(name: str) -> list[tuple[str, str]]:
    body = doc_blocks(DOC.read_text())[name]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines()[2:]]
    return [(a, b) for a, b in cells]


def test_every_documented_padchest_term_reads_as_the_doc_says(tmp_path):
    mapped = _doc_rows("padchest-mapped")
    not_mapped = [t for t, _ in _doc_rows("padchest-not-mapped")]
    placeholders = re.findall(r"`([^`]+)`", doc_blocks(DOC.read_text())["padchest-placeholders"])
    assert len(mapped) == len(PADCHEST_TO_FINDINGS) and len(placeholders) == 3
    terms = [t for t, _ in mapped] + not_mapped + placeholders
    lines = ["ImageID,ImageDir,StudyID,PatientID,Projection,Labels"]
    lines += [f"i{n}.png,0,s{n},p{n},PA,\"['{t}']\"" for n, t in enumerate(terms)]
    table = tmp_path / "PADCHEST_terms.csv"
    table.write_text("\n".join(lines) + "\n")
    result = read_padchest(table, ReadOptions(salt=b"t", verify_files=False))
    m = result.manifest[list(FINDINGS)]
    assert len(m) == len(terms) and result.counts["unknown_terms"] == 0
    for i, (term, findings) in enumerate(mapped):
        row = m.iloc[i]
        assert row[row == 1].index.tolist() == [f for f in FINDINGS if f in findings.split(", ")]
        assert row.notna().all(), term
    for i, term in enumerate(not_mapped, start=len(mapped)):
        assert (m.iloc[i] == 0).all(), term  # annotated: none of the 14
    assert m.iloc[len(mapped) + len(not_mapped) :].isna().all().all()  # placeholders: NaN


# ---------------------------------------------------------------------------------------------
# the vocabularies


def test_padchest_vocabulary_is_partitioned():
    assert len(PADCHEST_TERMS) == 194  # the released 193 + hemothorax of the label tree
    groups = [set(PADCHEST_TO_FINDINGS), set(PADCHEST_NOT_MAPPED), set(PADCHEST_PLACEHOLDERS)]
    groups.append({PADCHEST_NORMAL})
    for i, a in enumerate(groups):
        assert a <= PADCHEST_TERMS, a - PADCHEST_TERMS
        for b in groups[i + 1 :]:
            assert not a & b, a & b
    assert all(t == t.strip().lower() for t in PADCHEST_TERMS)


def test_padchest_exact_terms_only():
    # look-alikes of a finding's term map to nothing (exact matching, never substrings)
    for term in ("breast mass", "soft tissue mass", "subcutaneous emphysema", "pseudonodule"):
        assert term in PADCHEST_TERMS and term not in PADCHEST_TO_FINDINGS, term
    assert PADCHEST_TO_FINDINGS["empyema"] == PADCHEST_TO_FINDINGS["hemothorax"] == ("Effusion",)
    assert PADCHEST_TO_FINDINGS["hydropneumothorax"] == ("Effusion", "Pneumothorax")
    assert set(PADCHEST_TO_FINDINGS["consolidation"]) == {"Consolidation", "Infiltration"}


def test_mapping_targets_are_findings():
    for mapping in (PADCHEST_TO_FINDINGS, OPENI_MESH_TO_FINDINGS, OPENI_MESH_QUALIFIED):
        assert {f for v in mapping.values() for f in v} <= set(FINDINGS)
    assert set(CHEXPERT_TO_FINDINGS.values()) <= set(FINDINGS)


# ---------------------------------------------------------------------------------------------
# coding rules


def test_blank_values():
    no_finding = np.array([1.0, 0.0, np.nan, -1.0])
    assert blank_values("zeros", None, 4).tolist() == [0, 0, 0, 0]
    assert np.isnan(blank_values("nan", None, 4)).all()
    got = blank_values("nan_unless_no_finding", no_finding, 4)
    assert got[0] == 0 and np.isnan(got[1:]).all() and got.dtype == np.float32
    with pytest.raises(ValueError):
        blank_values("nan_unless_no_finding", None, 4)
    with pytest.raises(ConfigError, match="unknown blank policy 'ones'"):
        blank_values("ones", None, 4)  # type: ignore[arg-type]
    assert BLANK_POLICIES == ("zeros", "nan", "nan_unless_no_finding")


if __name__ == "__main__":  # regenerate the doc's tables
    rewrite_doc()
    sys.exit(0)
