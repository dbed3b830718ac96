"""Generic image-list CSV reader: the 58 real PA/lateral images, labels, and bad input."""

from __future__ import annotations

import csv
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.errors import SourceError
from pipelines.keys import make_key
from pipelines.labels import FINDINGS
from pipelines.schema import MANIFEST_COLUMNS
from pipelines.sources import ReadOptions
from pipelines.sources.csv import read

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "real-cxr"
PAIRS = REAL / "pa_lateral_pairs"
SALT = b"test-salt"


def opts(**kw) -> ReadOptions:
    return ReadOptions(salt=SALT, **({"verify_files": False} | kw))


def check_invariant(result) -> None:
    assert result.n_inputs == len(result.manifest) + len(result.rejected)
    assert list(result.manifest.columns) == list(MANIFEST_COLUMNS)


# --- an independent header parser (no PIL), to check what the reader reads ---------------------


def header_of(path: Path) -> tuple[str, int, int, str]:
    """(format, width, height, photometric) parsed from the bytes of a PNG or JPEG file."""
    data = path.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        width, height, _depth, color = struct.unpack(">IIBB", data[16:26])
        return "PNG", width, height, {0: "MONOCHROME2", 2: "RGB", 6: "RGBA"}[color]
    assert data[:2] == b"\xff\xd8", path
    i = 2
    while i < len(data):
        while data[i] == 0xFF:
            i += 1
        marker = data[i]
        i += 1
        (length,) = struct.unpack(">H", data[i : i + 2])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width, ncomp = struct.unpack(">HHB", data[i + 3 : i + 8])
            return "JPEG", width, height, {1: "MONOCHROME2", 3: "RGB"}[ncomp]
        i += length
    raise AssertionError(f"no SOF marker in {path}")


def pairs_csv(tmp_path: Path) -> tuple[Path, list[dict[str, str]]]:
    if not (PAIRS / "pairs.csv").exists():
        pytest.skip(f"real data not available: {PAIRS}")
    with (PAIRS / "pairs.csv").open(newline="") as fh:
        raw = list(csv.DictReader(fh))
    table = tmp_path / "images.csv"
    with table.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "patient", "study", "view"])
        out.writerows([r["file"], r["patientid"], r["pair_id"], r["view"]] for r in raw)
    return table, raw


@pytest.mark.parametrize("workers", [0, 2])
def test_real_pairs_verified_from_content(tmp_path, workers):
    table, raw = pairs_csv(tmp_path)
    result = read(table, opts(images=PAIRS, verify_files=True, workers=workers))
    check_invariant(result)
    m = result.manifest
    assert len(m) == 58 and not result.rejected
    assert result.data_root == str(PAIRS)
    want_views = Counter({"PA": "PA", "AP": "AP", "L": "LATERAL"}[r["view"]] for r in raw)
    assert dict(Counter(m["view"])) == dict(want_views) == {"PA": 28, "AP": 1, "LATERAL": 29}
    headers = {p: header_of(PAIRS / p) for p in m["path"]}
    misnamed = [p for p, h in headers.items() if h[0] == "PNG" and p.endswith(".jpg")]
    assert len(misnamed) == 10  # the README: ten .jpg files are PNG
    for row in m.itertuples():
        _fmt, width, height, photometric = headers[row.path]
        assert (row.width, row.height, row.photometric) == (width, height, photometric), row.path
    assert set(m["bits"]) == {8}
    assert Counter(m["photometric"])["RGBA"] == sum(h[3] == "RGBA" for h in headers.values()) > 0
    assert m["study_key"].nunique() == 29 and m["patient_key"].nunique() == 25
    assert m[list(FINDINGS)].isna().all().all()  # no label columns: not annotated
    first = raw[0]
    assert m.loc[0, "image_id"] == make_key("image", f"csv:{first['file']}", SALT)
    assert m.loc[0, "study_key"] == make_key("study", f"csv:{first['pair_id']}", SALT)


