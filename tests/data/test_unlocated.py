"""Files without lat/lon (evaluation-only data such as So2Sat LCZ42): written, validated, read and
summarised; everything that needs locations fails in one line naming the file and lat/lon (exit 2
through the CLI), and what needs none (pretraining without geo, k-NN, linear probe, random splits)
works."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ssl_rs.cli import main
from ssl_rs.data.dataset import GeoDataset
from ssl_rs.data.layout import H5Writer, check_file
from ssl_rs.data.shards import ShardIndex
from ssl_rs.errors import DataError

BANDS = ["B02", "B03", "B04"]
IMAGES = np.random.default_rng(0).integers(0, 3000, (4, 3, 8, 8)).astype(np.uint16)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *parts: str) -> None:
    assert code == 2, err
    assert err.startswith("ssl-rs: error: ") and err.count("\n") == 1, err
    for part in parts:
        assert part in err, (part, err)


@pytest.fixture(scope="module")
def unlocated(tiny_world, tmp_path_factory) -> Path:
    """The tiny world's images, labels and random split, without lat/lon (read-only)."""
    path = tmp_path_factory.mktemp("unlocated") / "unlocated.h5"
    with h5py.File(tiny_world) as f:
        images, labels = f["images"][()], f["label"][()]
        split = f["splits/random"][()]
        bands, classes = list(f.attrs["bands"]), list(f.attrs["class_names"])
    with H5Writer(path, bands=bands, size=images.shape[2:], gsd=10.0, source="test: no locations",
                  class_names=classes) as w:
        for i in range(len(images)):
            w.append(images[i], label=int(labels[i]), split=int(split[i]))
    return path


# ----------------------------------------------------------------------------- writing, reading
def test_a_file_without_locations_is_written_validated_and_read(unlocated):
    with h5py.File(unlocated) as f:
        assert "lat" not in f and "lon" not in f
    info = check_file(unlocated)
    assert info["locations"] == "none (evaluation-only)" and "lat_range" not in info
    assert "lat" not in info["columns"] and info["n"] == 120
    ds = GeoDataset(unlocated, split="train")
    assert not ds.has_location and "lat" not in ds.keys and "lon" not in ds.keys
    item = ds[0]
    assert set(item) == {"image", "label", "index"}
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert set(batch) == {"image", "label", "index"} and batch["image"].dtype == torch.uint16
    with pytest.raises(DataError) as e:
        ds.lat
    assert str(e.value) == (f"{unlocated}: lat/lon: the file has no locations (evaluation-only data); "
                            "GeoDataset.lat needs them")
    with pytest.raises(DataError, match=r"lat/lon: .* no locations .*; the block split needs them$"):
        ds.require_location("the block split")


def test_a_located_file_has_location(tiny_world):
    ds = GeoDataset(tiny_world)
    assert ds.has_location and len(ds.lat) == len(ds) and "lat" in ds[0]
    ds.require_location("anything")  # no error


def test_data_info_says_there_are_no_locations(capsys, unlocated):
    code, out, _ = run(capsys, "data", "info", unlocated)
    assert code == 0 and "locations none (evaluation-only)" in out and "lat  " not in out
    code, out, _ = run(capsys, "data", "info", unlocated, "--json")
    assert code == 0 and json.loads(out)["locations"] == "none (evaluation-only)"


def _writer(path: Path) -> H5Writer:
    return H5Writer(path, bands=BANDS, size=(8, 8), gsd=10.0, source="t")


@pytest.mark.parametrize("first, second, message", [
    ({"lat": 1.0}, None, "lat/lon: sample 0 has lat but no lon"),
    ({"lon": 1.0}, None, "lat/lon: sample 0 has lon but no lat"),
    ({"lat": 1.0, "lon": 2.0}, {}, "lat/lon: given for some samples but not for sample 1"),
    ({}, {"lat": 1.0, "lon": 2.0}, "lat/lon: given for sample 1 but not for the samples before it"),
    ({"lat": 1.0, "lon": 2.0}, {"lat": 1.0}, "lat/lon: sample 1 has lat but no lon"),
])
def test_lat_and_lon_go_together_for_every_sample_or_none(tmp_path, first, second, message):
    out = tmp_path / "w.h5"
    with pytest.raises(DataError) as e:
        with _writer(out) as w:
            w.append(IMAGES[0], **first)
            if second is not None:
                w.append(IMAGES[1], **second)
    assert str(e.value).startswith(f"{out}: {message}") and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_a_stored_lat_without_lon_is_one_line(tmp_path):
    out = tmp_path / "w.h5"
    with _writer(out) as w:
        w.append(IMAGES[0], lat=1.0, lon=2.0)
    with h5py.File(out, "r+") as f:
        del f["lon"]
    for read in (check_file, GeoDataset):
        with pytest.raises(DataError, match=r"lon: required dataset is missing, as the file has lat") as e:
            read(out)
        assert str(e.value).startswith(f"{out}: ") and "\n" not in str(e.value)


