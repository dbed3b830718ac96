"""Fixtures of the report's tests: a predictions table and one report rendered from it."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.evaluation.outputs import render_report
from tests.pipelines.evaluation.predictions import PARAMS, PHI, fake_predictions


@pytest.fixture(scope="package")
def predictions() -> pd.DataFrame:
    return fake_predictions()


@pytest.fixture(scope="package")
def rendered(predictions, tmp_path_factory):
    """``(report folder, render_report's result)`` from the predictions with PHI columns added."""
    out = tmp_path_factory.mktemp("report")
    planted = predictions.copy()
    planted["PatientName"] = PHI[0]  # columns a careless upstream might leave in
    planted["PatientID"] = PHI[1]
    planted["StudyDate"] = PHI[2]
    planted["AccessionNumber"] = PHI[3]
    planted["InstitutionName"] = PHI[4]
    planted.to_parquet(out / "predictions.parquet")
    result = render_report(
        out / "predictions.parquet",
        out / "report",
        {**PARAMS, "batch_size": 8},
        {"code": {"sources_sha256": "a" * 16}, "dvc": {"models/best.pt": "b" * 32}},
    )
    return out / "report", result
