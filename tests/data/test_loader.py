"""Worker batches through a ring of shared-memory buffers (issue #13, section 2): ``make_loader``
gives exactly the batches of the plain DataLoader path (same samples, order, keys, dtypes and
bytes) under DDP rank splits, the seed-derived samplers, persistent workers and sharded folders;
a slot is never reused while a received batch lives; what the ring does not cover stays on
torch's standard hand-over, explicitly."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ssl_rs.data.converters.parallel import ConversionPlan, write_shards
from ssl_rs.data.dataset import GeoDataset
from ssl_rs.data.loader import BatchRing, RingGeoDataset, _alive, make_loader, ring_refusal
from ssl_rs.data.neighbors import NeighborPairs
from ssl_rs.data.samplers import GeoNeighborBatchSampler, SeededRandomSampler
from ssl_rs.data.synth import synthesize
from ssl_rs.data.temporal import TemporalPositives

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert type(a) is dict and list(a) == list(b)
        for key in a:
            if torch.is_tensor(b[key]):
                assert torch.is_tensor(a[key]) and a[key].dtype == b[key].dtype, key
                assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


def received(loader):
    """The loader's batches as a consumer that lets each go sees them (copied, so none is held)."""
    return [{k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()} for b in loader]


def plain(ds, **kwargs):
    """The reference: the standard DataLoader in process."""
    return list(DataLoader(ds, num_workers=0, **kwargs))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("ring") / "world.h5"
    synthesize(path, n=120, size=16, seed=3, num_classes=4, dates=2, tiles=2, progress=False)
    return path


def _shard_items(item, context):
    rng = np.random.default_rng(item)
    yield (rng.integers(0, 10_000, (4, 8, 8), dtype=np.uint16),
           dict(lat=float(rng.uniform(-60, 60)), lon=float(rng.uniform(-180, 180)), label=int(item % 3)))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    plan = ConversionPlan(name="ring shards", items=list(range(70)), read=_shard_items,
                          writer=dict(bands=["B02", "B03", "B04", "B08"], size=(8, 8), gsd=10.0, source="test",
                                      class_names=["a", "b", "c"]))
    return write_shards(plan, tmp_path_factory.mktemp("ring") / "shards", shard_size=16, workers=1, progress=False)


@pytest.mark.parametrize("workers", [1, 2])
def test_same_batches_as_the_plain_loader(world, workers):
    ds = GeoDataset(world, split="train")
    loader = make_loader(ds, batch_size=16, num_workers=workers, sampler=SeededRandomSampler(len(ds), seed=5))
    assert isinstance(loader.dataset, RingGeoDataset) and isinstance(loader, DataLoader)
    expected = plain(ds, batch_size=16, sampler=SeededRandomSampler(len(ds), seed=5))
    assert_same_batches(received(loader), expected)  # last batch smaller: drop_last is off
    gc.collect()
    assert loader.dataset.ring.busy() == 0 and loader.dataset.ring.overflows == 0


@pytest.mark.parametrize("rank", [0, 1])
def test_ddp_rank_splits_and_epochs_with_persistent_workers(world, rank):
    ds = GeoDataset(world)
    ours = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=7)
    ref = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=7)
    loader = make_loader(ds, batch_size=8, drop_last=True, sampler=ours, num_workers=2, persistent_workers=True)
    for epoch in range(2):
        ours.set_epoch(epoch)
        ref.set_epoch(epoch)
        assert_same_batches(received(loader), plain(ds, batch_size=8, drop_last=True, sampler=ref))


@pytest.mark.parametrize("rank", [0, 1])
def test_geo_neighbor_batch_sampler_under_ddp(world, rank):
    ds = GeoDataset(world)

    def sampler():
        return GeoNeighborBatchSampler(ds.lat, ds.lon, 12, neighbor_km=500.0, seed=2, num_replicas=2, rank=rank)

    loader = make_loader(ds, batch_sampler=sampler(), num_workers=2)
    assert isinstance(loader.dataset, RingGeoDataset)
    assert_same_batches(received(loader), plain(ds, batch_sampler=sampler()))


def test_sharded_folder_and_band_subsets(shards, world):
    ds = GeoDataset(shards)
    order = SeededRandomSampler(len(ds), seed=1)
    loader = make_loader(ds, batch_size=10, sampler=order, num_workers=2)
    assert isinstance(loader.dataset, RingGeoDataset)
    assert_same_batches(received(loader), plain(ds, batch_size=10, sampler=order))
    subset = GeoDataset(world, bands=["B04", "B02", "B03"])
    loader = make_loader(subset, batch_size=16, num_workers=1)
    assert_same_batches(received(loader), plain(subset, batch_size=16))


