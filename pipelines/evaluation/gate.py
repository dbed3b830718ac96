"""Measuring the out-of-distribution gate (:mod:`pipelines.ood`) on real images it must refuse.

The reference set is real, not drawn by this project, and ships inside packages the pipeline
already installs, so every run measures the same files offline:

- pydicom's bundled test images: CT, MR, ultrasound and nuclear-medicine acquisitions of
  several encodings (uncompressed, JPEG 2000, big endian);
- photographs and graphics from scikit-learn (``china.jpg``, ``flower.jpg``) and matplotlib's
  sample data (Grace Hopper's portrait, a photograph of a box, a logo).

Each image is decoded by the pipeline's own decoder (pixels only: the DICOM header's modality
is ignored here, as a PNG export of a CT slice has none) and scored as a study whose frontal and
lateral views are that image. :func:`gate_metrics` reports, beside the gate's AUROC against the
in-distribution test studies and its refusal rates, the AUROC of two output-based scores (the
multi-label energy and the max logit), which is the measurement behind the choice of features.
No chest radiograph with a licence that allows it is bundled anywhere, so non-chest radiographs
are not in the set.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from pipelines.errors import DecodeError
from pipelines.evaluation.calibration import logit
from pipelines.imaging import prepare_image
from pipelines.ood import METHOD, OodGate, refusals

#: (kind, package, path inside the package's data) of every reference image.
REFERENCE: tuple[tuple[str, str, str], ...] = (
    ("CT", "pydicom.data", "test_files/CT_small.dcm"),
    ("CT", "pydicom.data", "test_files/693_J2KI.dcm"),
    ("CT", "pydicom.data", "test_files/J2K_pixelrep_mismatch.dcm"),
    ("MR", "pydicom.data", "test_files/MR_small.dcm"),
    ("MR", "pydicom.data", "test_files/examples_overlay.dcm"),
    ("US", "pydicom.data", "test_files/ExplVR_BigEnd.dcm"),
    ("US", "pydicom.data", "test_files/examples_jpeg2k.dcm"),
    ("US", "pydicom.data", "test_files/examples_rgb_color.dcm"),
    ("NM", "pydicom.data", "test_files/JPEG2000.dcm"),
    ("photograph", "sklearn.datasets", "images/china.jpg"),
    ("photograph", "sklearn.datasets", "images/flower.jpg"),
    ("photograph", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("photograph", "matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png"),
    ("graphic", "matplotlib", "mpl-data/sample_data/logo2.png"),
)


@dataclass(frozen=True)
class ReferenceImage:
    """One decoded reference image: its kind, its file name, the uint8 (S, S) pixels."""

    kind: str
    name: str
    pixels: np.ndarray


def reference_path(package: str, inner: str) -> Path | None:
    """The file of a reference image in its installed package (None when absent)."""
    try:
        path = Path(str(resources.files(package).joinpath(inner)))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


def reference_images(size: int) -> tuple[list[ReferenceImage], dict[str, str]]:
    """The reference set decoded at ``size``, and per file left out, why (absent, undecodable)."""
    images, skipped = [], {}
    for kind, package, inner in REFERENCE:
        name = Path(inner).name
        path = reference_path(package, inner)
        if path is None:
            skipped[name] = f"not installed ({package})"
            continue
        try:
            images.append(ReferenceImage(kind, name, prepare_image(path, size)))
        except DecodeError as exc:
            skipped[name] = f"not decodable ({exc.reason})"
    return images, skipped


def gate_score(
    distances: np.ndarray, has_lateral: np.ndarray, thresholds: dict[str, float]
) -> np.ndarray:
    """One number per study for the AUROC: its larger distance over threshold ratio."""
    d = np.asarray(distances, dtype=np.float64)
    score = d[:, 0] / thresholds["frontal"]
    if "lateral" in thresholds:
        score = np.maximum(score, np.where(has_lateral, d[:, 1] / thresholds["lateral"], 0))
    return score


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float | None:
    if not len(inside) or not len(outside):
        return None
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return round(float(roc_auc_score(y, np.r_[inside, outside])), 4)


def _output_scores(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Out-of-distribution-ness from the outputs: negative energy sum and negative max logit."""
    z = logit(probs)
    return {"energy": -np.logaddexp(0, z).sum(1), "max_logit": -z.max(1)}


def gate_metrics(
    gate: OodGate,
    test: dict[str, np.ndarray],
    reference: dict[str, Any],
) -> dict[str, Any]:
    """The gate measured: refusal rates in and out of distribution, AUROCs, per kind.

    Args:
        gate: the fitted gate.
        test: the test studies' ``distances`` (N, 2), ``has_lateral`` (N,) and ``probs`` (N, F).
        reference: the reference images' ``distances`` (M, 2), ``probs`` (M, F) (scored as
            frontal + lateral pairs), ``frontal_distances`` (M,) (scored alone), ``kinds``,
            ``names`` and ``skipped``.
    """
    thresholds = gate.thresholds()
    test_refused = _refused(test, thresholds)
    ref_pair = _refused(reference, thresholds, as_pairs=True)
    ref_alone = reference["frontal_distances"] > thresholds["frontal"]
    kinds = np.asarray(reference["kinds"])
    ones = np.ones(len(kinds), bool)
    test_score = gate_score(test["distances"], test["has_lateral"], thresholds)
    ref_score = gate_score(reference["distances"], ones, thresholds)
    inside, outside = _output_scores(test["probs"]), _output_scores(reference["probs"])
    return {
        "method": METHOD,
        "fit_refusal": gate.fit_refusal,
        "thresholds": {v: round(t, 3) for v, t in thresholds.items()},
        "training_studies": {v: g.n_train for v, g in gate.views.items()},
        "test_studies": len(test_refused),
        "test_refused": int(test_refused.sum()),
        "test_refusal_rate": round(float(test_refused.mean()), 4) if len(test_refused) else None,
        "reference_images": len(kinds),
        "reference_refused": int(ref_pair.sum()),
        "reference_refused_frontal_alone": int(ref_alone.sum()),
        "auroc": {
            METHOD: _auroc(test_score, ref_score),
            **{k: _auroc(inside[k], outside[k]) for k in inside},
        },
        "by_kind": {
            str(k): {
                "images": int((kinds == k).sum()),
                "refused": int(ref_pair[kinds == k].sum()),
            }
            for k in sorted(set(kinds))
        },
        "reference": [
            {"kind": str(k), "name": n, "ratio": round(float(s), 2), "refused": bool(r)}
            for k, n, s, r in zip(kinds, reference["names"], ref_score, ref_pair, strict=True)
        ],
        "not_in_reference": dict(reference.get("skipped") or {}),
    }


def _refused(
    part: dict[str, Any], thresholds: dict[str, float], as_pairs: bool = False
) -> np.ndarray:
    """Which studies :func:`pipelines.ood.refusals` refuses (``as_pairs``: every lateral read)."""
    has = np.ones(len(part["distances"]), bool) if as_pairs else part["has_lateral"]
    return np.array([r is not None for r in refusals(part["distances"], has, thresholds)], bool)