def test_write_dataset_without_locations(tmp_path):
    from ssl_rs.data.writer import write_dataset

    out = write_dataset(tmp_path / "d.h5", IMAGES, bands=BANDS, size=(8, 8), gsd=10.0, source="t", label=[0, 1, 0, 1],
                        class_names=["a", "b"])
    assert check_file(out)["locations"] == "none (evaluation-only)"


def test_a_sharded_dataset_without_locations(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    shards = []
    for s in range(2):
        name = f"shard-{s:05d}.h5"
        with _writer(folder / name) as w:
            for i in range(2):
                w.append(IMAGES[2 * s + i], split=["train", "test"][i])
        shards.append((name, 2))
    ShardIndex(folder=folder, shards=shards, bands=BANDS, size=(8, 8), gsd=10.0, source="t", class_names=[],
               columns=["images", "splits"], stats={}, splits={"official": {"train": 2, "val": 0, "test": 2}},
               default_split="official").write()
    info = check_file(folder)
    assert info["locations"] == "none (evaluation-only)" and info["n"] == 4
    ds = GeoDataset(folder)
    assert not ds.has_location and set(ds[3]) == {"image", "index"}


# ----------------------------------------------------------------------------- what needs locations
def test_a_block_split_needs_locations_a_random_one_does_not(capsys, unlocated, tmp_path):
    path = tmp_path / "u.h5"
    shutil.copy(unlocated, path)
    code, _, err = run(capsys, "data", "split", path, "--scheme", "spatial-block")
    assert_one_line_error(code, err, f"{path}: lat/lon: the file has no locations", "spatial-block split needs them")
    code, out, _ = run(capsys, "data", "split", path, "--scheme", "random")
    assert code == 0 and "splits/random" in out
    assert "random" in check_file(path)["splits"]


def test_geo_probes_need_locations_knn_and_linear_do_not(capsys, unlocated, tmp_path):
    common = ["--backbone", "tiny_cnn", "--data", unlocated, "--device", "cpu", "--backbone-args", '{"width": 8}']
    code, _, err = run(capsys, "eval", "geo", *common)
    assert_one_line_error(code, err, f"{unlocated}: lat/lon: the file has no locations", "geo probes")
    code, out, err = run(capsys, "eval", "knn", *common, "--k", "5")
    assert code == 0, err
    assert "knn" in out
    code, out, err = run(capsys, "eval", "linear", *common, "--epochs", "2")
    assert code == 0, err
    assert "linear" in out


PRETRAIN = ["trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0", "eval.schemes=null",
            "data.batch_size=16", "data.num_workers=0", "backbone.args.width=8", "trainer.accelerator=cpu"]


@pytest.mark.parametrize("config, overrides, what", [
    ("synthetic/mocov2_georank", ["method.args.queue_size=64"], "geo.name: georank (a geo regularizer) needs them"),
    ("synthetic/csp", [], "method.name: csp needs them"),
    ("synthetic/mocov2", ["method.args.queue_size=64", "data.neighbor_pairs=true"], "data.neighbor_pairs needs them"),
    ("synthetic/mocov2", ["method.args.queue_size=64", "data.sampler=geo_neighbors"],
     "data.sampler: geo_neighbors needs them"),
    ("synthetic/mocov2", ["method.args.queue_size=64", "eval.protocols=[geo]"],
     "eval.protocols: geo (the geo probes) needs them"),
])
def test_pretraining_what_needs_locations_is_one_line(capsys, unlocated, tmp_path, config, overrides, what):
    runs = tmp_path / "runs"
    code, _, err = run(capsys, "pretrain", "-c", config, f"data.path={unlocated}", f"output.dir={runs}",
                       "data.scheme=official", *PRETRAIN, *overrides)
    assert_one_line_error(code, err, f"{unlocated}: lat/lon: the file has no locations (evaluation-only data)", what)
    assert not runs.exists() or not any(runs.iterdir())  # nothing written


def test_pretraining_without_geo_works(capsys, unlocated, tmp_path):
    code, out, err = run(capsys, "pretrain", "-c", "synthetic/mocov2", f"data.path={unlocated}",
                         f"output.dir={tmp_path}/runs", "data.scheme=official", "method.args.queue_size=64",
                         *PRETRAIN)
    assert code == 0, err
    assert "1 epoch" in out
