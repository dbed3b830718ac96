"""Calibration: expected calibration error, its bootstrap replicates, reliability diagrams, and
the post-hoc calibration maps fitted on validation (temperature scaling, Platt scaling, isotonic
regression: scikit-learn's LogisticRegression on the logit and IsotonicRegression), which the
evaluation applies to test, the model card stores and ``cxr predict`` applies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.evaluation.bootstrap import Estimate, PatientBootstrap, percentile_interval
from pipelines.evaluation.metrics import annotated


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip((np.asarray(p) * n_bins).astype(np.int64), 0, n_bins - 1)


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE with equal-width bins on [0, 1]: sum_b (n_b / N) |observed_b - mean predicted_b|.

    Bins are [0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1] (1.0 falls in the last bin). NaN labels
    are left out; NaN if nothing is annotated.

    Raises:
        ValueError: ``n_bins`` < 1.
    """
    if n_bins < 1:
        raise ValueError(f"ece bins must be >= 1, got {n_bins}")
    y, p = annotated(y_true, y_prob)
    if y.size == 0:
        return float("nan")
    idx = _bin_index(p, n_bins)
    gap = np.bincount(idx, weights=y - p, minlength=n_bins)
    return float(np.abs(gap).sum() / y.size)


def bootstrap_ece(
    y_true: np.ndarray, y_prob: np.ndarray, boot: PatientBootstrap, n_bins: int = 10
) -> np.ndarray:
    """(B,) ECE replicates of one finding (weighted bin gaps as one matrix product)."""
    y = np.asarray(y_true, dtype=np.float64)
    keep = ~np.isnan(y)
    p = np.asarray(y_prob, dtype=np.float64)
    d = np.zeros((len(y), n_bins + 1))
    rows = np.flatnonzero(keep)
    d[rows, _bin_index(p[rows], n_bins)] = y[rows] - p[rows]
    d[rows, n_bins] = 1.0  # last column counts annotated studies
    d = boot.per_patient(d)

    def ece(c: np.ndarray) -> np.ndarray:
        sums = c @ d
        total, gaps = sums[:, -1], np.abs(sums[:, :-1]).sum(1)
        return np.divide(gaps, total, out=np.full_like(gaps, np.nan), where=total > 0)

    return boot.map(ece)


