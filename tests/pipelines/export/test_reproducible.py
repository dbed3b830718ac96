"""Exported files carry no trace of where they were made: the same model gives the same bytes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pipelines.export.formats import export_mobile, export_onnx, export_torchscript, trace
from pipelines.export.inference import CXRInference, example_inputs
from pipelines.runners import load_runner
from tests.pipelines.export.helpers import ROOT, SIZE, TinyNet, fitted_gate, make_prepared

pytestmark = pytest.mark.slow

EXPORT = """
import sys
from pathlib import Path
from tinynet_copy import TinyNet
from pipelines.export.formats import export_mobile, export_onnx, export_torchscript, trace
from pipelines.export.inference import CXRInference

out = Path(sys.argv[1])
module = CXRInference(TinyNet(seed=3), {size})
traced = trace(module, {size})
export_torchscript(traced, out / "m.ts.pt")
export_mobile(traced, out / "m.ptl")
export_onnx(module, out / "m.onnx", {size})
"""


def _export_from(folder: Path) -> dict[str, bytes]:
    """Export TinyNet from a copy of its module in ``folder``, in a process of its own (as a
    clone elsewhere would): only the absolute source paths differ."""
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "tests/pipelines/export/helpers.py", folder / "tinynet_copy.py")
    (folder / "export.py").write_text(EXPORT.format(size=SIZE))
    out = folder / "out"
    out.mkdir()
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "export.py", str(out)], cwd=folder, env=env, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_two_copies_of_the_code_in_other_folders_export_the_same_bytes(tmp_path: Path) -> None:
    a = _export_from(tmp_path / "first")
    b = _export_from(tmp_path / "second")
    assert a.keys() == b.keys() == {"m.ts.pt", "m.ptl", "m.onnx"}
    for name in a:
        assert a[name] == b[name], name
        assert str(tmp_path).encode() not in a[name], name  # no absolute path inside


def test_stripped_files_still_run_and_agree(tmp_path: Path) -> None:
    """Every format carries both outputs: the probabilities and the gate's distances."""
    net = TinyNet(seed=3)
    module = CXRInference(net, SIZE, fitted_gate(net, make_prepared(tmp_path / "prepared")))
    traced = trace(module, SIZE)
    export_torchscript(traced, tmp_path / "m.ts.pt")
    export_mobile(traced, tmp_path / "m.ptl")
    export_onnx(module, tmp_path / "m.onnx", SIZE)
    frontal, lateral, has = (t.numpy() for t in example_inputs(SIZE, batch=3))
    with torch.inference_mode():
        probs, ood = (x.numpy() for x in module(*map(torch.from_numpy, (frontal, lateral, has))))
    for name, runtime in (("m.ts.pt", "torchscript"), ("m.ptl", "lite"), ("m.onnx", "onnxruntime")):
        got = load_runner(tmp_path / name, runtime)(frontal, lateral, has)
        np.testing.assert_allclose(got.probabilities, probs, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got.ood, ood, rtol=1e-4, err_msg=name)
    records = torch._C.PyTorchFileReader(str(tmp_path / "m.ts.pt")).get_all_records()
    assert not [r for r in records if r.endswith(".debug_pkl")]  # (its id is now from content)
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert not [n for n in model.graph.node if n.metadata_props]
