"""Tests for the params of the synthetic dataset (pipelines/synthetic/params.py)."""

from __future__ import annotations

import pytest

from pipelines.config import parse_section
from pipelines.errors import ConfigError
from pipelines.labels import FINDINGS
from pipelines.synthetic.params import SynthesizeParams


def test_params_validation():
    with pytest.raises(ConfigError, match="unknown findings"):
        parse_section(SynthesizeParams, "synthesize", {"synthesize": {"prevalence": {"X": 0.1}}})
    with pytest.raises(ConfigError, match="default"):
        parse_section(
            SynthesizeParams, "synthesize", {"synthesize": {"prevalence": {"Hernia": 0.1}}}
        )
    with pytest.raises(ConfigError, match="lateral_missing"):
        parse_section(SynthesizeParams, "synthesize", {"synthesize": {"lateral_missing": 2}})
    p = parse_section(SynthesizeParams, "synthesize", {"synthesize": {"prevalence": 0.3}})
    assert p.prevalences() == dict.fromkeys(FINDINGS, 0.3)
