"""Neighbour pairs (NeighborMAE): footprints that overlap or touch, offsets in footprint sides."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ssl_rs.config import load_config, packaged_config_dir
from ssl_rs.data.dataset import GeoDataset
from ssl_rs.data.layout import write_dataset
from ssl_rs.data.neighbors import EARTH_RADIUS_M, NeighborPairs
from ssl_rs.errors import ConfigError, DataError

SIZE, GSD = 8, 10.0
SIDE_M = SIZE * GSD
LAT0, LON0 = 45.0, 10.0
GRID = [(east, north) for north in (-1, 0, 1) for east in (-1, 0, 1)]  # position p <-> GRID[p]
CENTRE, CORNER, ISOLATED = 4, 0, 9


def _shift(lat0, lon0, east_m, north_m):
    """lat/lon of a point east_m, north_m metres from (lat0, lon0) in its equirectangular frame."""
    lat = lat0 + np.degrees(north_m / EARTH_RADIUS_M)
    lon = lon0 + np.degrees(east_m / (EARTH_RADIUS_M * np.cos(np.radians(lat0))))
    return lat, lon


def _write(path, lat, lon, size=(SIZE, SIZE), **columns):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 10000, (len(lat), 2, *size)).astype(np.uint16)
    write_dataset(path, images, lat, lon, bands=["B04", "B08"], size=size, gsd=GSD, source="test", **columns)
    return path, images


@pytest.fixture
def grid(tmp_path):
    """A 3 x 3 grid of tiles exactly one footprint apart around (LAT0, LON0), then one far away."""
    points = [_shift(LAT0, LON0, e * SIDE_M, n * SIDE_M) for e, n in GRID] + [(-30.0, 100.0)]
    lat, lon = map(np.array, zip(*points))
    return _write(tmp_path / "grid.h5", lat, lon)


def _offsets(pairs, position):
    return {tuple(np.round(o, 6)) for o in pairs.candidate_offsets(position)}


def test_grid_centre_has_eight_neighbours_and_a_corner_three(grid):
    pairs = NeighborPairs(GeoDataset(grid[0]))
    assert sorted(pairs.candidates(CENTRE).tolist()) == [p for p in range(9) if p != CENTRE]
    np.testing.assert_allclose(pairs.candidate_offsets(CENTRE), [GRID[p] for p in range(9) if p != CENTRE], atol=1e-3)
    assert sorted(pairs.candidates(CORNER).tolist()) == [1, 3, 4]
    np.testing.assert_allclose(pairs.candidate_offsets(CORNER), [(1, 0), (0, 1), (1, 1)], atol=1e-3)
    assert [len(pairs.candidates(p)) for p in range(10)] == [3, 5, 3, 5, 8, 5, 3, 5, 3, 0]
    assert pairs.neighbor_fraction == pytest.approx(0.9)


def test_items_carry_the_neighbour_image_and_its_offset(grid):
    path, images = grid
    pairs = NeighborPairs(GeoDataset(path), seed=3)
    chosen = set()
    for epoch in range(12):
        pairs.set_epoch(epoch)
        item = pairs[CENTRE]
        j = int(item["index_neighbor"])
        chosen.add(j)
        assert bool(item["has_neighbor"]) and j != CENTRE
        assert torch.equal(item["image_neighbor"], torch.from_numpy(images[j]))
        assert torch.equal(item["image"], torch.from_numpy(images[CENTRE]))
        expected = np.subtract(GRID[j], GRID[CENTRE])
        assert item["neighbor_offset"].dtype == torch.float32 and item["neighbor_offset"].shape == (2,)
        np.testing.assert_allclose(item["neighbor_offset"].numpy(), expected, atol=1e-3)
    assert len(chosen) > 3  # the pick moves around the ring over epochs


def test_isolated_sample_is_paired_with_itself(grid):
    path, images = grid
    item = NeighborPairs(GeoDataset(path))[ISOLATED]
    assert not bool(item["has_neighbor"])
    assert int(item["index_neighbor"]) == int(item["index"]) == ISOLATED
    assert item["neighbor_offset"].tolist() == [0.0, 0.0]
    assert torch.equal(item["image_neighbor"], item["image"])
    assert torch.equal(item["image"], torch.from_numpy(images[ISOLATED]))


def test_max_offset_is_a_per_axis_bound_in_footprint_sides(grid):
    ds = GeoDataset(grid[0])
    assert len(NeighborPairs(ds, max_offset=1.0).candidates(CENTRE)) == 8  # touching counts
    assert len(NeighborPairs(ds, max_offset=0.99).candidates(CENTRE)) == 0
    assert len(NeighborPairs(ds, max_offset=3.0).candidates(CORNER)) == 8  # diagonal 2 sides away too


def test_wider_spacing_is_not_a_neighbour(tmp_path):
    # 1.5 sides apart: no overlap, no contact
    lat, lon = map(np.array, zip(*[_shift(LAT0, LON0, e * 1.5 * SIDE_M, 0.0) for e in range(3)]))
    pairs = NeighborPairs(GeoDataset(_write(tmp_path / "gap.h5", lat, lon)[0]))
    assert pairs.neighbor_fraction == 0.0
    assert len(NeighborPairs(pairs.dataset, max_offset=1.6).candidates(1)) == 2


def test_neighbours_across_the_antimeridian(tmp_path):
    half = np.degrees(SIDE_M / EARTH_RADIUS_M) / 2  # at the equator
    path, _ = _write(tmp_path / "am.h5", np.array([0.0, 0.0]), np.array([180.0 - half, -180.0 + half]))
    pairs = NeighborPairs(GeoDataset(path))
    np.testing.assert_allclose(pairs.candidate_offsets(0), [(1.0, 0.0)], atol=1e-6)
    np.testing.assert_allclose(pairs.candidate_offsets(1), [(-1.0, 0.0)], atol=1e-6)


def test_neighbours_come_from_the_wrapped_split_only(grid, tmp_path):
    path, _ = grid
    lat, lon = GeoDataset(path).lat, GeoDataset(path).lon
    split = ["train"] * 10
    split[5] = "val"  # east of the centre
    split_path, _ = _write(tmp_path / "split.h5", lat, lon, split=split)
    ds = GeoDataset(split_path, split="train")
    pairs = NeighborPairs(ds)
    centre = int(np.flatnonzero(ds.indices == CENTRE)[0])
    assert len(pairs.candidates(centre)) == 7
    picked = set()
    for epoch in range(30):
        pairs.set_epoch(epoch)
        picked.add(int(pairs[centre]["index_neighbor"]))
    assert 5 not in picked and picked <= set(ds.indices.tolist())


def test_other_dates_of_a_place_are_neighbours_at_offset_zero(tmp_path):
    from ssl_rs.data.synth import synthesize

    path = synthesize(tmp_path / "dates.h5", n=40, size=8, seed=4, dates=2, num_classes=4, progress=False)
    ds = GeoDataset(path)
    pairs = NeighborPairs(ds)
    with h5py.File(path, "r") as f:
        group = f["group"][:]
    for p in range(len(pairs)):
        same_place = [q for q in range(len(ds)) if q != p and group[q] == group[p]]
        assert set(same_place) <= set(pairs.candidates(p).tolist())
        item = pairs[p]
        if group[int(item["index_neighbor"])] == group[p]:
            assert bool(item["has_neighbor"]) and int(item["index_neighbor"]) != p
            assert item["neighbor_offset"].tolist() == [0.0, 0.0]
            assert not torch.equal(item["image_neighbor"], item["image"])
    assert pairs.neighbor_fraction == 1.0


def test_choice_depends_on_seed_and_epoch_only(grid):
    ds = GeoDataset(grid[0])
    a, b = NeighborPairs(ds, seed=1), NeighborPairs(ds, seed=1)
    picks = [a.neighbor_position(p) for p in range(len(ds))]
    assert picks == [b.neighbor_position(p) for p in range(len(ds))]
    assert all(q in a.candidates(p) for p, q in enumerate(picks) if p != ISOLATED)
    by_epoch = []
    for epoch in range(1, 4):
        a.set_epoch(epoch)
        by_epoch.append([a.neighbor_position(p) for p in range(len(ds))])
    assert any(other != picks for other in by_epoch)
    a.set_epoch(0)
    assert [a.neighbor_position(p) for p in range(len(ds))] == picks
    assert picks != [NeighborPairs(ds, seed=2).neighbor_position(p) for p in range(len(ds))]


def test_dataloader_batch_and_delegated_metadata(grid):
    ds = GeoDataset(grid[0])
    pairs = NeighborPairs(ds)
    batch = next(iter(DataLoader(pairs, batch_size=10, num_workers=0)))
    assert batch["image_neighbor"].dtype == torch.uint16 and batch["image_neighbor"].shape == (10, 2, SIZE, SIZE)
    assert batch["neighbor_offset"].shape == (10, 2) and batch["neighbor_offset"].dtype == torch.float32
    assert batch["has_neighbor"].tolist() == [True] * 9 + [False]
    assert batch["index_neighbor"].dtype == torch.int64
    assert pairs.keys == ds.keys | {"image_neighbor", "neighbor_offset", "has_neighbor", "index_neighbor"}
    assert pairs.path == ds.path and np.array_equal(pairs.indices, ds.indices)
    assert np.array_equal(pairs.lat, ds.lat) and np.array_equal(pairs.lon, ds.lon) and len(pairs) == 10


def test_file_without_gsd_is_refused(grid):
    path, _ = grid
    with h5py.File(path, "r+") as f:
        del f.attrs["gsd"]
    with pytest.raises(DataError, match="gsd") as info:
        NeighborPairs(GeoDataset(path))
    assert str(info.value).startswith(f"{path}: gsd:")


def test_non_square_images_are_refused(tmp_path):
    path, _ = _write(tmp_path / "rect.h5", np.array([0.0, 1.0]), np.array([0.0, 1.0]), size=(8, 6))
    with pytest.raises(DataError, match="square") as info:
        NeighborPairs(GeoDataset(path))
    assert str(info.value).startswith(f"{path}: images:") and "8 x 6" in str(info.value)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_max_offset_must_be_positive(grid, bad):
    with pytest.raises(ConfigError, match="max_offset"):
        NeighborPairs(GeoDataset(grid[0]), max_offset=bad)


# -- wiring in train.build ---------------------------------------------------------------

@pytest.fixture(scope="module")
def dated_world(tmp_path_factory):
    from ssl_rs.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("nbr") / "dates.h5", n=96, size=16, seed=2, dates=2,
                      num_classes=4, progress=False)


def _config(world, tmp_path, *extra):
    cfg = load_config(packaged_config_dir() / "synthetic" / "mocov2.yaml", [
        f"data.path={world}", f"output.dir={tmp_path}/runs", "data.batch_size=16", "data.num_workers=0",
        "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0",
        "eval.schemes=null", "method.args.queue_size=64", *extra,
    ])
    if cfg.backbone.name == "tiny_cnn":
        cfg.backbone.args.width = 8
    return cfg


def test_build_wraps_the_training_split_in_neighbour_pairs(dated_world, tmp_path, caplog):
    from ssl_rs.train import build

    with caplog.at_level(logging.INFO, logger="ssl_rs"):
        built = build(_config(dated_world, tmp_path, "data.neighbor_pairs=true", "data.neighbor_max_offset=1.5"))
    pairs = built.train_loader.dataset
    assert isinstance(pairs, NeighborPairs) and pairs.max_offset == 1.5
    assert set(pairs.indices.tolist()) == set(built.train_dataset.indices.tolist())
    batch = next(iter(built.train_loader))
    assert {"image_neighbor", "neighbor_offset", "has_neighbor", "index_neighbor"} <= set(batch)
    paired = round(pairs.neighbor_fraction * len(pairs))
    assert f"neighbour pairs: {paired} of {len(pairs)} training samples" in caplog.text
    assert "within 1.5 footprint sides" in caplog.text


def test_build_refuses_temporal_positives_with_neighbour_pairs(dated_world, tmp_path):
    from ssl_rs.train import build

    cfg = _config(dated_world, tmp_path, "data.neighbor_pairs=true", "data.temporal_positives=true")
    with pytest.raises(ConfigError, match="data.temporal_positives, data.neighbor_pairs"):
        build(cfg)


def test_build_refuses_a_non_positive_max_offset(dated_world, tmp_path):
    from ssl_rs.train import build

    with pytest.raises(ConfigError, match="data.neighbor_max_offset"):
        build(_config(dated_world, tmp_path, "data.neighbor_pairs=true", "data.neighbor_max_offset=0"))


def test_method_that_needs_neighbour_pairs(dated_world, tmp_path, monkeypatch):
    from ssl_rs.registry import METHODS
    from ssl_rs.train import build

    monkeypatch.setattr(METHODS.get("mocov2").factory, "batch_keys", frozenset({"image_neighbor"}))
    with pytest.raises(ConfigError, match=r"method MoCoV2 needs 'image_neighbor': set data.neighbor_pairs=true"):
        build(_config(dated_world, tmp_path))
    built = build(_config(dated_world, tmp_path, "data.neighbor_pairs=true"))
    assert isinstance(built.train_loader.dataset, NeighborPairs)
