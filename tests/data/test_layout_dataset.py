"""HDF5 layout: writing, validation of bad input, and the lazy GeoDataset."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ssl_rs.data.dataset import GeoDataset
from ssl_rs.data.layout import H5Writer, check_file, write_dataset
from ssl_rs.errors import DataError


def _write(path, n=6, c=3, size=8, **kwargs):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 3000, (n, c, size, size)).astype(np.uint16)
    lat = kwargs.pop("lat", np.linspace(-10, 10, n))
    lon = kwargs.pop("lon", np.linspace(20, 30, n))
    return write_dataset(
        path, images, lat, lon, bands=["B02", "B03", "B04"][:c], size=(size, size), gsd=10.0, source="test", **kwargs
    ), images


def test_roundtrip_and_stats(tmp_path):
    path, images = _write(tmp_path / "a.h5", label=[0, 1, 0, 1, 2, 2], class_names=["a", "b", "c"],
                          split=["train", "train", "train", "test", "test", "val"], time=["2020-01-01"] * 6)
    info = check_file(path)
    assert info["n"] == 6 and info["bands"] == ["B02", "B03", "B04"] and info["size"] == [8, 8]
    assert info["class_counts"] == {"a": 2, "b": 2, "c": 2}
    assert info["splits"]["official"] == {"train": 3, "val": 1, "test": 2}
    with h5py.File(path) as f:
        assert f["images"].chunks == (1, 3, 8, 8)
        np.testing.assert_allclose(f.attrs["band_mean"], images.reshape(6, 3, -1).transpose(1, 0, 2).reshape(3, -1).mean(1))
        np.testing.assert_allclose(f.attrs["band_std"], images.transpose(1, 0, 2, 3).reshape(3, -1).std(1), rtol=1e-6)
    ds = GeoDataset(path, split="test")
    assert len(ds) == 2
    item = ds[0]
    assert item["image"].dtype == torch.uint16 and item["image"].shape == (3, 8, 8)
    assert torch.equal(item["image"], torch.from_numpy(images[3]))
    assert item["label"].item() == 1 and item["index"].item() == 3
    assert item["lat"].dtype == torch.float64 and item["time"] == "2020-01-01"
    assert ds.keys >= {"image", "lat", "lon", "index", "label", "time"}


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "x.h5"
    with pytest.raises(DataError, match="lat"):
        with H5Writer(out, bands=["B02"], size=(4, 4), gsd=10, source="t") as w:
            w.append(np.zeros((1, 4, 4), np.uint16), lat=10, lon=0)
            w.append(np.zeros((1, 4, 4), np.uint16), lat=95, lon=0)
    assert list(tmp_path.iterdir()) == []


def test_band_subset_and_multilabel(tmp_path):
    path, images = _write(tmp_path / "m.h5", labels=[[0], [1, 2], [], [2], [0, 1], [1]], class_names=["a", "b", "c"],
                          multi_label=True)
    ds = GeoDataset(path, bands=["B04", "B02"])
    item = ds[1]
    assert torch.equal(item["image"], torch.from_numpy(images[1][[2, 0]]))
    assert item["labels"].tolist() == [0.0, 1.0, 1.0]
    assert ds.multi_label and ds.target_key == "labels" and ds.in_chans == 2
    with pytest.raises(DataError, match="bands: the data has 2 bands"):
        ds.check_bands(13, "resnet18")
    with pytest.raises(DataError, match="bands"):
        GeoDataset(path, bands=["B08"])


def test_dataloader_workers(tiny_world):
    ds = GeoDataset(tiny_world, split="train")
    ds[0]  # opens a handle in the parent; workers must not reuse it
    pickle.dumps(ds)
    loader = DataLoader(ds, batch_size=16, num_workers=2, shuffle=False)
    batches = list(loader)
    indices = torch.cat([b["index"] for b in batches])
    assert indices.tolist() == ds.indices.tolist()
    assert batches[0]["image"].shape == (16, 12, 16, 16) and batches[0]["image"].dtype == torch.uint16


# --- bad input: one clear line naming the file and the field ---------------------------
def _corrupt(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda f: f.__delitem__("lat"), r"lat: required dataset is missing"),
        (lambda f: f.__delitem__("images"), r"images: required dataset is missing"),
        (lambda f: (f.__delitem__("lon"), f.create_dataset("lon", data=np.zeros((6, 2)))), r"lon: has rank 2"),
        (lambda f: (f.__delitem__("images"), f.create_dataset("images", data=np.zeros((6, 3, 8, 8), np.float32))),
         r"images: has dtype float32"),
        (lambda f: f["lat"].__setitem__(2, 91.0), r"lat: sample 2 = 91.0 is outside \[-90, 90\]"),
        (lambda f: f["lon"].__setitem__(1, -180.5), r"lon: sample 1 = -180.5 is outside \[-180, 180\]"),
        (lambda f: f["lat"].__setitem__(4, np.nan), r"lat: sample 4 is NaN"),
        (lambda f: f.attrs.__setitem__("bands", ["B02"]), r"bands: 1 names for 3 image bands"),
        (lambda f: (f.__delitem__("lat"), f.create_dataset("lat", data=np.zeros(5))), r"lat: has 5 rows but images has 6"),
    ],
)
def test_bad_files(tmp_path, edit, pattern):
    path, _ = _write(tmp_path / "bad.h5")
    _corrupt(path, edit)
    with pytest.raises(DataError, match=pattern) as e:
        check_file(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match=pattern):
        GeoDataset(path)


def test_missing_and_not_hdf5(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        check_file(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(DataError, match="not an HDF5 file"):
        check_file(junk)


def test_split_errors(tiny_world, tmp_path):
    with pytest.raises(DataError, match="split scheme not found"):
        GeoDataset(tiny_world, split="train", scheme="spatial-block")
    path, _ = _write(tmp_path / "nosplit.h5")
    with pytest.raises(DataError, match="run `ssl-rs data split` first"):
        GeoDataset(path, split="train")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        GeoDataset(tiny_world, split="dev")
