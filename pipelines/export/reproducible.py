"""Exported files that are the same bytes on every run and in every clone of the repository.

The exporters record where the code ran: TorchScript and Lite Interpreter archives keep the
absolute path of every traced source file (``*.debug_pkl``) and a random
``.data/serialization_id`` (once rewritten by PyTorch's archive writer, the id follows the
content); the ONNX exporter keeps a stack trace with absolute paths on every node. Two clones
in different folders would then write different files from the same model, and ``dvc.lock``
would differ. These functions rewrite the files without that information; what the runtimes
execute (code, weights, graph) is unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Archive records that hold run-specific, not model-specific, bytes.
_VOLATILE_SUFFIXES = (".debug_pkl",)
_VOLATILE_RECORDS = (".data/serialization_id",)


def strip_torch_archive(path: str | Path) -> int:
    """Rewrite a TorchScript / Lite Interpreter archive without debug info and its random id.

    The archive is rewritten with PyTorch's own archive writer (the alignment the loaders
    expect), through a file object so the archive's inner folder is always ``archive``.

    Args:
        path: the ``.pt`` / ``.ptl`` file, replaced in place.

    Returns:
        How many records were dropped.
    """
    import torch

    path = Path(path)
    reader = torch._C.PyTorchFileReader(str(path))
    records = reader.get_all_records()
    kept = [r for r in records if not _volatile(r)]
    tmp = path.with_name(f".{path.name}.strip")
    try:
        with open(tmp, "wb") as fh:
            writer = torch._C.PyTorchFileWriter(fh)
            for name in kept:
                data = reader.get_record(name)
                writer.write_record(name, data, len(data))
            writer.write_end_of_file()
            del writer
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(records) - len(kept)


def _volatile(record: str) -> bool:
    return record in _VOLATILE_RECORDS or record.endswith(_VOLATILE_SUFFIXES)


def strip_onnx(path: str | Path) -> int:
    """Rewrite an ONNX model without the exporter's per-node metadata (source stack traces).

    Args:
        path: the ``.onnx`` file (without external data), replaced in place.

    Returns:
        How many metadata entries were dropped.
    """
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    graphs = [model.graph, *(f for f in model.functions)]
    dropped = 0
    for graph in graphs:
        for node in graph.node:
            dropped += len(node.metadata_props)
            del node.metadata_props[:]
            node.doc_string = ""
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if hasattr(value, "metadata_props"):
            dropped += len(value.metadata_props)
            del value.metadata_props[:]
    model.graph.doc_string = ""
    onnx.save(model, str(path))
    return dropped
