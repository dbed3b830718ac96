"""ingest stage: raw inputs of any supported layout -> one PHI-safe manifest, one row per image.

Inputs: one (``ingest.source`` / ``input`` / ``images`` / ``labels``) or several
(``ingest.inputs``: a list of ``{name, source, input, images, labels, split}`` plus optional
per-input ``verify_files`` / ``uncertain`` / ``blank``). Each input is read by the reader of its
``source`` layout (:mod:`pipelines.sources`); the manifest's ``source`` column holds the input's
``name`` (default: its layout), which the pair stage's ``holdout_source`` and the report's
per-source table use. Several public datasets then train one model: the label space is shared,
and a finding a source does not annotate is NaN for its rows.

- **Keys stay unique across inputs**: with several inputs, every key is keyed again with its
  input's name (an HMAC of name and key), so patient ``1`` of two CSV folders are two patients.
  A single input keeps its reader's keys.
- **Official splits**: an input with ``split: test`` (e.g. CheXpert's radiologist-labelled
  ``valid.csv`` next to ``train.csv``) marks its rows in the ``official_split`` column; the pair
  stage pins their patients to that split.
- **Where the images are**: per input, in the manifest's attrs
  (:class:`pipelines.schema.ImageRoots`), with what each source is (its reader, and whether it
  is the embedded synthetic dataset, which the model card and ``cxr predict`` say).

Outputs (in ``ingest.out``): ``manifest.parquet`` (:data:`pipelines.schema.MANIFEST_COLUMNS`),
``rejected.csv`` (every input not accepted, with a reason) and ``summary.json`` (DVC metric:
totals, then ``sources`` with the same counts per input). Counts always add up: inputs =
accepted + rejected, per input and in all.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, model_validator

from pipelines.config import StageParams, load_section
from pipelines.dicom.view import VIEWS
from pipelines.errors import ConfigError, SourceError
from pipelines.io import rejected_frame, write_metrics, write_parquet, write_rejected
from pipelines.keys import SYNTHETIC_MANUFACTURER, get_salt, make_keys, salt_fingerprint
from pipelines.labels import FINDINGS, BlankPolicy, UncertainPolicy
from pipelines.limits import MAX_CSV_LINE_BYTES, MAX_IMAGE_PIXELS
from pipelines.schema import ROOTS_ATTR, SOURCES_ATTR, conform_manifest
from pipelines.sources import ReadOptions, get_reader
from pipelines.stage import run_stage

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KEY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("patient_key", "patient"),
    ("study_key", "study"),
    ("image_id", "image"),
)


class InputSpec(StageParams):
    """One input of ``ingest.inputs``; unset options take the section's."""

    name: str | None = None  # the manifest's `source` value; default: `source`
    source: str = "dicom"
    input: str
    images: str | None = None
    labels: str | None = None
    split: Literal["train", "val", "test"] | None = None  # an official split: all rows go there
    verify_files: bool | None = None
    uncertain: UncertainPolicy | None = None
    blank: BlankPolicy | None = None

    @property
    def label(self) -> str:
        """The input's name (its layout when unnamed)."""
        return self.name or self.source


