"""End to end with two sources: external validation and findings a source never annotates.

The DAG of dvc.yaml at toy scale on two inputs: the embedded synthetic DICOM dataset and a CSV
image folder (PNG files) that annotates only the 7 findings CheXpert and MIMIC annotate. The
synthetic source is held out (``pair.holdout_source``): the model trains on the folder alone, so
the 7 findings the folder never labels are not trained. What a team relies on:

- the report breaks AUROC down per source (the held-out source's test column);
- the model card lists each finding's status and the label coverage;
- ``cxr predict`` marks the untrained findings in table, JSON and CSV, with no probability.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.imaging import prepare_image
from pipelines.ingest import ingest
from pipelines.labels import FINDINGS
from pipelines.predict import predict_command
from pipelines.sources import ReadOptions
from pipelines.synthetic import SynthesizeParams, synthesize
from tests.conftest import git, make_pipeline_repo, repro

pytestmark = pytest.mark.slow

#: What the folder annotates (CheXpert's and MIMIC's share of the 14); the rest stays blank.
ANNOTATED = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Pneumonia",
             "Pneumothorax")  # fmt: skip
BLANK = tuple(f for f in FINDINGS if f not in ANNOTATED)


def write_image_folder(folder: Path, scratch: Path, studies: int = 110) -> None:
    """A CSV image folder made from a second synthetic set: PNGs, ids, views, 7 label columns."""
    synthesize(SynthesizeParams(out=scratch, studies=studies, image_size=64, seed=23, workers=1))
    options = ReadOptions(labels=scratch / "labels.csv", salt=b"folder", workers=1)
    manifest, _, _ = ingest("dicom", scratch / "dicom", options)
    folder.mkdir(parents=True)
    rows = []
    for i, row in enumerate(manifest.itertuples()):
        pixels = prepare_image(scratch / "dicom" / row.path, 64)
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(folder / f"{i:04d}.png")
        view = {"PA": "PA", "AP": "AP", "LATERAL": "LL"}.get(row.view, "")
        labels = {f: "" if np.isnan(getattr(row, f)) else int(getattr(row, f)) for f in ANNOTATED}
        rows.append({"path": f"{i:04d}.png", "patient": row.patient_key, "study": row.study_key,
                     "view": view} | labels)  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "list.csv", index=False)


@pytest.fixture(scope="module")
def two_source_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("two-sources")
    synthetic = {"name": "synthetic", "source": "dicom", "input": "data/raw/synthetic/dicom",
                 "labels": "data/raw/synthetic/labels.csv"}  # fmt: skip
    folder = {"name": "site-b", "source": "csv", "input": "data/raw/site-b/list.csv"}
    overrides = {
        "ingest": {"inputs": [synthetic, folder], "salt": "secret"},
        "pair": {"holdout_source": "synthetic"},
        "train": {"epochs": 3, "min_positives": 3, "min_negatives": 3},
        # The toy model's scores on some findings are tied to 1e-10, so their AUROC is set by
        # float noise: export parity is tested on a model that learned (tests/test_e2e.py).
        "export": {"formats": ["onnx"], "tolerances": {"onnx": {"max_auroc_drop": 1.0}}},
    }
    repo = make_pipeline_repo(base / "repo", overrides=overrides)
    write_image_folder(repo / "data/raw/site-b", base / "scratch")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a second source")
    proc = repro(repo)
    (repo / "repro.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        pytest.fail(f"dvc repro failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return repo


def test_the_held_out_source_is_the_test_split_and_the_report_breaks_auroc_down(
    two_source_repo: Path,
) -> None:
    r = two_source_repo
    studies = pd.read_parquet(r / "data/studies/studies.parquet")
    by_split = {k: set(v) for k, v in studies.groupby("split")["source"]}
    assert by_split == {"test": {"synthetic"}, "train": {"site-b"}, "val": {"site-b"}}
    headline = json.loads((r / "metrics/evaluate.json").read_text())
    assert set(headline["by_source_macro_auroc"]) == {"test", "val"}
    assert set(headline["by_source_macro_auroc"]["test"]) == {"synthetic"}
    html = (r / "outputs/evaluation/report.html").read_text()
    assert "AUROC by source" in html and "test: synthetic" in html and "val: site-b" in html
    for finding in BLANK:  # never annotated in training: no metric
        assert headline["auroc"][finding] == "not trained"


def test_the_model_card_lists_status_and_label_coverage(two_source_repo: Path) -> None:
    card = json.loads((two_source_repo / "models/export/metadata.json").read_text())
    status = card["output"]["status"]
    for finding in BLANK:
        assert status[finding].startswith("not trained: too few labelled training studies (0 ")
    assert any(s == "trained" for s in status.values())
    train = card["training_data"]["splits"]["train"]
    for finding in BLANK:
        assert train["label_coverage"][finding] == {
            "positives": 0,
            "negatives": 0,
            "unannotated": train["studies"],
        }
    sources = card["training_data"]["sources"]
    assert sources["synthetic"]["synthetic"] is True and sources["site-b"]["synthetic"] is False
    assert sources["synthetic"]["studies"]["train"] == 0 < sources["synthetic"]["studies"]["test"]


def test_cxr_predict_marks_the_untrained_findings_in_every_format(two_source_repo: Path) -> None:
    r = two_source_repo
    study = next(s for s in sorted((r / "data/raw/synthetic/dicom").glob("*/*")) if s.is_dir())
    model = r / "models/export/model.onnx"
    as_json = json.loads(predict_command([str(study)], model=model, fmt="json"))
    assert "synthetic dataset" in as_json["notice"]
    findings = as_json["studies"][0]["findings"]
    for finding in BLANK:
        assert findings[finding]["status"] == "not trained"
        assert findings[finding]["probability"] is None and findings[finding]["positive"] is None
    trained = [f for f, v in findings.items() if v["status"] == "trained"]
    assert trained and all(0 <= findings[f]["probability"] <= 1 for f in trained)
    csv = pd.read_csv(io.StringIO(predict_command([str(study)], model=model, fmt="csv")))
    rows = csv.set_index("finding")
    assert rows.loc[list(BLANK), "probability"].isna().all()
    assert (rows.loc[list(BLANK), "status"] == "not trained").all()
    table = predict_command([str(study)], model=model, fmt="table")
    for finding in BLANK:
        assert f"{finding}: not trained, no decision" in table
