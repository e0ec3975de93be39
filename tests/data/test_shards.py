"""Sharded datasets (issue #13, section 3): a folder of HDF5 shards with one index is one logical
dataset for every command; parallel conversion is independent of the worker count, atomic, and
bounded in memory by the shard size; DDP ranks read disjoint, balanced samples across shards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from affine import Affine
from torch.utils.data import DistributedSampler, default_collate

from ssl_rs.cli import main
from test_converters import write_tif  # the converter tests' GeoTIFF writer (same folder)
from ssl_rs.config import packaged_config_dir
from ssl_rs.data.converters import convert
from ssl_rs.data.converters.parallel import ConversionPlan, shard_tasks, write_file, write_shards
from ssl_rs.data.dataset import GeoDataset
from ssl_rs.data.layout import check_file
from ssl_rs.data.shards import INDEX_NAME, read_index
from ssl_rs.errors import DataError

N_FILES = 40
CLASSES = ("Forest", "River")



def fake_eurosat(root: Path, n: int = N_FILES) -> Path:
    """``n`` 13-band 16 px GeoTIFFs in train/test class folders, spread over ~400 km of UTM 31N."""
    rng = np.random.default_rng(0)
    for i in range(n):
        split = "test" if i % 5 == 0 else "train"
        cls = CLASSES[i % 2]
        transform = Affine(10, 0, 400_000 + 9_000 * (i % 7), 0, -10, 5_400_000 - 40_000 * (i // 7))
        write_tif(root / split / cls / f"{cls}_{i}.tif",
                  rng.integers(100 + 500 * (i % 2), 900 + 500 * (i % 2), (13, 16, 16), dtype=np.uint16),
                  transform, "EPSG:32631")
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return fake_eurosat(tmp_path_factory.mktemp("eurosat") / "src")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_sharded_flow_end_to_end(source, tmp_path, capsys):
    """convert with 2 workers -> info -> split -> pretrain (1 epoch) -> eval, on the folder, and the
    folder reads as the single-file conversion of the same inputs does."""
    folder, single = tmp_path / "shards", tmp_path / "single.h5"
    code, out, err = run(capsys, "data", "convert", "eurosat-ms", source, "-o", folder, "--shard-size", 7,
                         "--workers", 2)
    assert code == 0, err
    assert f"wrote {folder}: {N_FILES} samples in 6 shards" in out
    assert sorted(p.name for p in folder.iterdir()) == [INDEX_NAME] + [f"shard-{i:05d}.h5" for i in range(6)]
    assert not list(tmp_path.glob(".*"))  # no part folder left
    assert run(capsys, "data", "convert", "eurosat-ms", source, "-o", single)[0] == 0

    code, out, _ = run(capsys, "data", "info", folder, "--json")
    info, reference = json.loads(out), check_file(single)
    assert info["n"] == N_FILES and info["shards"] == 6
    for key in ("bands", "size", "classes", "class_counts", "lat_range", "lon_range", "splits", "default_split"):
        assert info[key] == reference[key], key
    assert info["columns"] == reference["columns"]
    with h5py.File(single) as f:
        index = read_index(folder)
        np.testing.assert_allclose(index.stats["band_mean"], f.attrs["band_mean"], rtol=1e-12)
        np.testing.assert_allclose(index.stats["band_std"], f.attrs["band_std"], rtol=1e-9)

    for scheme in ("random", "spatial-block"):
        code, out, err = run(capsys, "data", "split", folder, "--scheme", scheme, "--block-km", 100)
        assert code == 0 and f"splits/{scheme}: train" in out, err
        assert run(capsys, "data", "split", single, "--scheme", scheme, "--block-km", 100)[0] == 0
        a, b = GeoDataset(folder, split="test", scheme=scheme), GeoDataset(single, split="test", scheme=scheme)
        assert a.indices.tolist() == b.indices.tolist()  # the split covers all shards as one dataset
        assert_same_samples(a, b)
        a.close(), b.close()  # HDF5 refuses to modify a file this process holds open for reading
    assert json.loads(run(capsys, "data", "info", folder, "--json")[1])["splits"] == check_file(single)["splits"]

    code, _, err = run(capsys, "pretrain", "-c", packaged_config_dir() / "synthetic" / "mocov2.yaml",
                       f"data.path={folder}", "data.scheme=random", f"output.dir={tmp_path / 'runs'}",
                       "output.name=run", "data.batch_size=8", "data.num_workers=0", "trainer.max_epochs=1",
                       "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0", "eval.schemes=null",
                       "method.args.queue_size=16", "backbone.args.width=8", "trainer.accelerator=cpu")
    assert code == 0, err
    result = json.loads((tmp_path / "runs" / "run" / "results.json").read_text())
    assert result["steps"] == len(GeoDataset(folder, split="train", scheme="random")) // 8
    assert "acc_macro" in result["eval"]["random"]["metrics"]["knn"]

    out_json = tmp_path / "knn.json"
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", tmp_path / "runs" / "run" / "checkpoints" / "last.ckpt",
                       "--data", folder, "--scheme", "spatial-block", "--json", out_json)
    assert code == 0, err
    assert json.loads(out_json.read_text())["n_test"] == len(GeoDataset(folder, split="test", scheme="spatial-block"))


def assert_same_samples(a: GeoDataset, b: GeoDataset) -> None:
    positions = np.arange(len(a))[::-1]
    x, y = default_collate(a.__getitems__(positions)), default_collate(b.__getitems__(positions))
    for key in x:
        assert torch.equal(x[key], y[key]) if torch.is_tensor(x[key]) else x[key] == y[key], key


def test_shards_do_not_depend_on_the_worker_count(source, tmp_path):
    one = convert("eurosat-ms", source, tmp_path / "one", shard_size=9, workers=1, progress=False)
    two = convert("eurosat-ms", source, tmp_path / "two", shard_size=9, workers=3, progress=False)
    assert (one / INDEX_NAME).read_text() == (two / INDEX_NAME).read_text()
    for name, _ in read_index(one).shards:
        with h5py.File(one / name) as f, h5py.File(two / name) as g:
            assert np.array_equal(f["images"][:], g["images"][:]) and np.array_equal(f["lat"][:], g["lat"][:])
    # a batch spanning shards is read in one pass per shard, in the order asked for
    assert_same_samples(GeoDataset(one), GeoDataset(convert("eurosat-ms", source, tmp_path / "one.h5",
                                                            progress=False)))


def test_a_failed_conversion_leaves_nothing(source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    bad = src / "train" / "River" / "River_zz.tif"
    write_tif(bad, np.ones((13, 16, 16), np.uint16))  # no georeferencing: its worker fails
    with pytest.raises(DataError, match=f"^{bad}: georeferencing: GeoTIFF has no CRS/transform$"):
        convert("eurosat-ms", src, tmp_path / "out" / "shards", shard_size=5, workers=2, progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # neither the folder nor its .part


def test_incomplete_or_damaged_folders_are_refused_in_one_line(source, tmp_path, capsys):
    folder = convert("eurosat-ms", source, tmp_path / "shards", shard_size=10, progress=False)
    (folder / INDEX_NAME).rename(tmp_path / "index.json")
    for argv in (["data", "info", folder], ["eval", "knn", "--backbone", "tiny_cnn", "--data", folder]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1
        assert f"{folder}: {INDEX_NAME}: missing, so this is not a complete sharded dataset" in err
    (tmp_path / "index.json").rename(folder / INDEX_NAME)
    (folder / "shard-00002.h5").unlink()
    code, _, err = run(capsys, "data", "info", folder)
    assert code == 2 and err.strip() == f"ssl-rs: error: {folder}/shard-00002.h5: file not found (listed in " \
                                        f"{folder}/{INDEX_NAME})"
    with pytest.raises(DataError, match="shard-00002.h5: file not found"):
        GeoDataset(folder)
    (tmp_path / "a_file").write_text("not a folder")
    code, _, err = run(capsys, "data", "convert", "eurosat-ms", source, "-o", tmp_path / "a_file", "--shard-size", 5)
    assert code == 2 and "output: is a file; --shard-size writes a folder of shards" in err
    code, _, err = run(capsys, "data", "convert", "eurosat-ms", source, "-o", tmp_path / "x.h5", "--workers", 2)
    assert code == 2 and "--workers: parallel conversion writes shards" in err


def test_a_split_that_was_interrupted_is_not_seen(source, tmp_path):
    folder = convert("eurosat-ms", source, tmp_path / "shards", shard_size=10, progress=False)
    with h5py.File(folder / "shard-00000.h5", "r+") as f:  # what a killed `data split` leaves: one shard done
        f["splits"].create_dataset("random", data=np.zeros(10, np.uint8))
    assert "random" not in check_file(folder)["splits"]
    with pytest.raises(DataError, match="splits/random: split scheme not found"):
        GeoDataset(folder, split="train", scheme="random")


def test_shard_tasks_keep_items_whole():
    assert shard_tasks([1] * 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_tasks([3, 3, 9, 1, 1], 5) == [(0, 1), (1, 2), (2, 3), (3, 5)]


def _tiny_read(item, context):
    rng = np.random.default_rng(item)
    yield rng.integers(0, 5000, (2, 16, 16), dtype=np.uint16), dict(lat=0.001 * item, lon=0.0, label=item % 3)


def _peak_bytes(write, n: int, out: Path) -> int:
    plan = ConversionPlan("tiny", list(range(n)), _tiny_read,
                          dict(bands=["B02", "B03"], size=(16, 16), gsd=10.0, source="test", class_names=list("abc")))
    tracemalloc.start()
    try:
        write(plan, out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_the_shard_size_not_the_input(tmp_path):
    """Peak traced allocations (numpy included) of a conversion of 1,500 and of 6,000 samples: a
    sharded one does not grow with the input, the single-file one does (so the check can fail)."""
    def sharded(plan, out):
        write_shards(plan, out, shard_size=300, workers=1, progress=False)

    def single(plan, out):
        write_file(plan, out, progress=False)

    small, large = (_peak_bytes(sharded, n, tmp_path / f"s{n}") for n in (1500, 6000))
    assert large - small < 1_000_000, (small, large)
    small, large = (_peak_bytes(single, n, tmp_path / f"f{n}.h5") for n in (1500, 6000))
    assert large - small > 5_000_000, (small, large)  # grows ~2 kB per sample here


def test_ddp_ranks_read_disjoint_balanced_samples_across_shards(source, tmp_path):
    folder = convert("eurosat-ms", source, tmp_path / "shards", shard_size=6, progress=False)
    ds = GeoDataset(folder, split="train")
    offsets = read_index(folder).offsets
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=True)
        positions = list(sampler)
        assert len(positions) == len(ds) // 2
        rows = ds.indices[positions]
        shards = set(np.searchsorted(offsets, rows, side="right") - 1)
        assert len(shards) >= (len(offsets) - 1) // 2  # a rank's share is spread over the shards
        seen.append(set(positions))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 2 * (len(ds) // 2)


@pytest.mark.slow
def test_two_process_ddp_pretraining_on_a_sharded_folder(source, tmp_path):
    folder = convert("eurosat-ms", source, tmp_path / "shards", shard_size=7, workers=2, progress=False)
    assert main(["data", "split", str(folder), "--scheme", "random"]) == 0
    cmd = [
        sys.executable, "-m", "ssl_rs.cli", "pretrain", "-c", str(packaged_config_dir() / "synthetic" / "mocov2.yaml"),
        f"data.path={folder}", "data.scheme=random", f"output.dir={tmp_path}", "output.name=ddp",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
        "data.batch_size=4", "data.num_workers=1", "trainer.progress_bar=false", "backbone.args.width=8",
        "method.args.queue_size=16", "eval.schemes=null", "trainer.knn_every_n_epochs=0",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Starting with 2 processes" in proc.stderr + proc.stdout
    result = json.loads((tmp_path / "ddp" / "results.json").read_text())
    n_train = len(GeoDataset(folder, split="train", scheme="random"))
    assert result["steps"] == (n_train // 2) // 4  # each process takes half of the training samples
    assert "acc_macro" in result["eval"]["random"]["metrics"]["knn"]
