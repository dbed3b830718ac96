"""params.yaml sections: validated, aliases by file, and no key DVC's run cache cannot see."""

from __future__ import annotations

import pytest

from pipelines.config import parse_section
from pipelines.errors import ConfigError
from pipelines.preprocess import PreprocessParams
from pipelines.synthetic import SynthesizeParams
from pipelines.train import TrainParams


@pytest.mark.parametrize(
    ("cls", "section"),
    [(SynthesizeParams, "synthesize"), (PreprocessParams, "preprocess"), (TrainParams, "train")],
)
def test_image_size_is_read_and_a_size_key_is_refused_with_the_reason(cls, section):
    parsed = parse_section(cls, section, {section: {"image_size": 96}})
    assert parsed.size == 96 and cls(size=96).size == 96  # Python may still say size=
    with pytest.raises(ConfigError) as exc:
        parse_section(cls, section, {section: {"size": 96}}, "params.yaml")
    message = str(exc.value)
    assert message.startswith(f"params.yaml: {section}.size: a param may not be named 'size'")
    assert "treeverse/dvc#10296" in message and f"use {section}.image_size" in message


def test_nfiles_is_refused_and_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"preprocess\.nfiles: a param may not be named"):
        parse_section(PreprocessParams, "preprocess", {"preprocess": {"nfiles": 3}})
    with pytest.raises(ConfigError, match=r"preprocess\.image_sizes: Extra inputs"):
        parse_section(PreprocessParams, "preprocess", {"preprocess": {"image_sizes": 3}})
