"""Helpers of the reader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def write(path: Path, text: str | bytes) -> Path:
    """Write ``text`` (str or bytes) to ``path``, creating its folder; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def make_images(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Tiny images of several kinds; returns what their headers must say."""
    root.mkdir(parents=True, exist_ok=True)
    Image.new("L", (7, 5)).save(root / "gray.png")
    Image.fromarray(np.full((4, 6), 4000, np.uint16)).save(root / "gray16.png")
    Image.new("RGBA", (3, 9)).save(root / "rgba_named.jpg", format="PNG")  # a PNG named .jpg
    Image.new("RGB", (10, 8)).save(root / "color.jpg")
    Image.new("L", (12, 11)).save(root / "gray.jpg")
    Image.new("P", (2, 2)).save(root / "palette.png")
    return {
        "gray.png": (7, 5, 8, "MONOCHROME2"),
        "gray16.png": (6, 4, 16, "MONOCHROME2"),
        "rgba_named.jpg": (3, 9, 8, "RGBA"),
        "color.jpg": (10, 8, 8, "RGB"),
        "gray.jpg": (12, 11, 8, "MONOCHROME2"),
        "palette.png": (2, 2, 8, "PALETTE COLOR"),
    }


def manifest_rows(paths: list[str]) -> pd.DataFrame:
    n = len(paths)
    frame = {
        "image_id": [f"i{i}" for i in range(n)],
        "patient_key": "p",
        "study_key": "s",
        "source": "csv",
        "path": paths,
        "view": "PA",
        "view_raw": "PA",
        "width": 99,
        "height": 99,
        "bits": 0,
        "photometric": "",
    }
    return pd.DataFrame(frame)
