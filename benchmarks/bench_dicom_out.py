"""Benchmark ``cxr predict --dicom-out``: one DICOM study end to end, with and without, one run.

Three ways of predicting the same study, alternated ``--repeats`` times in one process (the
model is loaded by each call, as the command does):

- **table**: ``cxr predict STUDY`` (the baseline);
- **+ SR**: ``cxr predict STUDY --dicom-out DIR`` (the SR of the 14 findings);
- **+ SR + SCs**: the same with an overlay per finding and view (28 Secondary Captures of the
  study's image size, what the explanation will hand over; the overlays are made before timing).

The study is ``--study DIR``, or a frontal + lateral study of the embedded synthetic set at
``--size`` px made in a temporary folder. It prints the median seconds of each and the ratios to
the table baseline.

Usage:
    python benchmarks/bench_dicom_out.py [--model models/export/model.onnx] [--study DIR]
                                         [--size 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.imaging import read_image  # noqa: E402
from pipelines.labels import FINDINGS  # noqa: E402
from pipelines.predict import predict, predict_command  # noqa: E402
from pipelines.synthetic.params import SynthesizeParams  # noqa: E402
from pipelines.synthetic.stage import synthesize  # noqa: E402


def embedded_study(root: Path, size: int) -> Path:
    synthesize(
        SynthesizeParams(
            out=root / "syn", studies=2, size=size, lateral_missing=0.0, workers=1, seed=11
        )
    )
    return sorted(p for p in (root / "syn" / "dicom").glob("*/*") if p.is_dir())[0]


def overlays_of(study: Path):
    """An RGB overlay per finding and view, at each source's size, made once."""
    made: dict[str, np.ndarray] = {}

    def overlays(rows):
        first = rows.iloc[0]
        for view in ("frontal", "lateral"):
            if first[view] and view not in made:
                grey = (np.clip(read_image(first[view]), 0, 1) * 255).astype(np.uint8)
                rgb = np.repeat(grey[..., None], 3, axis=2)
                rgb[: grey.shape[0] // 4, : grey.shape[1] // 4] = (255, 0, 0)
                made[view] = rgb
        return {(f, v): made[v] for f in FINDINGS for v in made}

    return overlays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models/export/model.onnx")
    ap.add_argument("--study", type=Path)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not args.model.is_file():
        sys.exit(f"{args.model}: no exported model (run the export stage or pass --model)")
    with tempfile.TemporaryDirectory() as tmp:
        study = args.study or embedded_study(Path(tmp), args.size)
        hook = overlays_of(study)
        hook(predict(study, args.model))  # the overlays are made here, before timing
        runs = {
            "table": {},
            "+ SR": {"dicom_out": Path(tmp) / "sr"},
            "+ SR + 28 SCs": {"dicom_out": Path(tmp) / "sc", "overlays_for": hook},
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for name, extra in runs.items():
                start = time.perf_counter()
                predict_command([str(study)], model=args.model, **extra)
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["table"])
    print(f"study: {study.name} ({args.size} px unless --study), {args.repeats} repeats")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>14}: {median:7.3f} s  ratio to table {median / base:5.2f}x")


if __name__ == "__main__":
    main()
