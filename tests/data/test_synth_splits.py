"""The synthetic geo-world and the split schemes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ssl_rs.data.splits import add_split, block_ids, random_split, spatial_block_split
from ssl_rs.data.synth import synthesize
from ssl_rs.errors import ConfigError


def test_synth_is_deterministic(tmp_path):
    a = synthesize(tmp_path / "a.h5", n=40, size=8, seed=3, progress=False)
    b = synthesize(tmp_path / "b.h5", n=40, size=8, seed=3, progress=False)
    c = synthesize(tmp_path / "c.h5", n=40, size=8, seed=4, progress=False)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        assert np.array_equal(fa["images"][:], fb["images"][:])
        assert np.array_equal(fa["lat"][:], fb["lat"][:])
        assert not np.array_equal(fa["images"][:], fc["images"][:])
        assert "synthetic" in fa.attrs["source"]


def test_classes_are_spatially_correlated(tmp_path):
    path = synthesize(tmp_path / "w.h5", n=600, size=8, seed=0, progress=False)
    with h5py.File(path) as f:
        lat, lon, label = f["lat"][:], f["lon"][:], f["label"][:]
    la, lo = np.radians(lat), np.radians(lon)
    h = np.sin((la[:, None] - la[None]) / 2) ** 2 + np.cos(la[:, None]) * np.cos(la[None]) * np.sin((lo[:, None] - lo[None]) / 2) ** 2
    d = 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(1)
    near_agree = (label[nearest] == label).mean()
    rng = np.random.default_rng(0)
    random_agree = (label[rng.permutation(len(label))] == label).mean()
    assert near_agree > 0.6 and near_agree > random_agree + 0.4
    assert lat.max() - lat.min() > 60 and lon.max() - lon.min() > 180  # a large part of the sphere
    assert (np.sort(d, 1)[:, 0] < 15).mean() > 0.2  # close neighbours exist (Tile2Vec)


def test_classes_differ_spectrally(tiny_world):
    with h5py.File(tiny_world) as f:
        images, label = f["images"][:].astype(float), f["label"][:]
    means = np.stack([images[label == k].mean(axis=(0, 2, 3)) for k in np.unique(label)])
    assert np.abs(means[:, None] - means[None]).max(-1)[~np.eye(len(means), dtype=bool)].min() > 50


def test_dates_and_groups(tmp_path):
    path = synthesize(tmp_path / "t.h5", n=60, size=8, dates=3, progress=False)
    with h5py.File(path) as f:
        group, time, label = f["group"][:], f["time"][:], f["label"][:]
        codes = f["splits/random"][:]
    assert len(np.unique(group)) == 20
    for g in np.unique(group):
        members = group == g
        assert len(set(time[members])) == 3 and len(set(label[members])) == 1
        assert len(set(codes[members])) == 1  # dates of one place never straddle the split


def test_random_split_fractions():
    codes = random_split(1000, (0.6, 0.1, 0.3), seed=0)
    assert abs((codes == 0).mean() - 0.6) < 0.01 and abs((codes == 2).mean() - 0.3) < 0.01
    assert not np.array_equal(codes, random_split(1000, (0.6, 0.1, 0.3), seed=1))
    with pytest.raises(ConfigError, match="sum"):
        random_split(10, (0.5, 0.5, 0.5))


def test_spatial_block_keeps_cells_whole(tmp_path):
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(30, 60, 2000), rng.uniform(-10, 30, 2000)
    codes = spatial_block_split(lat, lon, block_km=200, seed=0)
    cells = block_ids(lat, lon, 200)
    for cell in np.unique(cells):
        assert len(set(codes[cells == cell])) == 1
    assert 0.6 < (codes == 0).mean() < 0.8 and (codes == 2).mean() > 0.1
    # cells are about block_km wide at every latitude
    sweep = np.linspace(-180, 179.99, 5000)
    columns = [len(np.unique(block_ids(np.full_like(sweep, la), sweep, 200))) for la in (0.5, 60.5)]
    assert abs(columns[0] - 2 * np.pi * 6371 / 200) <= 2 and abs(columns[1] / columns[0] - 0.5) < 0.02


def test_add_split_to_file(world_copy):
    counts = add_split(world_copy, "spatial-block", block_km=500, seed=2)
    assert sum(counts.values()) == 120
    with h5py.File(world_copy) as f:
        assert f.attrs["default_split"] == "random"  # synth made random the default; kept
        assert f["splits/spatial-block"].attrs["block_km"] == 500
    with pytest.raises(ConfigError, match="unknown split scheme"):
        add_split(world_copy, "checkerboard")