class IngestParams(StageParams):
    """The ``ingest`` section of params.yaml: one input (``source``, ``input``...) or ``inputs``."""

    source: str = "dicom"
    input: str | None = None
    images: str | None = None
    labels: str | None = None
    inputs: list[InputSpec] | None = None
    verify_files: bool = True
    uncertain: UncertainPolicy = "ignore"
    # blank CheXpert / MIMIC label: zeros (negative) | nan | nan_unless_no_finding
    blank: BlankPolicy = "zeros"
    workers: int = 0
    # rows x columns over which an image is rejected (too_large), from its header
    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, ge=1)
    # the longest line (bytes) of a metadata CSV; longer: the CSV is refused, unread
    max_csv_line_bytes: int = Field(MAX_CSV_LINE_BYTES, ge=1024)
    # secret: CXR_SALT or .cxr/salt (real data); demo: the public salt of the synthetic dataset
    salt: Literal["secret", "demo"] = "secret"
    out: str = "data/manifest"

    @model_validator(mode="after")
    def _one_form(self) -> IngestParams:
        if (self.input is None) == (self.inputs is None):
            raise ValueError(
                "give either one input (source, input, images, labels) or a list `inputs` of "
                "{name, source, input, ...}, not both or neither"
            )
        labels = [spec.label for spec in self.specs()]
        bad = [n for n in labels if not NAME_PATTERN.match(n)]
        if bad or len(set(labels)) != len(labels) or not labels:
            raise ValueError(
                f"input names must be distinct, non-empty and made of letters, digits, '_', '.' "
                f"or '-' (got {labels})"
            )
        return self

    def specs(self) -> list[InputSpec]:
        """The inputs as a list (one for the single-input form)."""
        if self.inputs is not None:
            return list(self.inputs)
        assert self.input is not None
        one = {"source": self.source, "input": self.input}
        return [InputSpec(**one, images=self.images, labels=self.labels)]

    def options(self, spec: InputSpec) -> ReadOptions:
        """The reader options of one input (its own where set, else the section's)."""
        pick = lambda own, shared: shared if own is None else own  # noqa: E731
        return ReadOptions(
            images=Path(spec.images) if spec.images else None,
            labels=Path(spec.labels) if spec.labels else None,
            verify_files=pick(spec.verify_files, self.verify_files),
            uncertain=pick(spec.uncertain, self.uncertain),
            blank=pick(spec.blank, self.blank),
            workers=self.workers,
            salt=get_salt(self.salt),
            max_image_pixels=self.max_image_pixels,
            max_csv_line_bytes=self.max_csv_line_bytes,
        )


