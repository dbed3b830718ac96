"""Benchmark the export formats: latency at batch 1 and 16, file sizes, and agreement, one run.

Paths timed on ``--threads`` threads (default 2), each on the same inputs, alternating nothing
else in the process:

- **eager fp32**: the :class:`~pipelines.export.CXRInference` module (the parity reference);
- **eager bf16**: the same under ``torch.autocast("cpu", torch.bfloat16)``;
- **TorchScript**: ``model.ts.pt`` (``torch.jit.trace``), loaded back from the file;
- **ORT fp32**: ``model.onnx`` (dynamo exporter) under onnxruntime;
- **ORT int8**: ``model.int8.onnx``, the stage's int8 (static QDQ, BatchNorm rewritten as
  depthwise Conv, calibrated);
- **FX int8** (``--fx``, the alternative the stage did not choose): PyTorch FX graph-mode static
  PTQ (x86 qconfig, same calibration batches), traced and frozen. torchao pt2e is not timed: it
  needs ``torchao`` and is fast only after a ~150 s ``torch.compile``.

Per image size (``--sizes``, default: the demo's ``preprocess.image_size`` from params.yaml,
and 224):
when ``models/best.pt`` and ``data/prepared`` exist at that size, the trained model is used and
each path's test macro AUROC is computed on up to ``--auroc-studies`` test studies; otherwise the
model has random weights (AUROC n/a) and the inputs are smooth random images (int8 calibrated on
such images). Timings and max |Δprobability| always use smooth random images. It prints, per
path: median ms at batch 1 and 16, ms per study at 16, speedup over eager fp32 at batch 1, max
|Δprobability| vs eager fp32, AUROC and file size; then the speedup of the best exported path
(TorchScript, ORT fp32, ORT int8) over eager fp32 at batch 1, the figure the issue asks for
(target >= 2x with AUROC within 0.005).

Timings on a shared machine are noisy: compare paths within one run only.

Usage:
    python benchmarks/bench_export.py [--sizes 128 224] [--threads 2] [--repeats 10]
                                      [--fx | --no-fx] [--json FILE]
                                      [--checkpoint models/best.pt] [--prepared data/prepared]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.data import ShardDataset, read_index  # noqa: E402
from pipelines.evaluation.metrics import macro_auroc  # noqa: E402
from pipelines.export import (  # noqa: E402
    CXRInference,
    ShardCalibrationReader,
    eager_runner,
    export_onnx,
    export_torchscript,
    quantize_onnx,
    trace,
)
from pipelines.model import ModelParams, build_model, load_model, to_model_input  # noqa: E402
from pipelines.runners import load_runner  # noqa: E402

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]
Runner = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class _Reader:
    """Calibration batches in the shape :func:`pipelines.export.quantize_onnx` reads."""

    def __init__(self, batches: list[Batch]):
        self.batches = batches
        self.indices = np.arange(sum(len(b[0]) for b in batches))
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._it, None)
        return (
            None if b is None else dict(zip(("frontal", "lateral", "has_lateral"), b, strict=True))
        )


def smooth_batch(rng: np.random.Generator, n: int, size: int) -> Batch:
    cell = max(1, size // 16)
    base = rng.normal(size=(n, 2, -(-size // cell), -(-size // cell)))
    img = np.kron(base, np.ones((1, 1, cell, cell)))[:, :, :size, :size]
    img = np.clip(128 + 45 * img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return img[:, :1].copy(), img[:, 1:].copy(), np.arange(n) % 4 != 3


def demo_size() -> int:
    try:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        return int(params["preprocess"]["image_size"])
    except (OSError, KeyError, TypeError, ValueError):
        return 128


def load_module(size: int, checkpoint: Path, prepared: Path) -> tuple[CXRInference, bool]:
    """The trained model when its prepared size is ``size``, else a random one."""
    if checkpoint.is_file() and (prepared / "index.json").is_file():
        model, meta = load_model(checkpoint)
        if meta.get("prepared_size", meta.get("size")) == size == read_index(prepared)["size"]:
            return CXRInference(model, meta.get("size")).eval(), True
    torch.manual_seed(0)
    return CXRInference(build_model(ModelParams()).eval()).eval(), False


def fx_int8(module: CXRInference, calib: list[Batch], path: Path) -> torch.jit.ScriptModule:
    """FX graph-mode static PTQ of the inner model (x86 qconfig), traced + frozen, saved."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    size = module.size

    def prep(b: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f, lat, has = (torch.from_numpy(a) for a in b)
        return to_model_input(f, size), to_model_input(lat, size), has

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(module.model, get_default_qconfig_mapping("x86"), prep(calib[0]))
        with torch.no_grad():
            for b in calib:
                prepared(*prep(b))
        quantized = convert_fx(prepared)

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = quantized

            def forward(self, f, lat, has):
                return torch.sigmoid(
                    self.m(to_model_input(f, size), to_model_input(lat, size), has)
                )

        example = tuple(torch.from_numpy(a) for a in calib[0])
        traced = torch.jit.freeze(torch.jit.trace(Wrapped().eval(), example, check_trace=False))
        torch.jit.save(traced, str(path))
    return traced


def torch_runner(module: torch.nn.Module, bf16: bool = False) -> Runner:
    def run(f: np.ndarray, lat: np.ndarray, has: np.ndarray) -> np.ndarray:
        args = (torch.from_numpy(f), torch.from_numpy(lat), torch.from_numpy(has))
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return module(*args).float().numpy()

    return run


def median_ms(run: Runner, batch: Batch, repeats: int) -> float:
    run(*batch)  # warm-up (allocations, lazy init)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(*batch)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def test_auroc(run: Runner, test: ShardDataset, limit: int) -> tuple[float, np.ndarray]:
    n = min(limit, len(test))
    probs = []
    for start in range(0, n, 16):
        b = test.get_batch(range(start, min(start + 16, n)))
        probs.append(run(b["frontal"].numpy(), b["lateral"].numpy(), b["has_lateral"].numpy()))
    p = np.concatenate(probs)
    return macro_auroc(test.labels[:n], p), p


def bench_size(size: int, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    module, trained = load_module(size, args.checkpoint, args.prepared)
    rng = np.random.default_rng(0)
    if trained:  # the stage's calibration: seeded training studies, batches of 16
        reader = ShardCalibrationReader(
            ShardDataset(args.prepared, "train"), args.calibration_studies, 16, args.seed
        )
        calib = []
        while (feed := reader.get_next()) is not None:
            calib.append((feed["frontal"], feed["lateral"], feed["has_lateral"]))
    else:
        calib = [smooth_batch(rng, 16, size) for _ in range(4)]
    b16 = smooth_batch(np.random.default_rng(1), 16, size)
    b1 = tuple(a[:1] for a in b16)

    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        tmpdir = Path(tmp)
        t0 = time.perf_counter()
        traced = trace(module, size)
        export_torchscript(traced, tmpdir / "model.ts.pt")
        files["TorchScript"] = tmpdir / "model.ts.pt"
        print(f"  [{size}px] traced in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        export_onnx(module, tmpdir / "model.onnx", size)
        files["ORT fp32"] = tmpdir / "model.onnx"
        print(f"  [{size}px] ONNX exported in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        quantize_onnx(tmpdir / "model.onnx", tmpdir / "model.int8.onnx", _Reader(calib), tmpdir)
        files["ORT int8"] = tmpdir / "model.int8.onnx"
        print(f"  [{size}px] int8 (onnxruntime) in {time.perf_counter() - t0:.0f} s", flush=True)
        runners: dict[str, Runner] = {
            "eager fp32": eager_runner(module),
            "eager bf16": torch_runner(module, bf16=True),
            "TorchScript": load_runner(files["TorchScript"], "torchscript", args.threads),
            "ORT fp32": load_runner(files["ORT fp32"], "onnxruntime", args.threads),
            "ORT int8": load_runner(files["ORT int8"], "onnxruntime", args.threads),
        }
        if args.fx:
            t0 = time.perf_counter()
            try:
                runners["FX int8"] = torch_runner(fx_int8(module, calib, tmpdir / "fx.pt"))
                files["FX int8"] = tmpdir / "fx.pt"
                print(f"  [{size}px] FX int8 in {time.perf_counter() - t0:.0f} s", flush=True)
            except Exception as exc:  # report, keep benchmarking the rest
                print(f"  [{size}px] FX int8 failed: {type(exc).__name__}: {exc}", flush=True)
        sizes_mb = {k: v.stat().st_size / 1e6 for k, v in files.items()}

        ref = runners["eager fp32"](*b16)
        test = ShardDataset(args.prepared, "test") if trained else None
        rows = {}
        for name, run in runners.items():
            r1 = median_ms(run, b1, args.repeats)
            r16 = median_ms(run, b16, max(3, args.repeats // 3))
            row = {
                "b1_ms": r1,
                "b16_ms": r16,
                "b16_ms_per_study": r16 / 16,
                "max_abs_prob": float(np.abs(run(*b16) - ref).max()),
                "mb": sizes_mb.get(name),
                "auroc": None,
            }
            if test is not None and len(test):
                row["auroc"] = test_auroc(run, test, args.auroc_studies)[0]
            rows[name] = row
            print(f"  [{size}px] {name}: b1 {r1:.1f} ms, b16 {r16:.1f} ms", flush=True)
    base = rows["eager fp32"]["b1_ms"]
    for row in rows.values():
        row["speedup_b1"] = base / row["b1_ms"]
    exported = {k: v for k, v in rows.items() if k in ("TorchScript", "ORT fp32", "ORT int8")}
    best = min(exported, key=lambda k: exported[k]["b1_ms"])
    return {
        "size": size,
        "threads": args.threads,
        "trained_model": trained,
        "paths": rows,
        "best_exported": best,
    }


def print_table(result: dict) -> None:
    size, rows = result["size"], result["paths"]
    weights = "trained model" if result["trained_model"] else "random weights"
    print(f"\n{size} px ({weights}), {result['threads']} threads")
    head = f"{'path':<12} {'b1 ms':>8} {'b16 ms':>8} {'ms/study@16':>11} {'x eager@1':>9}"
    print(head + f" {'max|Δp|':>9} {'AUROC':>7} {'MB':>7}")
    for name, r in rows.items():
        auroc = f"{r['auroc']:.4f}" if r["auroc"] is not None else "n/a"
        mb = f"{r['mb']:.1f}" if r["mb"] is not None else "-"
        print(
            f"{name:<12} {r['b1_ms']:8.1f} {r['b16_ms']:8.1f} {r['b16_ms_per_study']:11.1f} "
            f"{r['speedup_b1']:9.2f} {r['max_abs_prob']:9.2e} {auroc:>7} {mb:>7}"
        )
    best = result["best_exported"]
    r, e = rows[best], rows["eager fp32"]
    line = f"best exported path at batch 1: {best}, {r['speedup_b1']:.2f}x eager fp32"
    if r["auroc"] is not None:
        line += f", AUROC {r['auroc'] - e['auroc']:+.4f} vs eager"
    print(line + " (target >= 2x, AUROC within 0.005)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--fx", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "best.pt")
    parser.add_argument("--prepared", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--auroc-studies", type=int, default=256)
    parser.add_argument("--calibration-studies", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1337, help="calibration sample (base.seed)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = args.sizes or sorted({demo_size(), 224})
    results = []
    for size in sizes:
        print(f"benchmarking {size} px ...", flush=True)
        results.append(bench_size(size, args))
    for result in results:
        print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
