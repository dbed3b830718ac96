"""data: shard format round trip, ShardDataset samples and batches, make_loader."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.data import (
    INDEX_FILE,
    META_COLUMNS,
    ShardDataset,
    make_loader,
    read_index,
    shard_name,
    write_index,
    write_shard,
    write_views,
)
from pipelines.labels import FINDINGS

S = 8


def make_shards(root: Path, counts: dict[str, list[int]], size: int = S, start: int = 0) -> None:
    """Shards whose pixels encode (study number, view) so reads can be checked exactly."""
    root.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict]] = {}
    k = start
    for split, sizes in counts.items():
        splits[split] = []
        for n_shard, n in enumerate(sizes):
            images = np.zeros((n, 2, size, size), dtype=np.uint8)
            rows = []
            for i in range(n):
                images[i, 0] = k % 251
                images[i, 1] = (k + 100) % 251 if k % 3 else 0
                labels = {f: np.nan for f in FINDINGS} | {"Edema": float(k % 2)}
                rows.append(
                    {"study_key": f"s{k}", "patient_key": f"p{k}", "has_lateral": k % 3 != 0}
                    | labels
                )
                k += 1
            meta = pd.DataFrame(rows)
            splits[split].append(write_shard(root, shard_name(split, n_shard), images, meta))
    write_index(root, size, splits)


@pytest.fixture
def shards(tmp_path) -> Path:
    make_shards(tmp_path / "prep", {"train": [4, 3], "val": [2]})
    return tmp_path / "prep"


def test_samples_have_right_dtypes_and_values(shards):
    ds = ShardDataset(shards, "train")
    assert len(ds) == 7 and ds.size == S
    for i in range(7):
        x = ds[i]
        assert x["frontal"].dtype == torch.uint8 and x["frontal"].shape == (1, S, S)
        assert x["lateral"].dtype == torch.uint8 and x["lateral"].shape == (1, S, S)
        assert x["has_lateral"].dtype == torch.bool and bool(x["has_lateral"]) == (i % 3 != 0)
        assert x["labels"].dtype == torch.float32 and x["labels"].shape == (len(FINDINGS),)
        assert int(x["index"]) == i
        assert (x["frontal"] == i).all()
        assert (x["lateral"] == ((i + 100) if i % 3 else 0)).all()
        labels = x["labels"].numpy()
        assert labels[FINDINGS.index("Edema")] == i % 2
        assert np.isnan(labels[FINDINGS.index("Mass")])  # NaN kept
    assert list(ds.meta.columns[: len(META_COLUMNS)]) == list(META_COLUMNS)


def test_get_batch_matches_samples(shards):
    ds = ShardDataset(shards, ["train", "val"])
    idx = [8, 0, 5, 4, 5, 1, 3]  # across shards, unsorted, repeated, a contiguous run
    batch = ds.get_batch(idx)
    assert batch["frontal"].shape == (7, 1, S, S) and batch["frontal"].is_contiguous()
    for j, i in enumerate(idx):
        one = ds[i]
        for key in ("frontal", "lateral", "has_lateral", "index"):
            assert torch.equal(batch[key][j], one[key]), key
        torch.testing.assert_close(batch["labels"][j], one["labels"], equal_nan=True)


def test_several_roots_and_size_mismatch(shards, tmp_path):
    make_shards(tmp_path / "aug", {"train": [2]}, start=50)
    ds = ShardDataset([shards, tmp_path / "aug"], "train")
    assert len(ds) == 9 and list(ds.meta["study_key"][-2:]) == ["s50", "s51"]
    assert (ds[8]["frontal"] == 51).all()
    make_shards(tmp_path / "big", {"train": [1]}, size=16)
    with pytest.raises(ValueError, match="image size"):
        ShardDataset([shards, tmp_path / "big"], "train")


def test_missing_split_and_index(shards, tmp_path):
    assert len(ShardDataset(shards, "test")) == 0
    with pytest.raises(FileNotFoundError, match="run the preprocess stage"):
        ShardDataset(tmp_path / "nothing", "train")
    index = read_index(shards)
    assert index["findings"] == list(FINDINGS)


def test_write_shard_validates():
    with pytest.raises(ValueError, match="uint8"):
        write_shard("/tmp", "x", np.zeros((1, 2, 4, 4), dtype=np.float32), pd.DataFrame())
    with pytest.raises(ValueError, match="meta rows"):
        write_shard("/tmp", "x", np.zeros((2, 2, 4, 4), dtype=np.uint8), pd.DataFrame({"a": [1]}))


def test_pickles_without_pixel_data(shards):
    ds = ShardDataset(shards, "train")
    _ = ds[0]  # maps open
    blob = pickle.dumps(ds)
    assert len(blob) < 50_000  # maps are not pickled
    clone = pickle.loads(blob)
    assert torch.equal(clone[3]["frontal"], ds[3]["frontal"])


def test_make_loader_batches_and_seeded_shuffle(shards):
    ds = ShardDataset(shards, "train")
    batches = list(make_loader(ds, batch_size=3))
    assert [len(b["index"]) for b in batches] == [3, 3, 1]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(7))

    def order(seed: int, epochs: int = 2) -> list[list[int]]:
        loader = make_loader(ds, batch_size=2, shuffle=True, seed=seed, drop_last=True)
        return [torch.cat([b["index"] for b in loader]).tolist() for _ in range(epochs)]

    a, b = order(1), order(1)
    assert a == b and a[0] != a[1]  # reproducible, reshuffled each epoch
    assert order(2) != a
    assert all(len(e) == 6 and len(set(e)) == 6 for e in a)


def test_make_loader_with_sampler_and_workers(shards):
    ds = ShardDataset(shards, "train")
    sampler = [6, 6, 0]
    batch = next(iter(make_loader(ds, batch_size=3, sampler=sampler, num_workers=1)))
    assert batch["index"].tolist() == [6, 6, 0]
    assert (batch["frontal"][0] == 6).all()


def test_index_may_name_shards_in_subfolders(tmp_path):
    """A sharded preprocess merge: the index names shards inside part folders, in its order."""
    make_shards(tmp_path / "prep" / "parts" / "0-of-2", {"train": [3]})
    make_shards(tmp_path / "prep" / "parts" / "1-of-2", {"train": [2], "val": [2]}, start=3)
    make_shards(tmp_path / "flat", {"train": [4, 1], "val": [2]})
    splits = {
        "train": [
            {"name": "parts/0-of-2/train-00000", "n": 3},
            {"name": "parts/1-of-2/train-00000", "n": 2},
        ],
        "val": [{"name": "parts/1-of-2/val-00000", "n": 2}],
    }
    write_index(tmp_path / "prep", S, splits)
    for split in ("train", "val"):
        a, b = ShardDataset(tmp_path / "prep", split), ShardDataset(tmp_path / "flat", split)
        assert list(a.meta["study_key"]) == list(b.meta["study_key"])
        for key, value in a.get_batch(range(len(a))).items():
            np.testing.assert_array_equal(value.numpy(), b.get_batch(range(len(b)))[key].numpy())

    write_index(tmp_path / "prep", S, {"train": [{"name": "../flat/train-00000", "n": 4}]})
    with pytest.raises(ValueError, match="leaves the folder"):
        read_index(tmp_path / "prep")


def test_laterals_are_stored_only_where_a_study_has_one(shards):
    """Format 2: frontals then the present laterals; no bytes for a missing lateral."""
    index = read_index(shards)
    assert index["format"] == 2
    assert [(e["n"], e["laterals"]) for e in index["splits"]["train"]] == [(4, 2), (3, 2)]
    # studies 0..3: s1 and s2 have a lateral (k % 3 != 0); the file is N + L images, no more
    arr = np.load(shards / "train-00000.images.npy")
    assert arr.shape == (4 + 2, S, S)
    assert [int(a[0, 0]) for a in arr] == [0, 1, 2, 3, 101, 102]
    size = (shards / "train-00000.images.npy").stat().st_size
    assert size == 128 + (4 + 2) * S * S  # the .npy header, then pixels: 2 of 8 views saved
    # the bytes are np.save's of the concatenation (a deterministic, ordinary .npy file)
    ref = shards.parent / "ref.npy"
    np.save(ref, arr)
    assert ref.read_bytes() == (shards / "train-00000.images.npy").read_bytes()


def test_a_pair_without_a_lateral_reads_back_zeros_whatever_was_passed(tmp_path):
    images = np.full((3, 2, S, S), 7, dtype=np.uint8)  # view 1 of study 1 is not a lateral
    meta = pd.DataFrame(
        {"study_key": ["a", "b", "c"], "patient_key": ["p", "p", "q"]}
        | {"has_lateral": [True, False, True]}
        | {f: [np.nan] * 3 for f in FINDINGS}
    )
    entry = write_shard(tmp_path, shard_name("test", 0), images, meta)
    write_index(tmp_path, S, {"test": [entry]})
    ds = ShardDataset(tmp_path, "test")
    batch = ds.get_batch([1, 2, 0, 1])
    assert batch["has_lateral"].tolist() == [False, True, True, False]
    assert [int(x.max()) for x in batch["lateral"]] == [0, 7, 7, 0]
    assert (batch["frontal"] == 7).all()
    assert int(ds[1]["lateral"].max()) == 0 and not bool(ds[1]["has_lateral"])


def test_format_1_folders_read_the_same_samples(shards, tmp_path):
    """A format-1 folder ((N, 2, S, S), zeros for a missing lateral) serves identical batches."""
    old = tmp_path / "old"
    old.mkdir()
    index = read_index(shards)
    ds = ShardDataset(shards, ["train", "val"])
    for entries in index["splits"].values():
        for e in entries:
            rows = ds.meta.index[
                ds.meta["study_key"].isin(
                    pd.read_parquet(shards / f"{e['name']}.meta.parquet")["study_key"]
                )
            ]
            batch = ds.get_batch(rows)
            pairs = np.concatenate([batch["frontal"].numpy(), batch["lateral"].numpy()], axis=1)
            np.save(old / f"{e['name']}.images.npy", pairs)
            (old / f"{e['name']}.meta.parquet").write_bytes(
                (shards / f"{e['name']}.meta.parquet").read_bytes()
            )
    index["format"] = 1
    for entries in index["splits"].values():
        for e in entries:
            del e["laterals"]
    (old / INDEX_FILE).write_text(json.dumps(index))
    a, b = ShardDataset(old, ["train", "val"]), ShardDataset(shards, ["train", "val"])
    idx = [8, 0, 5, 4, 5, 1, 3]
    for key, value in a.get_batch(idx).items():
        np.testing.assert_array_equal(value.numpy(), b.get_batch(idx)[key].numpy())
    for i in range(len(a)):
        assert torch.equal(a[i]["lateral"], b[i]["lateral"])
    both = ShardDataset([old, shards], "train")  # one root of each format
    assert len(both) == 14 and torch.equal(both[7]["frontal"], both[0]["frontal"])


def test_other_formats_and_mismatched_shards_are_refused(shards):
    index = json.loads((shards / INDEX_FILE).read_text())
    (shards / INDEX_FILE).write_text(json.dumps(index | {"format": 3}))
    with pytest.raises(ValueError, match="shard format 3.*re-run the preprocess stage"):
        ShardDataset(shards, "train")
    (shards / INDEX_FILE).write_text(json.dumps(index))
    np.save(shards / "train-00001.images.npy", np.zeros((3, S, S), np.uint8))  # laterals lost
    with pytest.raises(ValueError, match="train-00001.images.npy: shape .* 2 laterals"):
        ShardDataset(shards, "train")


def test_write_views_validates(tmp_path):
    meta = shard_meta_of(2, [True, False])
    frontal = np.zeros((2, S, S), np.uint8)
    with pytest.raises(ValueError, match="2 laterals for 1 studies"):
        write_views(tmp_path, "x", frontal, np.zeros((2, S, S), np.uint8), meta)
    with pytest.raises(ValueError, match="lateral must be uint8"):
        write_views(tmp_path, "x", frontal, np.zeros((1, S + 1, S), np.uint8), meta)
    assert write_views(tmp_path, "x", frontal, np.zeros((1, S, S), np.uint8), meta) == {
        "name": "x",
        "n": 2,
        "laterals": 1,
    }


def shard_meta_of(n: int, has_lateral: list[bool]) -> pd.DataFrame:
    return pd.DataFrame(
        {"study_key": [f"s{i}" for i in range(n)], "patient_key": [f"p{i}" for i in range(n)]}
        | {"has_lateral": has_lateral}
        | {f: [np.nan] * n for f in FINDINGS}
    )
