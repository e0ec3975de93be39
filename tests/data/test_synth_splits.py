"""The synthetic geo-world and the split schemes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ssl_rs.data.splits import add_split, block_ids, random_split, spatial_block_split
from ssl_rs.data import synth
from ssl_rs.data.synth import cut_tiles, synthesize
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


def haversine_km(lat1, lon1, lat2, lon2):
    la1, lo1, la2, lo2 = map(np.radians, (lat1, lon1, lat2, lon2))
    h = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def test_cut_tiles_is_row_major_from_the_north_west():
    scenes = np.arange(2 * 3 * 12 * 12).reshape(2, 3, 12, 12)
    tiles = cut_tiles(scenes, 3)
    assert tiles.shape == (18, 3, 4, 4)
    for i in range(2):
        for r in range(3):
            for c in range(3):
                np.testing.assert_array_equal(tiles[i * 9 + r * 3 + c], scenes[i, :, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4])
    np.testing.assert_array_equal(cut_tiles(scenes, 1), scenes)


def test_tiles_are_cut_from_one_rendered_scene(tmp_path, monkeypatch):
    scenes = []

    def recording_render(*args, **kwargs):
        out = render(*args, **kwargs)
        scenes.append(out)
        return out

    render = synth.render
    monkeypatch.setattr(synth, "render", recording_render)
    monkeypatch.setattr(synth, "CHUNK", 40)  # 10 scenes of 2x2 tiles per chunk: several chunks
    t, size, places = 2, 8, 100
    path = synthesize(tmp_path / "tiles.h5", n=places * t * t, size=size, seed=7, tiles=t, progress=False)
    scenes = np.concatenate(scenes)
    assert scenes.shape[0] == places and scenes.shape[2:] == (t * size, t * size)
    with h5py.File(path) as f:
        images, lat, lon, label, time = (f[k][:] for k in ("images", "lat", "lon", "label", "time"))
        assert f.attrs["tiles_per_side"] == t and f.attrs["num_places"] == places and "group" not in f
    assert len(images) == places * t * t and images.shape[2:] == (size, size)
    for i in range(places):  # exact: tile (r, c) of place i is the (r, c) block of its scene
        for k in range(t * t):
            r, c = divmod(k, t)
            block = scenes[i, :, r * size : (r + 1) * size, c * size : (c + 1) * size]
            np.testing.assert_array_equal(images[i * t * t + k], block)
    by_place = lambda a: a.reshape(places, t * t)  # noqa: E731
    assert (by_place(label) == label[:: t * t, None]).all() and (by_place(time) == time[:: t * t, None]).all()
    # so content continues across the border: the columns either side of a seam are about as alike
    # as neighbouring columns inside a tile, far more than the same columns of two different places
    x = images.astype(float).mean(axis=1)  # (n, size, size), band mean
    left, right = x[0 :: t * t], x[1 :: t * t]  # tiles (0, 0) and (0, 1) of every place
    seam = np.abs(left[:, :, -1] - right[:, :, 0]).mean()
    inside = np.abs(np.diff(left, axis=2)).mean()
    across = np.abs(left[:, :, -1] - np.roll(right, 1, axis=0)[:, :, 0]).mean()
    assert seam < 2 * inside and seam < 0.5 * across


def test_tile_centres_are_one_tile_apart(tmp_path):
    t, size = 3, 16
    path = synthesize(tmp_path / "tiles.h5", n=40 * t * t, size=size, seed=1, tiles=t, progress=False)
    with h5py.File(path) as f:
        lat, lon = f["lat"][:].reshape(-1, t, t), f["lon"][:].reshape(-1, t, t)
    side_km = size * 10.0 / 1000.0
    east = haversine_km(lat[:, :, :-1], lon[:, :, :-1], lat[:, :, 1:], lon[:, :, 1:])
    south = haversine_km(lat[:, :-1], lon[:, :-1], lat[:, 1:], lon[:, 1:])
    np.testing.assert_allclose(east, side_km, rtol=0.01)
    np.testing.assert_allclose(south, side_km, rtol=0.01)
    assert (lat[:, :-1] > lat[:, 1:]).all()  # row 0 is the northernmost
    dlon = (lon[:, :, 1:] - lon[:, :, :-1] + 180.0) % 360.0 - 180.0
    assert (dlon > 0).all() and np.abs(lat[:, :, 1:] - lat[:, :, :-1]).max() < 1e-9  # columns go east
    # the places are still spread over the sphere and distinct scenes are far apart
    centre = haversine_km(lat[:, 0, 0], lon[:, 0, 0], lat[:, 2, 2], lon[:, 2, 2])
    np.testing.assert_allclose(centre, 2 * np.sqrt(2) * side_km, rtol=0.01)


def test_tiles_with_dates_group_one_footprint(tmp_path):
    t, dates, places = 2, 3, 10
    path = synthesize(tmp_path / "td.h5", n=places * dates * t * t, size=8, dates=dates, tiles=t, seed=0, progress=False)
    with h5py.File(path) as f:
        group, lat, lon, time = f["group"][:], f["lat"][:], f["lon"][:], f["time"][:]
    assert len(np.unique(group)) == places * t * t
    for g in np.unique(group):
        m = group == g
        assert m.sum() == dates and len(set(time[m])) == dates
        assert np.ptp(lat[m]) == 0 and np.ptp(lon[m]) == 0  # the same footprint on each date
    scene = group[: t * t]  # the first scene's tiles: same date, different groups
    assert len(set(scene)) == t * t and len(set(time[: t * t])) == 1


def test_tiles_one_is_the_default(tmp_path):
    a = synthesize(tmp_path / "a.h5", n=30, size=8, seed=5, dates=3, progress=False)
    b = synthesize(tmp_path / "b.h5", n=30, size=8, seed=5, dates=3, tiles=1, progress=False)
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for key in ("images", "lat", "lon", "label", "group", "time", "splits/random"):
            np.testing.assert_array_equal(fa[key][:], fb[key][:])
        assert fa.attrs["tiles_per_side"] == 1 and fa.attrs["num_places"] == 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=30, tiles=2), r"--n \(30\) must be a multiple of --dates x --tiles\^2 = 1 x 4 = 4"),
        (dict(n=42, dates=3, tiles=2), r"--n \(42\) must be a multiple of .* = 3 x 4 = 12 .*e.g. --n 36"),
        (dict(n=50, dates=2, tiles=2), r"= 8 \(samples per place\), e.g. --n 48"),
        (dict(n=30, tiles=0), "--tiles must be a whole number >= 1"),
        (dict(n=30, tiles=1.5), "--tiles must be a whole number >= 1"),
    ],
)
def test_bad_tiles(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        synthesize(tmp_path / "bad.h5", size=8, progress=False, **kwargs)
    assert not (tmp_path / "bad.h5").exists()
    n = kwargs["n"] - kwargs["n"] % (kwargs.get("dates", 1) * 4) if kwargs.get("tiles") == 2 else None
    if n:  # the suggested multiple is accepted
        path = synthesize(tmp_path / "ok.h5", size=8, progress=False, **dict(kwargs, n=n))
        with h5py.File(path) as f:
            assert len(f["images"]) == n and f.attrs["num_places"] == n // (kwargs.get("dates", 1) * 4)


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


def test_dates_of_a_place_show_the_same_ground(tmp_path):
    path = synthesize(tmp_path / "dates.h5", n=240, size=16, seed=4, dates=2, progress=False)
    with h5py.File(path) as f:
        images, group = f["images"][:].astype(np.float64), f["group"][:]
    same, other = [], []
    for g in np.unique(group)[:60]:
        a, b = np.where(group == g)[0]
        c = np.where(group == (g + 1) % group.max())[0][0]
        same.append(np.corrcoef(images[a].mean(0).ravel(), images[b].mean(0).ravel())[0, 1])
        other.append(np.corrcoef(images[a].mean(0).ravel(), images[c].mean(0).ravel())[0, 1])
    # the layout (texture, clutter) is shared; season, light, haze and noise are not
    assert np.nanmean(same) > 0.4 > 0.15 > abs(np.nanmean(other))
    assert not np.array_equal(images[0], images[1])
