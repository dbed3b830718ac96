"""A simulated predictions table (the evaluate stage's output) for the report's tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.labels import FINDINGS

LATERAL_SIGNAL = ("Mass", "Consolidation")  # simulated: visible on the lateral view only
PHI = ("DOE^JOHN", "MRN-998877", "19450317", "ACC-123456", "St. Elsewhere Hospital")
PARAMS = {"bootstrap_resamples": 200, "seed": 1}


def fake_predictions(
    n_val: int = 120, n_test: int = 240, seed: int = 0, one_class: str | None = "Hernia"
) -> pd.DataFrame:
    """Dual and frontal-only predictions; lateral-only findings gain from the lateral view."""
    rng = np.random.default_rng(seed)
    frames = []
    for split, n in (("val", n_val), ("test", n_test)):
        patient = rng.integers(0, n // 2, n)
        has_lateral = rng.random(n) < 0.8
        y = (rng.random((n, len(FINDINGS))) < 0.25).astype(float)
        y[rng.random(y.shape) < 0.05] = np.nan
        if one_class:
            y[:, FINDINGS.index(one_class)] = 0.0
        yy = np.nan_to_num(y)
        lateral = np.array([f in LATERAL_SIGNAL for f in FINDINGS], dtype=float)
        noise = rng.normal(size=y.shape)
        frontal_logit = noise + 1.2 * yy * (1 - lateral) - 1.5
        dual_logit = frontal_logit + 1.8 * yy * lateral * has_lateral[:, None]
        for mode, logit in (("dual", dual_logit), ("frontal_only", frontal_logit)):
            df = pd.DataFrame(
                {
                    "split": split,
                    "study_key": [f"{split}-study-{i:04d}" for i in range(n)],
                    "patient_key": [f"{split}-patient-{k:04d}" for k in patient],
                    "has_lateral": has_lateral,
                    "mode": mode,
                }
            )
            for f, name in enumerate(FINDINGS):
                df[f"y_{name}"] = y[:, f]
            for f, name in enumerate(FINDINGS):
                df[f"p_{name}"] = 1 / (1 + np.exp(-logit[:, f]))
            frames.append(df)
    return pd.concat(frames, ignore_index=True)
