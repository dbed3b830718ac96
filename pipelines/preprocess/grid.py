"""The preview PNG of prepared studies (``plots/preprocess/grid.png``): a check at a glance.

Frontal beside lateral, titled with the split, the frontal view and the positive findings: no keys,
paths or header values, nothing that could identify a patient.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.labels import FINDINGS
from pipelines.schema import SPLITS


def grid_item(row: dict[str, Any], front: np.ndarray, lat: np.ndarray | None) -> dict[str, Any]:
    """One study of the preview: its views, split, frontal view and positive findings (no ids)."""
    values = {f: row[f] for f in FINDINGS}
    return {
        "frontal": front,
        "lateral": lat,
        "split": row["split"],
        "view": row.get("frontal_view", ""),
        "positive": [f for f, v in values.items() if v == 1],
        "labelled": any(v == v for v in values.values()),  # any non-NaN
    }


def grid_from(out: Path, n: int) -> list[dict[str, Any]]:
    """The preview studies of a prepared folder, chosen as :func:`preprocess_studies` does."""
    from pipelines.data import ShardDataset

    dual: list[dict[str, Any]] = []
    spare: list[dict[str, Any]] = []
    for split in SPLITS:
        if len(dual) >= n:
            break
        ds = ShardDataset(out, split)
        views = ds.meta["frontal_view"] if "frontal_view" in ds.meta else [""] * len(ds)
        for i, (lateral, view) in enumerate(zip(ds.has_lateral, views, strict=True)):
            pick = dual if lateral else spare
            if len(pick) >= n:
                if len(dual) >= n:
                    break
                continue
            pair = ds.get_batch([i])
            row = {"split": split, "frontal_view": str(view)}
            row |= dict(zip(FINDINGS, ds.labels[i].tolist(), strict=True))
            lat = pair["lateral"][0, 0].numpy() if lateral else None
            pick.append(grid_item(row, pair["frontal"][0, 0].numpy(), lat))
    return (dual + spare)[:n]


def save_grid(items: list[dict[str, Any]], path: str | Path) -> None:
    """A PNG of prepared studies: frontal beside lateral, titled with split and findings.

    No keys, paths or header values: nothing that could identify a patient.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.io import atomic_path

    n = max(1, len(items))
    per_row = min(4, n)
    rows = -(-n // per_row)
    height = 2.4 * rows + 0.8
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(3.8 * per_row, height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.8 / height,
                        wspace=0.04, hspace=0.45)  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for k, item in enumerate(items):
        r, c = divmod(k, per_row)
        a_f, a_l = axes[r, 2 * c], axes[r, 2 * c + 1]
        a_f.imshow(item["frontal"], cmap="gray", vmin=0, vmax=255)
        label = ", ".join(item["positive"]) or ("no finding" if item["labelled"] else "unlabelled")
        wrapped = textwrap.fill(label, 26, max_lines=2, placeholder=" ...")
        a_f.set_title(f"{item['split']} {item['view'] or 'frontal'}\n{wrapped}", fontsize=7,
                      loc="left")  # fmt: skip
        if item["lateral"] is not None:
            a_l.imshow(item["lateral"], cmap="gray", vmin=0, vmax=255)
            a_l.set_title("lateral", fontsize=7)
        else:
            a_l.text(0.5, 0.5, "no lateral", ha="center", va="center", fontsize=8)
    if not items:
        axes[0, 0].text(0.5, 0.5, "no studies", ha="center", va="center")
    fig.suptitle("preprocess: prepared studies (frontal | lateral), positive findings", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