def test_a_slot_is_not_reused_while_a_batch_lives(world):
    """The consumer keeps every batch (more than the ring's slots) and views of them: all stay
    intact; batches beyond the ring come the standard way; every slot is free once all are gone."""
    ds = GeoDataset(world)
    loader = make_loader(ds, batch_size=8, num_workers=2, prefetch_factor=1)
    ring = loader.dataset.ring
    assert ring.slots == 2 * 1 + 3
    kept, views = [], []
    for b in loader:
        kept.append(b)
        views.append(b["image"][1:3, :2])  # a view outlives nothing: it holds the slot too
    assert ring.overflows > 0
    expected = plain(ds, batch_size=8)
    assert_same_batches(kept, expected)
    images = [b["image"] for b in kept]
    del kept, b
    gc.collect()
    assert ring.busy() > 0  # the images and views still hold their slots
    for view, image, ref in zip(views, images, expected):
        assert torch.equal(view, ref["image"][1:3, :2]) and torch.equal(image, ref["image"])
    del views, images, view, image
    gc.collect()
    assert ring.busy() == 0


def test_slots_of_a_dropped_iterator_are_taken_back(world):
    ds = GeoDataset(world)
    loader = make_loader(ds, batch_size=8, num_workers=2, prefetch_factor=2)
    ring = loader.dataset.ring
    it = iter(loader)
    first = next(it)
    del it  # workers stop; the batches they had sent are never received
    gc.collect()
    expected = plain(ds, batch_size=8)
    assert_same_batches([first], expected[:1])
    assert_same_batches(received(loader), expected)
    assert ring.overflows == 0  # the dead workers' slots were claimed again, not overflowed
    del first
    gc.collect()
    # what is still marked busy belongs to the dropped iterator's dead workers, free to take back
    held = [int(o) for o in ring.owner.tolist() if o]
    assert all(o > 0 and not _alive(o) for o in held)


def test_spawned_workers(world):
    ds = GeoDataset(world, split="train")
    loader = make_loader(ds, batch_size=16, num_workers=1, multiprocessing_context="spawn")
    assert isinstance(loader.dataset, RingGeoDataset)
    assert_same_batches(received(loader), plain(ds, batch_size=16))
    assert loader.dataset.ring.overflows == 0


def test_what_stays_on_the_standard_hand_over(world):
    ds = GeoDataset(world, split="train")
    assert make_loader(ds, batch_size=8, num_workers=0).dataset is ds
    assert ring_refusal(ds, dict(batch_size=8)) == "no worker processes"
    pairs = [TemporalPositives(ds, seed=1), NeighborPairs(GeoDataset(world), seed=1)]
    for wrapper in pairs:
        assert "not a plain GeoDataset" in ring_refusal(wrapper, dict(num_workers=2, batch_size=8))
        loader = make_loader(wrapper, batch_size=8, num_workers=2)
        assert loader.dataset is wrapper
        assert_same_batches(list(loader), plain(wrapper, batch_size=8))
    with_transforms = GeoDataset(world, split="train", transforms=lambda item: item)
    assert "transforms" in ring_refusal(with_transforms, dict(num_workers=2, batch_size=8))
    assert ring_refusal(ds, dict(num_workers=2, batch_size=8, collate_fn=lambda rows: rows)) == "a custom collate_fn"
    assert make_loader(ds, ring=False, batch_size=8, num_workers=2).dataset is ds


def test_ring_arguments_are_checked():
    with pytest.raises(Exception, match="at least one slot"):
        BatchRing(0, 10)


def test_a_ring_that_does_not_fit_in_shared_memory_is_one_line_naming_the_option(monkeypatch):
    from ssl_rs.errors import ConfigError

    def no_room(self):
        raise RuntimeError("unable to write to file </torch_1_2>: No space left on device (28)")

    monkeypatch.setattr(torch.Tensor, "share_memory_", no_room)
    with pytest.raises(ConfigError, match=r"data.num_workers: the batch ring needs 3 x 0.0 MB of shared memory, "
                                          r"which cannot be allocated \(unable to write"):
        BatchRing(3, 8)
