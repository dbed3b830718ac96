"""The ``cxr`` command: the stages for ad-hoc use outside DVC, and the Prefect flows.

The one module that imports both layers: ``cxr ingest`` and ``cxr pair`` call the same
functions as the DVC stages (``pipelines``); ``cxr report`` re-renders the evaluation report
from saved predictions; ``cxr predict`` runs an exported model on a study; ``cxr run``,
``cxr serve`` and ``cxr sweep`` start the flows (``flows``). Each command imports what it calls
when it runs, so ``cxr --help`` stays quick. ``pipelines`` never imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines.stage import run_stage

app = typer.Typer(
    name="cxr",
    help="cxr-dag: chest X-ray pipeline stages, reports and inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _echo_summary(summary: dict) -> None:
    typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))


@app.command()
def ingest(
    source: Annotated[str, typer.Option(help="dicom, nih, chexpert, mimic, padchest, openi, csv")],
    input: Annotated[Path, typer.Option("--input", help="DICOM folder or metadata CSV")],
    out: Annotated[Path, typer.Option(help="output folder")],
    images: Annotated[Optional[Path], typer.Option(help="image root for CSV inputs")] = None,  # noqa: UP045
    labels: Annotated[Optional[Path], typer.Option(help="label CSV (MIMIC, DICOM)")] = None,  # noqa: UP045
    verify_files: Annotated[bool, typer.Option(help="open each image header")] = True,
    uncertain: Annotated[str, typer.Option(help="-1 labels: ignore, ones, zeros")] = "ignore",
    blank: Annotated[
        str, typer.Option(help="blank CheXpert/MIMIC labels: zeros, nan, nan_unless_no_finding")
    ] = "zeros",
    workers: Annotated[int, typer.Option(help="processes (0 = all cores)")] = 0,
) -> None:
    """Read raw inputs into OUT/manifest.parquet, OUT/rejected.csv and OUT/summary.json."""
    from pipelines.ingest import IngestParams, run_ingest

    def go() -> dict:
        params = IngestParams(
            source=source,
            input=str(input),
            images=str(images) if images else None,
            labels=str(labels) if labels else None,
            verify_files=verify_files,
            uncertain=uncertain,  # type: ignore[arg-type]
            blank=blank,  # type: ignore[arg-type]
            workers=workers,
            out=str(out),
        )
        return run_ingest(params)

    _echo_summary(run_stage(go))


@app.command()
def pair(
    manifest: Annotated[Path, typer.Option(help="manifest.parquet from ingest")],
    out: Annotated[Path, typer.Option(help="output folder")],
    missing_view: Annotated[
        str, typer.Option(help="keep_frontal_only or require_both")
    ] = "keep_frontal_only",
    seed: Annotated[int, typer.Option(help="split seed")] = 1337,
    train: float = 0.7,
    val: float = 0.15,
    test: float = 0.15,
    official_split: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            metavar="SPLIT=LIST|FILE",
            help="SPLIT=LIST, repeatable (test=test_list.txt: a list of image file names), or "
            "one FILE: a table with a split column (mimic-cxr-2.0.0-split.csv.gz)",
        ),
    ] = None,
    holdout_source: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            metavar="NAME",
            help="put every patient of this source in test; train and val on the rest",
        ),
    ] = None,
) -> None:
    """One row per study with a patient-wise split: OUT/studies.parquet and OUT/summary.json."""
    from pipelines.pair import PairParams, official_split_option, run_pair

    def go() -> dict:
        params = PairParams(
            manifest=str(manifest),
            out=str(out),
            missing_view=missing_view,  # type: ignore[arg-type]
            fractions={"train": train, "val": val, "test": test},
            official_split=official_split_option(official_split or []),
            holdout_source=holdout_source or None,
        )
        return run_pair(params, seed)

    _echo_summary(run_stage(go))


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="output folder for report.html, report.md, metrics")],
    predictions: Annotated[
        Path, typer.Option(help="predictions.parquet written by the evaluate stage")
    ] = Path("outputs/evaluation/predictions.parquet"),
    params: Annotated[
        Path, typer.Option(help="params.yaml whose `evaluate` section sets the statistics")
    ] = Path("params.yaml"),
    resamples: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="bootstrap resamples (default: the params file's)"),
    ] = None,
) -> None:
    """Re-render the evaluation report from saved predictions (no model needed)."""
    import yaml

    from pipelines.errors import ConfigError
    from pipelines.evaluation.outputs import render_report
    from pipelines.evaluation.provenance import collect_versions

    def go() -> dict:
        section: dict = {}
        if params.is_file():
            raw = yaml.safe_load(params.read_text(encoding="utf-8")) or {}
            if not isinstance(raw, dict):
                raise ConfigError(f"{params}: not a mapping of sections")
            section = dict(raw.get("evaluate") or {})
        if resamples is not None:
            section["bootstrap_resamples"] = resamples
        inputs = [
            section.get("checkpoint", "models/best.pt"),
            section.get("prepared", "data/prepared"),
        ]
        result = render_report(predictions, out, section, collect_versions(inputs))
        m = result["metrics"]
        return {
            "macro_auroc": m.get("macro_auroc"),
            "macro_auroc_ci": [m.get("macro_auroc_lo"), m.get("macro_auroc_hi")],
            "files": result["files"],
        }

    _echo_summary(run_stage(go))


#: The DICOM-output and explanation options of ``cxr predict``.
DicomOutOption = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--dicom-out",
        metavar="DIR",
        help="also write a DICOM SR of the findings into DIR (DICOM inputs only); with "
        "--explain, a Secondary Capture per overlay",
    ),
]
ExplainOption = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        metavar="DIR", help="write Grad-CAM overlays (PNG per positive finding and view) to DIR"
    ),
]
CheckpointOption = Annotated[
    Path, typer.Option(help="the PyTorch checkpoint --explain needs (exported models have none)")
]
ExplainFindingOption = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(help="explain this finding instead of the positive ones (repeatable)"),
]


@app.command()
def predict(
    paths: Annotated[
        list[Path],
        typer.Argument(help="a DICOM study folder, a CSV of studies, or frontal [lateral] images"),
    ],
    model: Annotated[Path, typer.Option(help="exported model (.onnx, .ts.pt, .ptl, .pte)")] = Path(
        "models/export/model.onnx"
    ),
    runtime: Annotated[
        str, typer.Option(help="auto, onnxruntime, torchscript, lite, executorch")
    ] = "auto",
    frontal_only: Annotated[bool, typer.Option(help="ignore the lateral view")] = False,
    format: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="also write the output to this file"),
    ] = None,
    threshold: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="threshold policy from the model card (default: the card's)"),
    ] = None,
    dicom_out: DicomOutOption = None,
    explain: ExplainOption = None,
    checkpoint: CheckpointOption = Path("models/best.pt"),
    explain_finding: ExplainFindingOption = None,
) -> None:
    """Per-finding probabilities and threshold decisions for one or more studies."""
    from pipelines.predict import predict_command

    text = run_stage(
        lambda: predict_command(
            [str(p) for p in paths],
            model=model,
            runtime=runtime,
            frontal_only=frontal_only,
            fmt=format,  # type: ignore[arg-type]
            out=out,
            threshold=threshold,
            dicom_out=dicom_out,
            explain=explain,
            checkpoint=checkpoint,
            explain_findings=explain_finding or None,
        )
    )
    typer.echo(text, nl=False)


@app.command()
def score(
    once: Annotated[bool, typer.Option(help="one run now (the schedule: `cxr serve`)")] = False,
    dicomweb: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web"),
    ] = None,
    folder: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="folder mode: score the DICOM studies of this folder"),
    ] = None,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="folder mode: write the SRs here"),
    ] = None,
    model: Annotated[Path, typer.Option(help="exported model (.onnx)")] = Path(
        "models/export/model.onnx"
    ),
    lookback_days: Annotated[int, typer.Option(help="StudyDate days before the watermark")] = 2,
    attempts: Annotated[int, typer.Option(help="tries per DICOMweb call")] = 4,
    backoff_s: Annotated[float, typer.Option(help="first wait between tries (s)")] = 2.0,
) -> None:
    """Score new chest studies of a PACS (DICOMweb) or a folder: the `cxr-score` flow."""
    from pipelines.stage import fail

    if not once:
        fail("cxr score runs once with --once; `cxr serve` runs it on its schedule")
    from flows.score import cxr_score

    summary = run_stage(
        lambda: cxr_score(
            dicomweb=dicomweb,
            folder=str(folder) if folder else None,
            out=str(out) if out else None,
            model=str(model),
            lookback_days=lookback_days,
            attempts=attempts,
            backoff_s=backoff_s,
        )
    )
    _echo_summary(summary)


@app.command()
def run(
    target: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="run up to this stage (repeatable); default: all"),
    ] = None,
    force: Annotated[bool, typer.Option(help="rerun stages DVC finds up to date")] = False,
    repo: Annotated[Path, typer.Option(help="DVC repository root")] = Path("."),
    stage_timeout: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="seconds per stage"),
    ] = None,
) -> None:
    """Run the DVC pipeline as the Prefect flow `cxr-pipeline` (one task per stage)."""
    from flows.pipeline import cxr_pipeline

    outcome = run_stage(
        lambda: cxr_pipeline(
            targets=target or None, force=force, repo=str(repo), stage_timeout_s=stage_timeout
        )
    )
    _echo_summary(outcome)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def sweep(ctx: typer.Context) -> None:
    """Run params sweeps as DVC experiments (the `cxr-sweep` flow); see `cxr sweep --help`."""
    from flows.sweep import main as sweep_main

    sweep_main(list(ctx.args))


@app.command()
def serve() -> None:
    """Start a local Prefect server (127.0.0.1:4200); serve the scheduled pipeline and cxr-score."""
    from flows.serve import main as serve_main

    run_stage(serve_main)


if __name__ == "__main__":
    app()
