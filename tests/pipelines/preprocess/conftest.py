"""The ``dataset`` fixture of the preprocess tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.pipelines.preprocess.helpers import make_dataset


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """7 studies over 3 splits: DICOM (M1 and M2) and PNG, a broken frontal, a broken lateral."""
    return make_dataset(tmp_path)
