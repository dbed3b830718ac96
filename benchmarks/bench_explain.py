"""Benchmark saliency: Grad-CAM of one study vs a plain forward pass, and ``cxr predict --explain``.

In one run, at the demo size (views prepared at ``--image-size`` 128 px, model input ``--size``
64 px) on ``--threads`` threads (default 2):

- **plain**: one no-grad forward pass of the eager two-view model on one study;
- **Grad-CAM**: :meth:`pipelines.explain.Explainer.explain` of the same study for all 14
  findings, both views (one trunk pass, then per finding MONAI's Grad-CAM on the part after the
  last dense blocks, upsampled to the image size), and the ratio to **plain**;
- **predict**: ``cxr predict`` (:func:`pipelines.predict.predict_command`) of one synthetic DICOM
  study with the exported ONNX model, without and with ``--explain`` (its overlay PNGs for
  ``--findings`` findings, or the positive ones when 0), and their ratio.

The model is ``--checkpoint`` when it exists (default ``models/best.pt``), else random weights
of the default architecture (the timings do not depend on the weights); the ONNX model is
exported from it into a temporary folder. Medians of ``--repeats`` runs after one warm-up.

Usage:
    python benchmarks/bench_explain.py [--repeats 5] [--threads 2] [--findings 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.explain import Explainer
from pipelines.export import CXRInference, export_onnx, model_card
from pipelines.io import write_json
from pipelines.labels import FINDINGS
from pipelines.model import ModelParams, build_model, load_model, to_model_input
from pipelines.predict import predict_command
from pipelines.synthetic import sample_anatomy, write_dicom
from pipelines.synthetic.render import render_view


def median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _model(checkpoint: Path, size: int) -> tuple[torch.nn.Module, dict]:
    if checkpoint.is_file():
        model, meta = load_model(checkpoint)
        return model, meta
    torch.manual_seed(0)
    params = ModelParams()
    meta = {"model_params": params.model_dump(), "findings": list(FINDINGS), "size": size}
    return build_model(params).eval(), meta


def _study(folder: Path, image_size: int) -> Path:
    """One synthetic PA + lateral DICOM study (an effusion) in ``folder``."""
    rng = np.random.default_rng(0)
    anatomy = sample_anatomy(rng)
    for view, code in (("PA", "PA"), ("LATERAL", "LL")):
        pixels = render_view(rng, 2 * image_size, view, frozenset({"Effusion"}), anatomy)
        uid = "1.2.826.0.1.3680043.8.498.77"
        write_dicom(
            folder / f"{code}.dcm",
            pixels,
            photometric="MONOCHROME2",
            bits_stored=12,
            view_position=code,
            modality="DX",
            uids={
                "StudyInstanceUID": uid,
                "SeriesInstanceUID": f"{uid}.{code == 'LL'}",
                "SOPInstanceUID": f"{uid}.{code == 'LL'}.1",
            },
            phi={"PatientID": "BENCH", "PatientName": "BENCH^STUDY"},
        )
    return folder


def _export(model: torch.nn.Module, meta: dict, size: int, out: Path, ckpt: Path) -> Path:
    export_onnx(CXRInference(model, size).eval(), out / "model.onnx", size)
    thresholds = {"thresholds": {"youden": dict.fromkeys(meta["findings"], 0.0)}, "notes": {}}
    card = model_card(
        meta=meta,
        input_size=size,
        files={},
        parity={},
        parity_summary={},
        thresholds=thresholds,
        default_policy="youden",
        test_metrics=None,
        data_summary=None,
        n_params=0,
    )
    write_json(out / "metadata.json", card)
    torch.save({"model": model.state_dict(), "meta": meta}, ckpt)
    return out / "model.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("models/best.pt"))
    ap.add_argument("--size", type=int, default=64, help="model input size")
    ap.add_argument("--image-size", type=int, default=128, help="prepared image size")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--findings", type=int, default=3, help="findings --explain draws (0: positives)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = _model(args.checkpoint, args.size)
    size = int(meta.get("size") or args.size)
    rng = np.random.default_rng(1)
    frontal = rng.integers(0, 256, (args.image_size, args.image_size), dtype=np.uint8)
    lateral = rng.integers(0, 256, (args.image_size, args.image_size), dtype=np.uint8)
    f = to_model_input(torch.from_numpy(frontal)[None, None], size)
    lat = to_model_input(torch.from_numpy(lateral)[None, None], size)
    has = torch.tensor([True])

    def plain() -> None:
        with torch.no_grad():
            model(f, lat, has)

    explainer = Explainer(model, size, meta["findings"])
    t_plain = median_s(plain, args.repeats)
    t_cam = median_s(lambda: explainer.explain(frontal, lateral), args.repeats)
    source = f"checkpoint {args.checkpoint}" if args.checkpoint.is_file() else "random weights"
    print(f"model: {source}, input {size} px, images {args.image_size} px, {args.threads} threads")
    print(f"plain forward, 1 study:              {1000 * t_plain:8.1f} ms")
    ratio = t_cam / t_plain
    print(f"Grad-CAM, 14 findings x 2 views:     {1000 * t_cam:8.1f} ms  ({ratio:.1f}x plain)")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx = _export(model, meta, size, tmp, tmp / "best.pt")
        study = _study(tmp / "study", args.image_size)
        picks = list(meta["findings"][: args.findings]) or None
        run = lambda **kw: predict_command([str(study)], model=onnx, **kw)  # noqa: E731
        t_pred = median_s(run, args.repeats)
        t_expl = median_s(
            lambda: run(explain=tmp / "png", checkpoint=tmp / "best.pt", explain_findings=picks),
            args.repeats,
        )
        n_png = len(list((tmp / "png").iterdir()))
    print(f"cxr predict, 1 study:                {1000 * t_pred:8.1f} ms")
    ratio = t_expl / t_pred
    print(f"cxr predict --explain ({n_png} PNGs): {1000 * t_expl:8.1f} ms  ({ratio:.1f}x)")


if __name__ == "__main__":
    main()