def reliability_curve(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability-diagram data: one row per equal-width bin (empty bins kept, count 0).

    Columns: ``bin_lower``, ``bin_upper``, ``count``, ``mean_predicted``, ``observed``
    (fraction positive; NaN for empty bins).
    """
    y, p = annotated(y_true, y_prob)
    idx = _bin_index(p, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / count
        observed = np.bincount(idx, weights=y, minlength=n_bins) / count
    edges = np.linspace(0, 1, n_bins + 1)
    return pd.DataFrame(
        {
            "bin_lower": edges[:-1],
            "bin_upper": edges[1:],
            "count": count,
            "mean_predicted": mean_p,
            "observed": observed,
        }
    )


# --------------------------------------------------------------------------------------------
# Post-hoc calibration maps: fitted on validation, applied to test, the card and cxr predict
# --------------------------------------------------------------------------------------------

#: The methods :func:`fit_calibration` can fit; ``auto`` chooses among them by cross-validation.
METHODS: tuple[str, ...] = ("none", "temperature", "platt", "isotonic")
_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the logit


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of probabilities clipped to [1e-6, 1 - 1e-6]."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(q) - np.log1p(-q)


@dataclass(frozen=True)
class CalibrationMap:
    """A monotone map from a finding's raw probability to a calibrated one.

    Attributes:
        method: ``none`` (identity), ``temperature`` (``sigmoid(a * logit(p))``, a = 1/T),
            ``platt`` (``sigmoid(a * logit(p) + b)``) or ``isotonic`` (piecewise linear through
            ``x`` -> ``y``, as scikit-learn's IsotonicRegression predicts).
        a, b: slope and intercept on the logit scale (temperature, platt).
        x, y: the isotonic breakpoints (increasing x).
    """

    method: str = "none"
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def apply(self, p: np.ndarray) -> np.ndarray:
        """The calibrated probabilities of raw ``p`` (any shape), float64."""
        p = np.asarray(p, dtype=np.float64)
        if self.method == "none":
            return p
        if self.method == "isotonic":
            return np.interp(p, self.x, self.y)
        return 0.5 * (1.0 + np.tanh(0.5 * (self.a * logit(p) + self.b)))  # sigmoid, no overflow

    def to_json(self) -> dict[str, Any]:
        """What the model card stores (and :meth:`from_json` reads back)."""
        if self.method == "isotonic":
            return {"method": self.method, "x": list(self.x), "y": list(self.y)}
        if self.method == "none":
            return {"method": "none"}
        return {"method": self.method, "a": self.a, "b": self.b}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CalibrationMap:
        """The map a card stores.

        Raises:
            ValueError: an unknown method or missing parameters.
        """
        method = data.get("method", "none")
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}")
        if method == "isotonic":
            x, y = tuple(map(float, data["x"])), tuple(map(float, data["y"]))
            if len(x) != len(y) or not x:
                raise ValueError("isotonic calibration needs equal, non-empty x and y")
            return cls(method, x=x, y=y)
        if method == "none":
            return cls()
        return cls(method, float(data["a"]), float(data.get("b", 0.0)))


def _fit_one(method: str, y: np.ndarray, p: np.ndarray) -> CalibrationMap:
    """Fit one method on annotated (y, p) of a finding (both classes present)."""
    if method == "none":
        return CalibrationMap()
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return CalibrationMap(
            "isotonic", x=tuple(iso.X_thresholds_.tolist()), y=tuple(iso.y_thresholds_.tolist())
        )
    from sklearn.linear_model import LogisticRegression

    # one feature: Newton steps converge in a few iterations, 4x faster than the lbfgs default
    fit = LogisticRegression(
        C=1e6, fit_intercept=method == "platt", solver="newton-cg", max_iter=1000
    )
    fit.fit(logit(p)[:, None], y.astype(int))
    return CalibrationMap(method, float(fit.coef_[0, 0]), float(fit.intercept_[0]))


def cross_validated_loss(
    method: str, y: np.ndarray, p: np.ndarray, groups: np.ndarray, folds: int = 5
) -> float:
    """Summed held-out log loss of ``method`` over patient-grouped folds (one finding,
    annotated rows; NaN when a fold's training part lacks a class)."""
    from sklearn.metrics import log_loss
    from sklearn.model_selection import GroupKFold

    total = 0.0
    splitter = GroupKFold(n_splits=min(folds, len(np.unique(groups))))
    for train, held in splitter.split(p, y, groups):
        if len(np.unique(y[train])) < 2:
            return float("nan")
        q = _fit_one(method, y[train], p[train]).apply(p[held])
        total += log_loss(y[held], q, normalize=False, labels=[0, 1])
    return total


@dataclass(frozen=True)
class Calibration:
    """The calibration of every finding of one scoring mode, and how its method was chosen.

    Attributes:
        method: the method used for every finding (``auto`` resolved).
        maps: per finding, its map (identity where validation lacks a class).
        cv_loss: per candidate method, the patient-grouped cross-validated log loss on
            validation summed over findings (filled when the method was chosen by ``auto``).
    """

    method: str
    maps: dict[str, CalibrationMap]
    cv_loss: dict[str, float]

    def apply(self, p: np.ndarray, findings: list[str]) -> np.ndarray:
        """Calibrated (N, F) probabilities of raw ``p`` (columns in ``findings`` order)."""
        p = np.asarray(p, dtype=np.float64)
        out = p.copy()
        for f, name in enumerate(findings):
            if name in self.maps:
                out[:, f] = self.maps[name].apply(p[:, f])
        return out

    def to_json(self) -> dict[str, Any]:
        """``{"method": ..., "maps": {finding: map}}`` for thresholds.json and the card."""
        return {"method": self.method, "maps": {f: m.to_json() for f, m in self.maps.items()}}


def fit_calibration(
    y: np.ndarray, p: np.ndarray, patients: np.ndarray, findings: list[str], method: str = "auto"
) -> Calibration:
    """Fit one calibration map per finding on validation labels and raw probabilities.

    ``auto`` picks the method with the lowest patient-grouped 5-fold cross-validated log loss
    summed over the findings every fold can be fitted on (``none`` included, so a model already
    calibrated stays as it is; ``none`` too when no finding has enough of both classes);
    one method for every finding, as a per-finding choice on a few dozen positives would mostly
    fit noise. A finding without both classes on validation keeps the identity.

    Args:
        y: (N, F) validation labels 1 / 0 / NaN.
        p: (N, F) raw validation probabilities.
        patients: (N,) patient keys (the folds never split a patient).
        findings: the F names.
        method: ``auto`` or one of :data:`METHODS`.

    Raises:
        ValueError: an unknown method.
    """
    if method != "auto" and method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose auto or {METHODS}")
    columns = []
    for f in range(len(findings)):
        keep = ~np.isnan(y[:, f])
        yf, pf = y[keep, f], np.asarray(p, dtype=np.float64)[keep, f]
        columns.append((yf, pf, np.asarray(patients)[keep]) if len(np.unique(yf)) == 2 else None)
    cv: dict[str, float] = {}
    if method == "auto":
        cv = _cv_losses(columns)
        method = min(cv, key=lambda m: cv[m]) if cv else "none"
    maps = {
        name: (_fit_one(method, c[0], c[1]) if c is not None else CalibrationMap())
        for name, c in zip(findings, columns, strict=True)
    }
    return Calibration(method, maps, cv)


def _cv_losses(columns: list[tuple[np.ndarray, ...] | None]) -> dict[str, float]:
    """Per method, the cross-validated log loss summed over the findings every method could be
    cross-validated on (a fold without both classes leaves a finding out); empty when none."""
    per = [{m: cross_validated_loss(m, *c) for m in METHODS} for c in columns if c is not None]
    usable = [d for d in per if all(np.isfinite(v) for v in d.values())]
    return {m: float(sum(d[m] for d in usable)) for m in METHODS} if usable else {}


def calibration_from_json(data: dict[str, Any] | None) -> Calibration | None:
    """A :class:`Calibration` from thresholds.json / the card (None stays None).

    Raises:
        ValueError: a malformed map.
    """
    if not data:
        return None
    maps = {f: CalibrationMap.from_json(m) for f, m in (data.get("maps") or {}).items()}
    return Calibration(str(data.get("method", "none")), maps, {})


def bias_corrected(
    value: float, samples: np.ndarray, level: float, floor: float | None = None
) -> Estimate:
    """The bootstrap bias-corrected estimate ``2 v - mean(v*)`` and its basic (reverse
    percentile) interval ``2 v - q_hi .. 2 v - q_lo``.

    ECE is biased upwards (bins of a few studies are never exactly right), and resampling adds
    as much again, so the plug-in value lies near the bottom of its replicates: a percentile
    interval can lie wholly above it, and a basic interval wholly below. Correcting the point
    by the same bias keeps it inside its interval. ``floor`` clips both (0 for an ECE).
    """
    reps = np.asarray(samples, dtype=np.float64)
    if value is None or not np.isfinite(value) or not np.isfinite(reps).any():
        return Estimate(
            None if value is None or not np.isfinite(value) else float(value), None, None
        )
    lo, hi = percentile_interval(reps[:, None], level)
    point, lower, upper = 2 * value - np.nanmean(reps), 2 * value - hi[0], 2 * value - lo[0]
    if floor is not None:
        point, lower, upper = (max(x, floor) for x in (point, lower, upper))
    return Estimate(float(point), float(lower), float(upper))


@dataclass(frozen=True)
class EceComparison:
    """ECE of the raw and of the calibrated probabilities, and the change: bootstrap
    bias-corrected, with basic CIs (:func:`bias_corrected`).

    Attributes:
        before, after: per finding, then ``macro`` (the mean over findings).
        change: after - before (negative: calibration helped), paired on the same resamples.
    """

    before: dict[str, Estimate]
    after: dict[str, Estimate]
    change: dict[str, Estimate]


def compare_ece(
    y: np.ndarray,
    raw: np.ndarray,
    calibrated: np.ndarray,
    boot: PatientBootstrap,
    findings: list[str],
    n_bins: int = 10,
    level: float = 0.95,
) -> EceComparison:
    """ECE before and after calibration per finding and macro, with paired bootstrap CIs.

    Args:
        y: (N, F) test labels; raw, calibrated: (N, F) probabilities of the same studies.
        boot: the test bootstrap (same resamples for both, so the change is paired).
        findings: the F names.
        n_bins: equal-width bins.
        level: CI coverage.
    """
    cols = range(len(findings))
    point = {
        k: np.array([expected_calibration_error(y[:, f], p[:, f], n_bins) for f in cols])
        for k, p in (("before", raw), ("after", calibrated))
    }
    reps = {
        k: np.stack([bootstrap_ece(y[:, f], p[:, f], boot, n_bins) for f in cols], 1)
        for k, p in (("before", raw), ("after", calibrated))
    }
    ok = np.isfinite(point["before"])
    out: dict[str, dict[str, Estimate]] = {"before": {}, "after": {}, "change": {}}
    with np.errstate(all="ignore"):
        macro_point = {k: float(np.mean(v[ok])) if ok.any() else np.nan for k, v in point.items()}
        macro_reps = {k: np.nanmean(v[:, ok], axis=1) for k, v in reps.items()}
    for f, name in [*enumerate(findings), (None, "macro")]:
        pv = {k: (macro_point[k] if f is None else point[k][f]) for k in point}
        rv = {k: (macro_reps[k] if f is None else reps[k][:, f]) for k in reps}
        for k in ("before", "after"):
            out[k][name] = bias_corrected(pv[k], rv[k], level, floor=0.0)
        out["change"][name] = bias_corrected(
            pv["after"] - pv["before"], rv["after"] - rv["before"], level
        )
    return EceComparison(out["before"], out["after"], out["change"])
