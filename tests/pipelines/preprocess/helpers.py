"""Shared test data of the preprocess tests: a tiny studies table over real DICOM and PNG files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipelines.data import ShardDataset, read_index
from pipelines.labels import FINDINGS
from pipelines.preprocess import (
    PreprocessParams,
    preprocess_part,
)
from pipelines.schema import SPLITS, STUDY_COLUMNS
from tests.pipelines.test_imaging import phantom, write_dicom

SIZE = 32


def study(key: str, split: str, frontal: str, lateral: str = "", **labels) -> dict:
    row = {
        "study_key": key,
        "patient_key": f"p-{key}",
        "source": "dicom",
        "frontal_id": f"{key}-f",
        "frontal_path": frontal,
        "frontal_view": "PA",
        "frontal_bits": 0,
        "lateral_id": f"{key}-l" if lateral else "",
        "lateral_path": lateral,
        "lateral_bits": 0,
        "has_lateral": bool(lateral),
        "sex": "FM"[sum(map(ord, key)) % 2],  # the subgroups evaluate reads from the shards
        "age_band": f"{10 * (sum(map(ord, key)) % 9)}-{10 * (sum(map(ord, key)) % 9) + 9}",
        "split": split,
    }
    return row | {f: labels.get(f, np.nan) for f in FINDINGS}


def make_dataset(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """The ``dataset`` fixture's studies table and image root, under ``tmp_path / "raw"``."""
    root = tmp_path / "raw"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        px = np.roll(phantom(60 + 4 * i, 50, bits=12), i, axis=1)
        write_dicom(root / f"f{i}.dcm", px, "MONOCHROME2" if i % 2 else "MONOCHROME1")
        lat = (rng.random((40, 56)) * 255).astype(np.uint8)
        Image.fromarray(lat).save(root / f"l{i}.png")
    (root / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    rows = [
        study("s0", "train", "f0.dcm", "l0.png", Cardiomegaly=1.0, Effusion=0.0),
        study("s1", "train", "f1.dcm", "", Atelectasis=0.0),  # frontal-only
        study("s2", "train", "f2.dcm", "missing.png", Nodule=1.0),  # lateral fails
        study("s3", "val", "f3.dcm", "l3.png"),  # all NaN labels
        study("s4", "test", "f4.dcm", "l4.png", Hernia=1.0),
        study("s5", "train", "broken.dcm", "l5.png"),  # frontal fails: dropped
        study("s6", "val", "f5.dcm", "l5.png", Mass=0.0),
    ]
    df = pd.DataFrame(rows).loc[:, list(STUDY_COLUMNS)]
    df = df.astype({f: "float32" for f in FINDINGS})
    df.attrs["data_root"] = str(root)
    return df, root


def params(**kw) -> PreprocessParams:
    return PreprocessParams(**({"size": SIZE, "shard_size": 2, "workers": 1, "grid": 4} | kw))


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def assert_same_prepared(a: Path, b: Path) -> None:
    """Two prepared folders serve the same studies, labels and pixels in the same order."""
    assert read_index(a)["size"] == read_index(b)["size"]
    for split in SPLITS:
        da, db = ShardDataset(a, split), ShardDataset(b, split)
        cols = [c for c in da.meta.columns if not c.startswith("_")]
        pd.testing.assert_frame_equal(da.meta[cols], db.meta[cols])
        ba, bb = da.get_batch(range(len(da))), db.get_batch(range(len(db)))
        for key in ba:
            np.testing.assert_array_equal(ba[key].numpy(), bb[key].numpy(), err_msg=key)


def run_parts(studies, root, out, p, parts: int) -> None:
    for i in reversed(range(parts)):  # any order: parts are independent
        preprocess_part(studies, root, out, p, i, parts)
