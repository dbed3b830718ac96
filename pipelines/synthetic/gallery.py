"""``plots/synthesize/findings.png``: what the model must find, one finding at a time.

For each finding, one chest (the same patient throughout) without and with the finding, on the
PA and the lateral view, at the dataset's image size and at the middle of its conspicuity range:
a user sees how plain or subtle each finding is and on which view it shows. No devices, no
label noise; nothing that identifies anyone (the chest is synthetic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.io import atomic_path
from pipelines.labels import FINDINGS
from pipelines.synthetic.anatomy import sample_anatomy
from pipelines.synthetic.findings import VISIBILITY
from pipelines.synthetic.render import render_view
from pipelines.synthetic.style import Style

_COLUMNS = ("PA", "PA with it", "lateral", "lateral with it")


def gallery_images(size: int, style: Style, seed: int) -> dict[str, list[np.ndarray]]:
    """Per finding: PA without, PA with, lateral without, lateral with (float [0, 1] images)."""
    middle = sum(style.conspicuity) / 2
    shown = Style((middle, middle), style.nuisance, devices=0.0)
    anatomy = sample_anatomy(np.random.default_rng(seed))
    out = {}
    for finding in FINDINGS:
        row = []
        for view in ("PA", "LATERAL"):
            for findings in (frozenset(), frozenset({finding})):
                rng = np.random.default_rng([seed, 1 if view == "PA" else 2])  # same nuisance
                row.append(render_view(rng, size, view, findings, anatomy, shown))
        out[finding] = row
    return out


def save_gallery(path: str | Path, size: int, style: Style, seed: int) -> None:
    """Write the gallery PNG: 14 findings in two groups of columns (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    images = gallery_images(size, style, seed)
    rows = -(-len(FINDINGS) // 2)
    fig = Figure(figsize=(11.0, 1.5 * rows + 0.75))
    axes = fig.subplots(rows, 8, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, finding in enumerate(FINDINGS):
        r, group = k % rows, k // rows
        views = VISIBILITY[finding]
        shows = [v for v, on in (("PA", views["frontal"]), ("lateral", views["lateral"])) if on]
        for c, img in enumerate(images[finding]):
            ax = axes[r, 4 * group + c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            title = f"{finding} ({' + '.join(shows)})" if c == 0 else _COLUMNS[c]
            ax.set_title(title if c else f"{title}\n{_COLUMNS[0]}", fontsize=6.5, loc="left")
    fig.suptitle(
        f"The findings of the synthetic dataset at {size} px: the same chest without and with "
        f"each finding\n(strength {sum(style.conspicuity) / 2:.2f}, the middle of the "
        "dataset's conspicuity range; the view(s) it shows on in brackets)",
        fontsize=8,
        y=1 - 0.1 / fig.get_figheight(),
    )
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.75 / fig.get_figheight(),
                        wspace=0.05, hspace=0.55)  # fmt: skip
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
