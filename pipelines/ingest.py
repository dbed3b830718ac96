"""ingest stage: raw inputs of any supported layout -> a PHI-safe manifest, one row per image.

Outputs (in ``ingest.out``): ``manifest.parquet`` (:data:`pipelines.schema.MANIFEST_COLUMNS`),
``rejected.csv`` (every input not accepted, with a reason) and ``summary.json`` (DVC metric).
Counts always add up: inputs = accepted + rejected.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from pipelines.config import StageParams, load_section
from pipelines.dicom.view import VIEWS
from pipelines.errors import ConfigError, SourceError
from pipelines.io import rejected_frame, write_metrics, write_parquet, write_rejected
from pipelines.keys import SYNTHETIC_MANUFACTURER, get_salt, salt_fingerprint
from pipelines.labels import FINDINGS, UncertainPolicy
from pipelines.schema import conform_manifest
from pipelines.sources import SOURCES, ReadOptions, get_reader
from pipelines.stage import run_stage

log = logging.getLogger(__name__)


class IngestParams(StageParams):
    """The ``ingest`` section of params.yaml."""

    source: str = "dicom"
    input: str
    images: str | None = None
    labels: str | None = None
    verify_files: bool = True
    uncertain: UncertainPolicy = "ignore"
    workers: int = 0
    # secret: CXR_SALT or .cxr/salt (real data); demo: the public salt of the synthetic dataset
    salt: Literal["secret", "demo"] = "secret"
    out: str = "data/manifest"


def ingest(
    source: str, input_path: str | Path, options: ReadOptions
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Read one input with the reader for ``source`` and summarise it.

    Args:
        source: one of :data:`pipelines.sources.SOURCES`.
        input_path: a folder (``dicom``) or a metadata file (the table layouts).
        options: reader options (salt, label policy, verification ...).

    Returns:
        (manifest, rejected, summary); summary keys: ``images``, ``patients``, ``studies``,
        ``views``, ``rejected``, ``inputs``, ``labels``, ``source``, ``seconds``.

    Raises:
        SourceError: unknown source, missing input, or an input that cannot be read as a whole.
    """
    start = time.perf_counter()
    input_path = Path(input_path)
    if not input_path.exists():
        raise SourceError(f"{input_path}: input does not exist")
    result = get_reader(source)(input_path, options)
    manifest = conform_manifest(result.manifest)
    manifest.attrs["data_root"] = result.data_root
    manifest.attrs["source"] = source
    rejected = rejected_frame(result.rejected)
    if result.n_inputs != len(manifest) + len(rejected):
        raise RuntimeError(
            f"{input_path}: reader '{source}' lost inputs: {result.n_inputs} seen, "
            f"{len(manifest)} accepted + {len(rejected)} rejected"
        )
    summary = summarize_manifest(manifest, rejected)
    summary |= {"source": source, "inputs": result.n_inputs}
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return manifest, rejected, summary


def summarize_manifest(manifest: pd.DataFrame, rejected: pd.DataFrame) -> dict[str, Any]:
    """Counts of a manifest: images, patients, studies, views, findings, rejected by reason."""
    views = manifest["view"].value_counts()
    labels = manifest[list(FINDINGS)]
    return {
        "images": len(manifest),
        "patients": int(manifest["patient_key"].nunique()),
        "studies": int(manifest["study_key"].nunique()),
        "views": {v: int(views.get(v, 0)) for v in VIEWS},
        "rejected": {str(k): int(n) for k, n in rejected["reason"].value_counts().items()},
        "labels": {
            f: {
                "positive": int((labels[f] == 1).sum()),
                "negative": int((labels[f] == 0).sum()),
                "missing": int(labels[f].isna().sum()),
            }
            for f in FINDINGS
        },
    }


def check_synthetic(manifest: pd.DataFrame, source: str) -> None:
    """Refuse the public demo salt for anything but the embedded synthetic dataset.

    Every accepted file must be a DICOM written by the synthesize stage (its Manufacturer is
    :data:`pipelines.keys.SYNTHETIC_MANUFACTURER`): with real identities the public salt would
    make the keys reversible.

    Raises:
        ConfigError: another source, or a file of another manufacturer.
    """
    import pydicom

    if source != "dicom":
        raise ConfigError(f"ingest.salt: demo is for the embedded synthetic dataset only, not "
                          f"for source '{source}'; set ingest.salt: secret")  # fmt: skip
    root = Path(manifest.attrs.get("data_root", "."))
    for rel in manifest["path"].astype(str):
        ds = pydicom.dcmread(root / rel, stop_before_pixels=True, specific_tags=["Manufacturer"])
        if str(ds.get("Manufacturer", "")) != SYNTHETIC_MANUFACTURER:
            raise ConfigError(
                f"{root / rel}: not a file of the embedded synthetic dataset; ingest.salt: demo "
                "is for that dataset only (a public salt would make real keys reversible): set "
                "ingest.salt: secret"
            )


def run_ingest(params: IngestParams) -> dict[str, Any]:
    """Run ingest with stage params and write the three outputs into ``params.out``."""
    if params.source not in SOURCES:
        raise SourceError(f"ingest.source '{params.source}' is not one of {', '.join(SOURCES)}")
    options = ReadOptions(
        images=Path(params.images) if params.images else None,
        labels=Path(params.labels) if params.labels else None,
        verify_files=params.verify_files,
        uncertain=params.uncertain,
        workers=params.workers,
        salt=get_salt(params.salt),
    )
    manifest, rejected, summary = ingest(params.source, params.input, options)
    if params.salt == "demo":
        check_synthetic(manifest, params.source)
    summary["salt"] = {"mode": params.salt, "fingerprint": salt_fingerprint(options.salt)}
    out = Path(params.out)
    write_parquet(manifest, out / "manifest.parquet")
    write_rejected(rejected, out / "rejected.csv")
    write_metrics(out / "summary.json", summary)
    log.info(
        "ingest %s: %d images accepted, %d rejected (%s)",
        params.source,
        summary["images"],
        len(rejected),
        ", ".join(f"{k}={v}" for k, v in summary["rejected"].items()) or "none",
    )
    return summary


def main() -> None:
    """DVC entry point: ``python -m pipelines.ingest`` reads the ``ingest`` section."""
    run_stage(lambda: run_ingest(load_section(IngestParams, "ingest")))


if __name__ == "__main__":
    main()
