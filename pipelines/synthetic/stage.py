"""The ``synthesize`` DVC stage: plan the studies, render and write them, then ``labels.csv``.

It writes::

    <out>/dicom/<hex per patient>/<hex per study>/<hex>.dcm   one PA and (usually) one lateral
    <out>/labels.csv       study_uid + the 14 findings as a report would give them (1 / 0 / blank)
    <out>/truth.csv        study_uid + the findings drawn in the pixels (analyses only)
    <out>/regions.csv      per image and finding shown, where it was drawn (analyses only:
                           the saliency localisation of evaluate; :mod:`pipelines.regions`)

Folder and file names are random hex from the seeded generator: they carry no PHI and no id.
The DICOM headers do carry fake but realistic PHI (they are raw inputs for the ingest stage).
The output is built in a hidden ``.<out>.partial`` folder and renamed into place at the end.
Images are rendered in worker processes; the files do not depend on how many.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from pipelines.config import load_section
from pipelines.io import atomic_path, write_metrics
from pipelines.labels import FINDINGS
from pipelines.regions import REGIONS_FILE, region_row, write_regions
from pipelines.synthetic.dicom_writer import write_dicom
from pipelines.synthetic.gallery import save_gallery
from pipelines.synthetic.params import SynthesizeParams
from pipelines.synthetic.plan import plan_studies
from pipelines.synthetic.render import render_with_regions
from pipelines.synthetic.style import Style

METRICS_PATH = Path("metrics/synthesize.json")
GALLERY_PATH = Path("plots/synthesize/findings.png")


def _write_studies(
    root: str, size: int, style: Style, jobs: list[dict[str, Any]]
) -> list[tuple[int, int, dict[str, object]]]:
    """Render and write a chunk of studies (runs in a worker process).

    Returns:
        One ``(study index, image index, regions row)`` per finding shown on an image written,
        for :func:`_write_images` to put in the plan's order.
    """
    rows = []
    with threadpool_limits(limits=1):  # tiny BLAS calls: threads only add overhead
        for job in jobs:
            findings = frozenset(job["findings"])
            study_style = replace(style, scale=job["scale"]) if "scale" in job else style
            for k, image in enumerate(job["images"]):
                rng = np.random.default_rng(image["seed"])
                view = image["view"]
                pixels, masks = render_with_regions(
                    rng, size, view, findings, job["anatomy"], study_style
                )
                write_dicom(Path(root) / "dicom" / image["file"], pixels, **image["kw"])
                rows += [
                    (job["index"], k, region_row(image["file"], view, f, m))
                    for f, m in masks.items()
                ]
    return rows


OUR_FILES = frozenset({"dicom", "labels.csv", "truth.csv", REGIONS_FILE})


def _is_ours(path: Path) -> bool:
    return path.is_dir() and {p.name for p in path.iterdir()} <= OUR_FILES


def _write_images(
    partial: Path, size: int, style: Style, jobs: list[dict[str, Any]], workers: int
) -> list[dict[str, object]]:
    """Render and write every image under ``partial/dicom``, in ``workers`` processes.

    Returns:
        The regions rows of every image, in the plan's order (whatever the workers).
    """
    n_chunks = min(len(jobs), workers * 8)
    chunks = [jobs[k::n_chunks] for k in range(n_chunks)]
    if workers == 1 or len(chunks) == 1:
        parts = [_write_studies(str(partial), size, style, c) for c in chunks]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            n = len(chunks)
            parts = list(
                pool.map(_write_studies, [str(partial)] * n, [size] * n, [style] * n, chunks)
            )
    # label order within an image is the render's (FINDINGS order)
    tagged = sorted((row for part in parts for row in part), key=lambda r: (r[0], r[1]))
    return [row for _, _, row in tagged]


def _write_labels(path: Path, jobs: list[dict[str, Any]], truth: bool = False) -> None:
    """One row per study, its UID and per finding 1 / 0 / blank (not mentioned).

    ``labels.csv`` (what ingest reads) holds the report-style labels; ``truth.csv``
    (``truth=True``) the findings drawn in the pixels, for analyses only (never an input).
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["study_uid", *FINDINGS])
        for job in jobs:
            if truth:
                values = [int(f in job["findings"]) for f in FINDINGS]
            else:
                values = ["" if v != v else int(v) for v in (job["labels"][f] for f in FINDINGS)]
            writer.writerow([job["study_uid"], *values])


def _effect_summary(params: SynthesizeParams, jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The planted subgroup effect and how many studies (and positives) it touched."""
    effect = params.subgroup_effect
    if effect is None:
        return None
    touched = [j for j in jobs if "scale" in j]
    return effect.model_dump() | {
        "studies": len(touched),
        "positives": sum(effect.finding in j["findings"] for j in touched),
    }


def synthesize(params: SynthesizeParams) -> dict[str, Any]:
    """Write the synthetic dataset to ``params.out`` (replacing an earlier one).

    Args:
        params: the stage parameters.

    Returns:
        A summary: studies, patients, images, lateral_missing (studies without a lateral view),
        positives per finding, size, seconds.

    Raises:
        ValueError: ``params.out`` exists and holds something else than this stage's output.
    """
    start = time.perf_counter()
    out = Path(params.out)
    if out.exists() and not _is_ours(out):
        raise ValueError(
            f"{out}: exists and is not a synthesize output (dicom/, labels.csv, truth.csv); "
            "refusing to replace it"
        )
    jobs = plan_studies(params)
    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    (partial / "dicom").mkdir(parents=True)
    workers = params.workers or os.cpu_count() or 1
    regions = _write_images(partial, params.size, params.style(), jobs, workers)
    _write_labels(partial / "labels.csv", jobs)
    write_regions(partial / REGIONS_FILE, regions)
    _write_labels(partial / "truth.csv", jobs, truth=True)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)

    return {
        "studies": len(jobs),
        "patients": len({j["patient"] for j in jobs}),
        "images": sum(len(j["images"]) for j in jobs),
        "lateral_missing": sum(not j["has_lateral"] for j in jobs),
        "positives": {f: sum(f in j["findings"] for j in jobs) for f in FINDINGS},
        "labelled_positive": {f: sum(j["labels"][f] == 1 for j in jobs) for f in FINDINGS},
        "unlabelled": {f: sum(j["labels"][f] != j["labels"][f] for j in jobs) for f in FINDINGS},
        "sex": dict(sorted(Counter(j["attributes"]["sex"] for j in jobs).items())),
        "age_band": dict(sorted(Counter(j["attributes"]["age_band"] for j in jobs).items())),
        "subgroup_effect": _effect_summary(params, jobs),
        "preset": params.preset,
        "size": params.size,
        "seconds": round(time.perf_counter() - start, 3),
    }


def main() -> None:
    """Run the stage with the ``synthesize`` section of ``params.yaml``."""
    try:
        params = load_section(SynthesizeParams, "synthesize")
        summary = synthesize(params)
        write_metrics(METRICS_PATH, summary)
        save_gallery(GALLERY_PATH, params.size, params.style(), params.seed)
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError
        raise SystemExit(f"synthesize: {exc}") from None
    print(
        f"synthesize: {summary['studies']} studies, {summary['patients']} patients, "
        f"{summary['images']} images in {summary['seconds']:.1f} s -> {params.out}"
    )
