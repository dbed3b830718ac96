"""Benchmark ``cxr score`` against a real Orthanc on loopback: studies per minute end to end.

The same studies of the embedded synthetic set (frontal + lateral, ``--size`` px), one run:

- **cxr predict from disk** (the baseline): :func:`pipelines.predict.predict` + the SR
  (``cxr predict STUDY --dicom-out DIR``) per study folder, the model loaded once per study as
  the command does;
- **scoring, pipeline loop**: QIDO-RS search + per study WADO-RS retrieve, view choice, SR UID
  lookup (QIDO-RS), decode + inference, SR, STOW-RS (:func:`pipelines.scoring.score_study`),
  the model loaded once;
- **scoring, the flow** (``--flow``): the same through the ``cxr-score`` Prefect flow (one task
  run per study) on a temporary Prefect server; Orthanc is emptied of SRs between the two.

Prints studies per minute of each, the ratios to the baseline and the share of time per step.
Needs the Orthanc binary and its DICOMweb plugin (``orthanc``, ``orthanc-dicomweb``).

Usage:
    python benchmarks/bench_score.py [--model models/export/model.onnx] [--studies 20]
                                     [--size 256] [--flow]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.predict import predict, write_dicom_outputs  # noqa: E402
from pipelines.scoring import DicomWebStore, Scorer, score_study, summarize  # noqa: E402
from pipelines.synthetic.params import SynthesizeParams  # noqa: E402
from pipelines.synthetic.stage import synthesize  # noqa: E402
from tests.orthanc import Orthanc, orthanc_available  # noqa: E402


def _delete_srs(pacs: Orthanc) -> None:
    with urllib.request.urlopen(f"{pacs.url}/series?expand", timeout=30) as resp:
        series = json.loads(resp.read())
    for s in series:
        if s["MainDicomTags"].get("Modality") == "SR":
            request = urllib.request.Request(f"{pacs.url}/series/{s['ID']}", method="DELETE")
            urllib.request.urlopen(request, timeout=30).read()


def baseline(folders: list[Path], model: Path, out: Path) -> float:
    start = time.perf_counter()
    for folder in folders:
        write_dicom_outputs(predict(folder, model=model), model, out)
    return time.perf_counter() - start


def loop(pacs: Orthanc, model: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    store = DicomWebStore(pacs.dicomweb)
    scorer = Scorer(model)
    t = time.perf_counter()
    uids = store.find(None)
    search_s = time.perf_counter() - t
    outcomes = [score_study(store, scorer, uid) for uid in uids]
    return time.perf_counter() - start, summarize(outcomes, len(uids), search_s)


def flow(pacs: Orthanc, model: Path) -> tuple[float, dict]:
    from prefect.testing.utilities import prefect_test_harness

    from flows.score import cxr_score

    with prefect_test_harness(server_startup_timeout=90):
        start = time.perf_counter()
        summary = cxr_score(dicomweb=pacs.dicomweb, model=str(model))
        return time.perf_counter() - start, summary


def _shares(summary: dict) -> str:
    steps = summary["seconds_by_step"]
    total = sum(steps.values()) or 1.0
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in steps.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/export/model.onnx")
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--flow", action="store_true", help="also time the Prefect flow")
    args = parser.parse_args()
    if not orthanc_available():
        sys.exit("Orthanc and its DICOMweb plugin are not installed")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthesize(
            SynthesizeParams(
                out=root / "syn",
                studies=args.studies,
                size=args.size,
                lateral_missing=0.0,
                workers=1,
                seed=11,
            )
        )
        folders = sorted(p for p in (root / "syn" / "dicom").glob("*/*") if p.is_dir())
        pacs = Orthanc(root / "orthanc")
        pacs.start()
        try:
            pacs.upload(sorted(root.glob("syn/dicom/**/*.dcm")))
            n = len(folders)
            base_s = baseline(folders, args.model, root / "out")
            loop_s, summary = loop(pacs, args.model)
            assert summary["stored"] == n, summary
            rows = [
                ("cxr predict --dicom-out, from disk", base_s, None),
                ("scoring, pipeline loop (Orthanc)", loop_s, summary),
            ]
            if args.flow:
                _delete_srs(pacs)
                flow_s, flow_summary = flow(pacs, args.model)
                assert flow_summary["stored"] == n, flow_summary
                rows.append(("scoring, cxr-score flow (Orthanc)", flow_s, flow_summary))
        finally:
            pacs.stop()
    print(f"{n} studies (frontal + lateral, {args.size} px), model {args.model.name}")
    for name, seconds, s in rows:
        rate = 60 * n / seconds
        ratio = base_s / seconds
        print(f"{name}: {seconds:.2f} s, {rate:.1f} studies/min ({ratio:.2f}x the baseline)")
        if s:
            print(f"  time per step: {_shares(s)}; latency p50 {s['latency_s']['p50']} s")


if __name__ == "__main__":
    main()
