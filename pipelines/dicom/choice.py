"""Which frontal and which lateral image of a study is used: one ranking, two callers.

The pair stage ranks manifest rows (:func:`rank_images`), ``cxr predict`` the headers of a study
folder (:func:`best_index`); both rank with the same keys, so the same candidates give the same
image:

- **frontal**: PA before AP, then the most pixels (width x height), then the path (string order);
- **lateral**: the most pixels, then the path.

The path is the last tie-break because it is what a user sees and it does not depend on the
secret salt (image ids are salted keys). Rows naming the same path (one file listed twice) are
then ordered by ``image_id`` when the frame has one, so the result never depends on row order and
the file chosen never depends on the salt.

No pydicom here: the pair stage imports this module.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

RANK = "_rank"


def _keys(images: pd.DataFrame, frontal: bool) -> pd.DataFrame:
    """The ranking keys, smallest first: (not PA, minus pixels, path[, image_id]), by position."""
    pixels = images["width"].to_numpy(dtype="int64") * images["height"].to_numpy(dtype="int64")
    keys = pd.DataFrame(
        {
            "_not_pa": (images["view"] != "PA").to_numpy(dtype=int) if frontal else 0,
            "_minus_pixels": -pixels,
            "_path": images["path"].astype(str).to_numpy(dtype=object),
        },
        index=pd.RangeIndex(len(images)),
    )
    if "image_id" in images.columns:
        keys["_image_id"] = images["image_id"].astype(str).to_numpy(dtype=object)
    return keys


def rank_images(images: pd.DataFrame, frontal: bool, by: str = "study_key") -> pd.DataFrame:
    """Rank candidate images within each group; rank 0 is the one used.

    Args:
        images: candidates with ``view``, ``width``, ``height``, ``path`` (and ``by``; an
            ``image_id`` column, when present, only orders rows of the same path).
        frontal: rank as frontal candidates (PA before AP) or as laterals.
        by: the group column (one study each).

    Returns:
        ``images`` sorted by group then rank, with an int column ``_rank`` (0, 1, ... per group).
    """
    keys = _keys(images, frontal)
    keys.insert(0, "_group", images[by].to_numpy())
    order = keys.sort_values(list(keys.columns), kind="mergesort").index.to_numpy()
    ranked = images.iloc[order].copy()
    ranked[RANK] = ranked.groupby(by, sort=False).cumcount()
    return ranked


def best_index(images: pd.DataFrame, frontal: bool) -> Any:
    """The index label of the image used among candidates of one study.

    Args:
        images: candidates with ``view``, ``width``, ``height``, ``path`` (at least one row).
        frontal: rank as frontal candidates (PA before AP) or as laterals.

    Returns:
        The label (in ``images.index``) of the rank-0 row.

    Raises:
        ValueError: no candidate.
    """
    if images.empty:
        raise ValueError("no candidate image")
    keys = _keys(images, frontal)
    first = keys.sort_values(list(keys.columns), kind="mergesort").index[0]
    return images.index[first]
