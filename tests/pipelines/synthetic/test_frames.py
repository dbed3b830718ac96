"""Tests for the view frames of the synthetic chest (pipelines/synthetic/frames.py)."""

from __future__ import annotations

import dataclasses

import numpy as np

from pipelines.synthetic.frames import PAFrame


def test_side_of_picks_the_patients_half_of_a_pa_image():
    a = np.array([[-0.5, 0.5]])
    fields = {f.name: None for f in dataclasses.fields(PAFrame)} | {"a": a, "right": a < 0}
    fr = PAFrame(**fields)
    assert fr.side_of(-1).tolist() == [[True, False]]  # patient right: the image left
    assert fr.side_of(1).tolist() == [[False, True]]
    assert fr.pleural is None