def test_finding_columns_and_labels_column(tmp_path):
    table = tmp_path / "list.csv"
    table.write_text(
        "path,patient,study,view,Cardiomegaly,Effusion,labels,age\n"
        "a.png,p1,s1,PA,1,,,40\n"  # no labels text: only the finding columns
        "b.png,p1,s1,LL,-1,0.0,Mass|pleural thickening,40\n"
        "c.png,p2,s2,ap,,,No Finding,x\n"
        "d.png,p2,s2,,,1,edema | Hernia,x\n"
    )
    for policy, unc in (("ignore", np.nan), ("ones", 1.0), ("zeros", 0.0)):
        result = read(table, opts(uncertain=policy))
        check_invariant(result)
        m = result.manifest
        assert not result.rejected
        assert m["view"].tolist() == ["PA", "LATERAL", "AP", "OTHER"]
        np.testing.assert_array_equal(
            m["Cardiomegaly"].to_numpy(), np.array([1, unc, 0, 0], np.float32)
        )
    m = read(table, opts()).manifest

    def positives(i: int) -> list[str]:
        return [f for f in FINDINGS if m.loc[i, f] == 1]

    # a: blank labels -> every finding 0 except the explicit column
    assert positives(0) == ["Cardiomegaly"] and m.loc[0, list(FINDINGS)].sum() == 1
    assert positives(1) == ["Mass", "Pleural_Thickening"]
    assert m.loc[1, "Effusion"] == 0
    assert positives(2) == [] and not m.loc[2, list(FINDINGS)].isna().any()
    assert positives(3) == ["Effusion", "Edema", "Hernia"]


def test_finding_columns_without_labels_blank_is_nan(tmp_path):
    table = tmp_path / "list.csv"
    table.write_text("path,patient,study,view,Nodule\na.png,p,s,PA,\nb.png,p,s,L,0\n")
    m = read(table, opts()).manifest
    assert np.isnan(m.loc[0, "Nodule"]) and m.loc[1, "Nodule"] == 0
    assert m.drop(columns="Nodule")[[f for f in FINDINGS if f != "Nodule"]].isna().all().all()


def test_bad_rows(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("L", (3, 2)).save(root / "ok.png")
    (root / "bad.png").write_bytes(b"\x89PNG but not really")
    table = tmp_path / "list.csv"
    table.write_text(
        "path,patient,study,view,Effusion,labels\n"
        "ok.png,p,s,PA,1,\n"
        "ok2.png,p,s,PA,yes,\n"  # 3: out of domain value
        "ok3.png,p,s,PA,,Effusion|Covid\n"  # 4: unknown label name
        "./ok.png,p,s,LL,,\n"  # 5: same image as line 2
        ",p,s,PA,,\n"  # 6: blank path
        "x.png,,s,PA,,\n"  # 7: blank patient
        "../outside.png,p,s,PA,,\n"  # 8: climbs out of the root
        f"{root.absolute()}/bad.png,p,s,PA,,\n"  # 9: absolute, inside the root: fine
        "/etc/passwd,p,s,PA,,\n"  # 10: absolute, outside
        "gone.png,p,s,PA,,\n"  # 11: missing file
    )
    result = read(table, opts(images=root, verify_files=True))
    check_invariant(result)
    got = [(r.path, r.reason) for r in result.rejected]
    assert got == [
        ("list.csv:3", "label_out_of_domain"),
        ("list.csv:4", "label_out_of_domain"),
        ("list.csv:5", "duplicate_image_id"),
        ("list.csv:6", "missing_value"),
        ("list.csv:7", "missing_value"),
        ("list.csv:8", "path_outside_root"),
        ("list.csv:10", "path_outside_root"),
        ("bad.png", "unreadable_image"),
        ("gone.png", "missing_file"),
    ]
    details = {r.path: r.detail for r in result.rejected}
    assert details["list.csv:3"] == "column 'Effusion' has value 'yes'"
    assert details["list.csv:4"] == "unknown label 'covid'"
    assert result.manifest["path"].tolist() == ["ok.png"]
    assert result.manifest.loc[0, ["width", "height", "bits"]].tolist() == [3, 2, 8]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", r"empty \(0 bytes\)"),
        (b"path,patient,study,view\n", "no data rows"),
        (b"path;patient;study;view\na;b;c;PA\n", "semicolon-separated"),
        (b"path,patient,study,view\n\xc3(bad.png,p,s,PA\n", "byte offset 24 \\(line 2\\)"),
        (b"path,patient,study\na,b,c\n", "lacks required column\\(s\\) 'view'"),
    ],
)
def test_bad_files_name_file_and_reason(tmp_path, content, match):
    table = tmp_path / "list.csv"
    table.write_bytes(content)
    with pytest.raises(SourceError, match=match) as err:
        read(table, opts())
    assert str(table) in str(err.value)


def test_phi_columns_are_not_read(tmp_path):
    table = tmp_path / "list.csv"
    pd.DataFrame(
        {
            "path": ["a.png"],
            "patient": ["MRN-12345"],
            "study": ["ACC-999"],
            "view": ["PA"],
            "PatientName": ["Doe^Jane"],
        }
    ).to_csv(table, index=False)
    m = read(table, opts()).manifest
    text = m.astype(str).to_csv()
    assert "MRN-12345" not in text and "ACC-999" not in text and "Doe" not in text