def ingest(
    source: str, input_path: str | Path, options: ReadOptions, name: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Read one input with the reader for ``source`` and summarise it.

    Args:
        source: one of :data:`pipelines.sources.SOURCES`.
        input_path: a folder (``dicom``) or a metadata file (the table layouts).
        options: reader options (salt, label policy, verification ...).
        name: the rows' ``source`` value (default: ``source``).

    Returns:
        (manifest, rejected, summary); summary keys: ``images``, ``patients``, ``studies``,
        ``views``, ``rejected``, ``inputs``, ``labels``, ``source``, ``reader``, ``seconds``.

    Raises:
        SourceError: unknown source, missing input, or an input that cannot be read as a whole.
    """
    start = time.perf_counter()
    name = name or source
    input_path = Path(input_path)
    if not input_path.exists():
        raise SourceError(f"{input_path}: input does not exist")
    result = get_reader(source)(input_path, options)
    manifest = conform_manifest(result.manifest.assign(source=name))
    manifest.attrs = {ROOTS_ATTR: {name: result.data_root}, "data_root": result.data_root}
    rejected = rejected_frame(result.rejected).assign(source=name)
    if result.n_inputs != len(manifest) + len(rejected):
        raise RuntimeError(
            f"{input_path}: reader '{source}' lost inputs: {result.n_inputs} seen, "
            f"{len(manifest)} accepted + {len(rejected)} rejected"
        )
    summary = summarize_manifest(manifest, rejected)
    summary |= {"source": source, "inputs": result.n_inputs, "reader": dict(result.counts)}
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


def first_foreign_file(manifest: pd.DataFrame, root: Path) -> Path | None:
    """The first file not written by the synthesize stage (None: every file is synthetic).

    A file is synthetic when it is a DICOM whose Manufacturer is
    :data:`pipelines.keys.SYNTHETIC_MANUFACTURER`.
    """
    import pydicom

    for rel in manifest["path"].astype(str):
        try:
            ds = pydicom.dcmread(
                root / rel, stop_before_pixels=True, specific_tags=["Manufacturer"]
            )
        except Exception:  # not a DICOM file: not the synthetic dataset
            return root / rel
        if str(ds.get("Manufacturer", "")) != SYNTHETIC_MANUFACTURER:
            return root / rel
    return None


def is_synthetic(manifest: pd.DataFrame, reader: str, root: Path) -> bool:
    """Whether an input is the embedded synthetic dataset (DICOM files it wrote, all of them)."""
    return reader == "dicom" and len(manifest) > 0 and first_foreign_file(manifest, root) is None


def check_demo_salt(spec: InputSpec, manifest: pd.DataFrame, root: Path) -> None:
    """Refuse the public demo salt for anything but the embedded synthetic dataset.

    With real identities the public salt would make the keys reversible.

    Raises:
        ConfigError: a non-DICOM input, or a file of another manufacturer.
    """
    if spec.source != "dicom":
        raise ConfigError(f"ingest.salt: demo is for the embedded synthetic dataset only, not "
                          f"for source '{spec.source}'; set ingest.salt: secret")  # fmt: skip
    foreign = first_foreign_file(manifest, root)
    if foreign is not None:
        raise ConfigError(
            f"{foreign}: not a file of the embedded synthetic dataset; ingest.salt: demo is for "
            "that dataset only (a public salt would make real keys reversible): set "
            "ingest.salt: secret"
        )


def _rekey(manifest: pd.DataFrame, name: str, salt: bytes) -> pd.DataFrame:
    """Keys keyed again with the input's name, so that two inputs' keys never meet."""
    out = manifest.copy()
    for column, kind in KEY_COLUMNS:
        out[column] = pd.array(make_keys(kind, name + "\0" + out[column].astype(str), salt))
    return out


def _read_input(
    params: IngestParams, spec: InputSpec, several: bool
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """One input: its manifest rows, rejections, summary and what the source is."""
    options = params.options(spec)
    manifest, rejected, summary = ingest(spec.source, spec.input, options, spec.label)
    root = Path(manifest.attrs["data_root"])
    if params.salt == "demo":
        check_demo_salt(spec, manifest, root)
    if several:
        manifest = _rekey(manifest, spec.label, options.salt)
    if spec.split is not None:
        manifest["official_split"] = pd.array([spec.split] * len(manifest), dtype="string")
    summary["split"] = spec.split
    about = {"reader": spec.source, "synthetic": is_synthetic(manifest, spec.source, root)}
    return manifest, rejected, summary, about | {"root": str(root)}


def ingest_inputs(params: IngestParams) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Read every input into one manifest (see the module docstring).

    Returns:
        (manifest, rejected, summary): totals at the top, ``sources`` per input.

    Raises:
        SourceError, ConfigError: an input that cannot be read, or the demo salt on real data.
    """
    specs = params.specs()
    manifests, rejections, per_source, about = [], [], {}, {}
    for spec in specs:
        manifest, rejected, summary, info = _read_input(params, spec, len(specs) > 1)
        manifests.append(manifest)
        rejections.append(rejected)
        per_source[spec.label] = summary
        about[spec.label] = info
    manifest = conform_manifest(pd.concat(manifests, ignore_index=True))
    rejected = pd.concat(rejections, ignore_index=True)
    manifest.attrs = {
        ROOTS_ATTR: {n: a.pop("root") for n, a in about.items()},
        SOURCES_ATTR: about,
    }
    if len(specs) == 1:  # one input: its folder is also the table's data root
        manifest.attrs["data_root"] = next(iter(manifest.attrs[ROOTS_ATTR].values()))
    summary = summarize_manifest(manifest, rejected)
    summary["inputs"] = sum(s["inputs"] for s in per_source.values())
    summary["sources"] = {
        n: {k: v for k, v in s.items() if k != "labels"} for n, s in per_source.items()
    }
    return manifest, rejected, summary


def run_ingest(params: IngestParams) -> dict[str, Any]:
    """Run ingest with stage params and write the three outputs into ``params.out``."""
    start = time.perf_counter()
    manifest, rejected, summary = ingest_inputs(params)
    duplicated = manifest["image_id"].duplicated()
    if duplicated.any():  # a reader's duplicates are rejected; across inputs keys never meet
        raise RuntimeError(f"ingest: {int(duplicated.sum())} image ids repeat across inputs")
    summary["salt"] = {"mode": params.salt, "fingerprint": salt_fingerprint(get_salt(params.salt))}
    summary["seconds"] = round(time.perf_counter() - start, 3)
    out = Path(params.out)
    write_parquet(manifest, out / "manifest.parquet")
    write_rejected(rejected, out / "rejected.csv")
    write_metrics(out / "summary.json", summary)
    for name, s in summary["sources"].items():
        log.info(
            "ingest %s (%s): %d images accepted, %d rejected (%s)",
            name,
            s["source"],
            s["images"],
            sum(s["rejected"].values()),
            ", ".join(f"{k}={v}" for k, v in s["rejected"].items()) or "none",
        )
    return summary


def main() -> None:
    """DVC entry point: ``python -m pipelines.ingest`` reads the ``ingest`` section."""
    run_stage(lambda: run_ingest(load_section(IngestParams, "ingest")))


if __name__ == "__main__":
    main()
