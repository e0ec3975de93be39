"""Batched reads (issue #13, section 2): ``GeoDataset.__getitems__`` gives a DataLoader exactly
what item-by-item reads and the default collate give, reading each file row once and in
increasing order; the pair wrappers keep working, batch-wise; ``transforms=`` and
``sample_keys="torchgeo"`` (#15)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from ssl_rs.data.dataset import GeoDataset
from ssl_rs.data.neighbors import NeighborPairs
from ssl_rs.data.synth import synthesize
from ssl_rs.data.temporal import TemporalPositives

ORDER = [17, 3, 3, 60, 1, 7, 59, 2, 2, 2]  # unsorted, with repeats


def assert_batches_equal(a, b):
    assert list(a) == list(b)
    for key in a:
        if torch.is_tensor(a[key]):
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def dated_world(tmp_path_factory):
    path = tmp_path_factory.mktemp("dated") / "dated.h5"
    synthesize(path, n=96, size=8, seed=2, num_classes=3, dates=2, tiles=2, progress=False)
    return path


@pytest.mark.parametrize("make", [
    lambda p: GeoDataset(p),
    lambda p: GeoDataset(p, split="train"),
    lambda p: GeoDataset(p, bands=["B04", "B02", "B03"]),
    lambda p: TemporalPositives(GeoDataset(p, split="train"), seed=1),
    lambda p: NeighborPairs(GeoDataset(p), seed=1),
], ids=["all", "train", "bands", "temporal", "neighbors"])
def test_getitems_is_the_collated_items(dated_world, make):
    ds = make(dated_world)
    batch = default_collate(ds.__getitems__(ORDER))
    assert_batches_equal(batch, default_collate([ds[i] for i in ORDER]))
    assert batch["image"].dtype == torch.uint16 and batch["lat"].dtype == torch.float64


def test_rows_are_read_once_in_increasing_order(dated_world, monkeypatch):
    ds = GeoDataset(dated_world)
    calls = []
    original = GeoDataset._read_part

    def spy(self, part, local, out, targets):
        calls.append(local.copy())
        return original(self, part, local, out, targets)

    monkeypatch.setattr(GeoDataset, "_read_part", spy)
    ds.__getitems__(ORDER)
    assert len(calls) == 1  # one pass over the one file
    assert calls[0].tolist() == sorted(set(ORDER))


def test_the_default_collate_returns_the_batch_without_copying(dated_world):
    ds = GeoDataset(dated_world)
    rows = ds.__getitems__(ORDER)
    batch = default_collate(rows)
    assert batch["image"].data_ptr() == rows[0].batch["image"].data_ptr()
    # a subset or another order of the rows is collated key by key, correctly
    assert_batches_equal(default_collate(rows[::-1]), default_collate([ds[i] for i in ORDER[::-1]]))


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batches_match_item_reads(dated_world, workers):
    ds = GeoDataset(dated_world, split="train")
    sampler = torch.utils.data.SequentialSampler(ds)
    loader = DataLoader(ds, batch_size=16, sampler=sampler, num_workers=workers)
    seen = 0
    for k, batch in enumerate(loader):
        positions = list(range(16 * k, min(16 * (k + 1), len(ds))))
        assert_batches_equal(batch, default_collate([ds[i] for i in positions]))
        seen += len(positions)
    assert seen == len(ds)


def test_pairs_read_items_and_partners_in_one_pass(dated_world, monkeypatch):
    pairs = TemporalPositives(GeoDataset(dated_world), seed=0)
    calls = []
    original = GeoDataset._read_part

    def spy(self, part, local, out, targets):
        calls.append(len(local))
        return original(self, part, local, out, targets)

    monkeypatch.setattr(GeoDataset, "_read_part", spy)
    batch = default_collate(pairs.__getitems__([0, 1, 2, 3]))
    partners = [pairs.partner_position(p) for p in range(4)]
    assert len(calls) == 1 and calls[0] == len({0, 1, 2, 3, *partners})
    assert batch["has_temporal_positive"].dtype == torch.bool


def test_transforms_and_torchgeo_keys(tmp_path):
    from ssl_rs.data.layout import write_dataset

    path = write_dataset(tmp_path / "ml.h5", [np.full((2, 4, 4), i, np.uint16) for i in range(6)],
                         lat=np.zeros(6), lon=np.arange(6.0), labels=[[0], [1], [0, 1], [], [1], [0]],
                         bands=["B02", "B03"], size=(4, 4), gsd=10.0, source="t", class_names=["a", "b"],
                         multi_label=True)
    ds = GeoDataset(path, sample_keys="torchgeo")
    assert "label" in ds.keys and "labels" not in ds.keys and ds.target_key == "label"
    assert torch.equal(ds[2]["label"], torch.tensor([1.0, 1.0]))
    assert_batches_equal(default_collate(ds.__getitems__([4, 2])), default_collate([ds[4], ds[2]]))

    def to_float(item):
        return {**item, "image": item["image"].float() / 10}

    ds = GeoDataset(path, transforms=to_float)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].dtype == torch.float32 and torch.equal(batch["image"][:, 0, 0, 0], torch.tensor([0, .1, .2]))
    with pytest.raises(Exception, match="sample_keys: unknown convention 'keras'"):
        GeoDataset(path, sample_keys="keras")
