"""Which frontal / lateral image of a study is used: one ranking for pair and ``cxr predict``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.dicom.choice import RANK, best_index, rank_images
from pipelines.labels import FINDINGS
from pipelines.pair import PairParams, pair_studies
from pipelines.predict import find_study_views
from pipelines.schema import conform_manifest
from tests.pipelines.sources.test_dicom import make_ds, pixels, write


def frame(rows: list[tuple[str, str, int, int]], **extra: list) -> pd.DataFrame:
    """Candidates (path, view, width, height) of one study."""
    paths, views, widths, heights = zip(*rows, strict=True)
    return pd.DataFrame(
        {"study_key": "s", "path": paths, "view": views, "width": widths, "height": heights} | extra
    )


def test_frontal_rank_pa_then_pixels_then_path() -> None:
    images = frame(
        [
            ("d.dcm", "AP", 500, 500),
            ("c.dcm", "PA", 10, 20),
            ("b.dcm", "PA", 20, 10),  # as many pixels as c: the path decides
            ("a.dcm", "AP", 500, 500),
        ]
    )
    ranked = rank_images(images, frontal=True)
    assert list(ranked["path"]) == ["b.dcm", "c.dcm", "a.dcm", "d.dcm"]
    assert list(ranked[RANK]) == [0, 1, 2, 3]
    assert list(ranked.columns) == [*images.columns, RANK]
    assert images.loc[best_index(images.drop(columns="study_key"), frontal=True), "path"] == "b.dcm"


def test_lateral_rank_pixels_then_path_and_groups() -> None:
    images = pd.concat(
        [
            frame([("z.dcm", "LATERAL", 10, 10), ("y.dcm", "LATERAL", 30, 30)]),
            frame([("b.dcm", "LATERAL", 8, 8), ("a.dcm", "LATERAL", 8, 8)]).assign(study_key="r"),
        ],
        ignore_index=True,
    )
    ranked = rank_images(images, frontal=False)
    assert list(ranked["study_key"]) == ["r", "r", "s", "s"]
    assert list(ranked["path"]) == ["a.dcm", "b.dcm", "y.dcm", "z.dcm"]
    assert list(ranked[RANK]) == [0, 1, 0, 1]
    assert list(ranked.index) == [3, 2, 1, 0]  # the input's labels are kept


def test_image_id_orders_only_rows_of_one_path() -> None:
    """A salted image id never beats the path; it only orders one file listed twice."""
    images = frame(
        [("b.dcm", "PA", 9, 9), ("a.dcm", "PA", 9, 9), ("a.dcm", "PA", 9, 9)],
        image_id=["id0", "id9", "id5"],
    )
    ranked = rank_images(images, frontal=True)
    assert list(ranked["image_id"]) == ["id5", "id9", "id0"]
    shuffled = images.iloc[[2, 0, 1]]
    assert list(rank_images(shuffled, frontal=True)["image_id"]) == ["id5", "id9", "id0"]


def test_best_index_of_no_candidate() -> None:
    with pytest.raises(ValueError, match="no candidate"):
        best_index(frame([("a", "PA", 1, 1)]).iloc[:0], frontal=True)


# --- pair and predict pick the same image ------------------------------------------------------

# (file, view, width, height, image_id, SeriesNumber): image ids and series numbers run against
# the path order, so that neither can be what breaks a tie.
STUDIES: dict[str, list[tuple[str, str, int, int, str, int]]] = {
    "pa_beats_a_larger_ap": [
        ("a_ap", "AP", 32, 32, "id1", 1),
        ("b_pa", "PA", 16, 16, "id2", 2),
        ("c_ll", "LL", 16, 16, "id3", 3),
    ],
    "most_pixels": [
        ("a_pa", "PA", 16, 16, "id1", 1),
        ("b_pa", "PA", 24, 16, "id2", 2),
        ("c_ll", "LL", 16, 16, "id3", 3),
        ("d_ll", "LL", 16, 20, "id4", 4),
    ],
    "ties_go_to_the_first_path": [
        ("b_pa", "PA", 16, 16, "id1", 1),
        ("a_pa", "PA", 16, 16, "id9", 9),
        ("d_ll", "LL", 20, 16, "id2", 1),
        ("c_ll", "RL", 16, 20, "id8", 8),
    ],
    "ap_only_tie": [
        ("y/ap", "AP", 16, 16, "id1", 1),
        ("x/ap", "AP", 16, 16, "id2", 2),
    ],
}
VIEW_OF = {"PA": "PA", "AP": "AP", "LL": "LATERAL", "RL": "LATERAL"}


def _write_study(folder: Path, images: list[tuple[str, str, int, int, str, int]], n: int) -> None:
    for i, (name, view, width, height, _, series) in enumerate(images):
        ds = make_ds(
            f"1.2.3.{n}.{i}",
            view_position=view,
            study=f"1.2.9.{n}",
            pixel_data=False,
            SeriesNumber=series,
            InstanceNumber=1,
        )
        ds.Rows, ds.Columns = height, width
        ds.PixelData = pixels(i, height, width).tobytes()
        write(ds, folder / f"{name}.dcm")


def _manifest(study: str, images: list[tuple[str, str, int, int, str, int]]) -> pd.DataFrame:
    rows = [
        {
            "image_id": image_id,
            "patient_key": "p",
            "study_key": study,
            "source": "dicom",
            "path": f"{study}/{name}.dcm",
            "view": VIEW_OF[view],
            "view_raw": view,
            "width": width,
            "height": height,
            "bits": 12,
            "photometric": "MONOCHROME2",
        }
        | dict.fromkeys(FINDINGS, np.nan)
        for name, view, width, height, image_id, _ in images
    ]
    return conform_manifest(pd.DataFrame(rows))


@pytest.mark.parametrize("study", list(STUDIES))
def test_pair_and_predict_choose_the_same_images(tmp_path: Path, study: str) -> None:
    images = STUDIES[study]
    _write_study(tmp_path / study, images, n=list(STUDIES).index(study))
    chosen = find_study_views(tmp_path / study)

    studies, _, _ = pair_studies(_manifest(study, images), PairParams(), seed=0)
    (row,) = studies.itertuples()
    assert row.frontal_path == chosen.frontal.relative_to(tmp_path).as_posix()
    assert row.frontal_view == chosen.frontal_view
    if chosen.lateral is None:
        assert not row.has_lateral
    else:
        assert row.lateral_path == chosen.lateral.relative_to(tmp_path).as_posix()
    # and the rule is the documented one
    expected = {
        "pa_beats_a_larger_ap": ("b_pa", "c_ll"),
        "most_pixels": ("b_pa", "d_ll"),
        "ties_go_to_the_first_path": ("a_pa", "c_ll"),
        "ap_only_tie": ("x/ap", None),
    }[study]
    lateral = chosen.lateral.relative_to(tmp_path / study).as_posix() if chosen.lateral else None
    assert (chosen.frontal.relative_to(tmp_path / study).as_posix(), lateral) == (
        f"{expected[0]}.dcm",
        f"{expected[1]}.dcm" if expected[1] else None,
    )
