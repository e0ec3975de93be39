"""The geographic batch sampler and the temporal-positives wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ssl_rs.data.dataset import GeoDataset
from ssl_rs.data.temporal import TemporalPositives
from ssl_rs.errors import ConfigError, DataError
from ssl_rs.data.samplers import GeoNeighborBatchSampler


def haversine_km(lat1, lon1, lat2, lon2):
    la1, lo1, la2, lo2 = map(np.radians, (lat1, lon1, lat2, lon2))
    a = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


@pytest.fixture(scope="module")
def dated_world(tmp_path_factory):
    """40 places x 3 dates (``group``, ``time``), random split."""
    from ssl_rs.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("dated") / "dated.h5", n=120, size=8, seed=3, dates=3,
                      num_classes=4, progress=False)


# -- GeoNeighborBatchSampler ---------------------------------------------------------------

def _sampler(ds, **kwargs):
    kwargs.setdefault("batch_size", 16)
    return GeoNeighborBatchSampler(ds.lat, ds.lon, **kwargs)


def test_batches_have_the_right_size_and_length(tiny_world):
    ds = GeoDataset(tiny_world)  # 120 samples
    for npa, drop_last in ((1, True), (1, False), (3, True), (3, False)):
        sampler = _sampler(ds, batch_size=14, neighbors_per_anchor=npa, drop_last=drop_last)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        anchors = 14 // (1 + npa)
        assert len(sampler) == (120 // anchors if drop_last else -(-120 // anchors))
        full = batches if drop_last or 120 % anchors == 0 else batches[:-1]
        assert all(len(b) == 14 for b in full)
        assert all(len(set(b)) == len(b) for b in batches)  # no sample twice in a batch
        assert all(0 <= i < len(ds) for b in batches for i in b)


@pytest.mark.parametrize("drop_last", [True, False])
def test_ddp_ranks_take_disjoint_alternate_batches_of_one_sequence(tiny_world, drop_last):
    ds = GeoDataset(tiny_world)  # 120 samples, 7 anchors per batch: 17 full batches + 1 partial
    single = list(_sampler(ds, batch_size=14, drop_last=drop_last, seed=5))
    ranks = [_sampler(ds, batch_size=14, drop_last=drop_last, seed=5, num_replicas=3, rank=r) for r in range(3)]
    for r, sampler in enumerate(ranks):
        assert len(sampler) == len(single) // 3  # equal counts, or DDP would hang on the last step
        assert list(sampler) == single[r::3][: len(sampler)]
    order, a = list(ranks[0].sampler), ranks[0].anchors_per_batch
    seen = []
    for r, sampler in enumerate(ranks):  # batch k of the sequence carries anchors order[k a:(k + 1) a]
        for j, batch in enumerate(sampler):
            anchors = order[(r + 3 * j) * a:(r + 3 * j + 1) * a]
            assert set(anchors) <= set(batch)
            seen += anchors
    assert len(seen) == len(set(seen))  # no anchor on two processes
    with pytest.raises(ConfigError, match="rank < num_replicas"):
        _sampler(ds, num_replicas=2, rank=2)


def test_monitoring_loaders_shard_like_a_distributed_sampler(monkeypatch):
    from ssl_rs.data.samplers import RankShardSampler

    assert list(RankShardSampler(5)) == [0, 1, 2, 3, 4]  # no process group: everything
    shares = []
    for rank in range(2):
        monkeypatch.setattr(RankShardSampler, "shard", staticmethod(lambda rank=rank: (2, rank)))
        sampler = RankShardSampler(5)
        shares.append(list(sampler))
        assert len(sampler) == 3
    assert shares == [[0, 2, 4], [1, 3, 0]]  # padded to equal shares, as DistributedSampler(shuffle=False)


def test_anchors_bring_neighbours_within_radius_and_cover_the_epoch(tiny_world):
    ds = GeoDataset(tiny_world)
    sampler = _sampler(ds, batch_size=16, neighbor_km=15.0, neighbors_per_anchor=1)
    assert 0 < sampler.neighbor_fraction < 1
    order = list(sampler.sampler)
    batches = list(sampler)
    a = sampler.anchors_per_batch
    for k, batch in enumerate(batches):
        anchors = order[k * a:(k + 1) * a]
        assert set(anchors) <= set(batch)
        others = np.array(batch)
        for anchor in anchors:
            d = haversine_km(ds.lat[anchor], ds.lon[anchor], ds.lat[others], ds.lon[others])
            near = set(others[(d <= 15.0) & (others != anchor)].tolist())
            listed = set(sampler.neighbors(anchor).tolist())
            assert near <= listed  # the neighbour lists are complete ...
            if listed:
                assert near  # ... and an anchor with neighbours has one in its batch
    for anchor in range(len(ds)):
        d = haversine_km(ds.lat[anchor], ds.lon[anchor], ds.lat, ds.lon)
        assert np.all(d[sampler.neighbors(anchor)] <= 15.0)  # ... and correct
    # every sample is an anchor exactly once (drop_last: 120 is a multiple of 8 anchors)
    assert sorted(order[: len(batches) * a]) == list(range(len(ds)))
    assert set().union(*map(set, batches)) == set(range(len(ds)))


def test_deterministic_per_seed_and_epoch(tiny_world):
    ds = GeoDataset(tiny_world)
    s1, s2 = _sampler(ds, seed=5), _sampler(ds, seed=5)
    assert list(s1) == list(s2)
    assert list(s1) == list(s1)  # re-iterating the same epoch repeats it
    epoch0 = list(s1)
    s1.set_epoch(1)
    assert list(s1) != epoch0
    s2.set_epoch(1)
    assert list(s1) == list(s2)
    assert list(_sampler(ds, seed=6)) != epoch0


def test_lightning_sets_the_epoch_through_the_loader(tiny_world):
    from lightning.fabric.utilities.data import _set_sampler_epoch

    ds = GeoDataset(tiny_world)
    sampler = _sampler(ds)
    loader = DataLoader(ds, batch_sampler=sampler)
    _set_sampler_epoch(loader, 3)
    assert sampler.epoch == 3


def test_works_as_dataloader_batch_sampler(tiny_world):
    ds = GeoDataset(tiny_world)
    sampler = _sampler(ds, batch_size=16)
    batches = list(DataLoader(ds, batch_sampler=sampler, num_workers=0))
    assert len(batches) == len(sampler)
    assert all(b["image"].shape[0] == 16 for b in batches)
    torch.testing.assert_close(batches[0]["index"], torch.as_tensor(ds.indices[next(iter(sampler))]))


def test_sampler_validation(tiny_world):
    ds = GeoDataset(tiny_world)
    with pytest.raises(ConfigError, match="fill one batch"):
        _sampler(ds, batch_size=500)
    with pytest.raises(ConfigError):
        _sampler(ds, batch_size=2, neighbors_per_anchor=2)
    with pytest.raises(ConfigError):
        GeoNeighborBatchSampler(ds.lat, ds.lon[:-1], 8)


# -- TemporalPositives --------------------------------------------------------------------

def _file_meta(ds):
    import h5py

    with h5py.File(ds.path, "r") as f:
        return f["group"][:], f["time"][:]


def test_positives_are_other_dates_of_the_same_place(dated_world):
    ds = GeoDataset(dated_world, split="train")
    tp = TemporalPositives(ds, seed=0)
    group, time = _file_meta(ds)
    in_split = set(ds.indices.tolist())
    flagged = 0
    for i in range(len(tp)):
        item = tp[i]
        a, b = int(item["index"]), int(item["index_positive"])
        assert b in in_split  # never an image of another split
        if item["has_temporal_positive"]:
            assert group[a] == group[b] and time[a] != time[b]
            assert not torch.equal(item["image_positive"], item["image"])
            torch.testing.assert_close(item["image_positive"], ds[int(np.flatnonzero(ds.indices == b)[0])]["image"])
        else:
            flagged += 1
            assert b == a and torch.equal(item["image_positive"], item["image"])
            # no other date of this place in the split
            assert sum(group[j] == group[a] for j in ds.indices) == 1
    assert flagged < len(tp)
    assert tp.keys >= {"image_positive", "has_temporal_positive", "index_positive", "lat", "lon", "group"}


def test_single_date_places_are_flagged(dated_world):
    # file indices 0, 1 are two dates of place 0; 3 is the only date of place 1 in this subset
    ds = GeoDataset(dated_world, indices=[0, 1, 3])
    tp = TemporalPositives(ds)
    items = [tp[i] for i in range(3)]
    assert [bool(it["has_temporal_positive"]) for it in items] == [True, True, False]
    assert [int(it["index_positive"]) for it in items] == [1, 0, 3]
    assert torch.equal(items[2]["image_positive"], items[2]["image"])


def test_choice_depends_on_seed_and_epoch_only(dated_world):
    ds = GeoDataset(dated_world)  # every place has 3 dates: 2 candidates each
    a, b = TemporalPositives(ds, seed=1), TemporalPositives(ds, seed=1)
    picks = [a.positive_position(i) for i in range(len(ds))]
    assert picks == [b.positive_position(i) for i in range(len(ds))]
    a.set_epoch(1)
    assert picks != [a.positive_position(i) for i in range(len(ds))]
    assert picks != [TemporalPositives(ds, seed=2).positive_position(i) for i in range(len(ds))]


def test_error_without_group(tiny_world):
    with pytest.raises(DataError, match="group") as info:
        TemporalPositives(GeoDataset(tiny_world))
    assert str(tiny_world) in str(info.value)


def test_dataloader_with_persistent_workers_follows_set_epoch(dated_world):
    ds = GeoDataset(dated_world, split="train")
    tp = TemporalPositives(ds, seed=0)
    loader = DataLoader(tp, batch_size=16, num_workers=2, persistent_workers=True, shuffle=False)
    seen = {}
    for epoch in (0, 1):
        tp.set_epoch(epoch)
        got = torch.cat([b["index_positive"] for b in loader]).tolist()
        images = next(iter(loader))["image_positive"]
        assert images.dtype == torch.uint16 and images.shape[0] == 16
        expected = [int(ds.indices[tp.positive_position(i)]) for i in range(len(tp))]
        assert got == expected
        seen[epoch] = got
    assert seen[0] != seen[1]
