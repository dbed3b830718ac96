"""labels: the coding rules."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import ConfigError
from pipelines.labels import BLANK_POLICIES, blank_values


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
