"""Per-pixel masks (semantic segmentation): written one chunk per sample with ``mask_classes`` and
``mask_nodata``, validated, read as (H, W) uint8 by items and batches (shards too), summarised by
``data info``; bad masks are one line naming the file, ``mask`` and the sample; the synthetic world
can write masks that the pixels show."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ssl_rs.cli import main
from ssl_rs.data import columns
from ssl_rs.data.dataset import GeoDataset
from ssl_rs.data.layout import H5Writer, check_file
from ssl_rs.data.shards import ShardIndex
from ssl_rs.errors import DataError

BANDS = ["B02", "B03", "B04"]
CLASSES = ["background", "cashew", "road"]
N, H, W = 10, 8, 6  # not square: height and width must not be swapped anywhere
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 3000, (N, 3, H, W)).astype(np.uint16)
MASKS = RNG.integers(0, 3, (N, H, W)).astype(np.int64)
MASKS[:, 0, 0] = 255  # one no-data pixel per sample
SPLIT = ["train", "train", "train", "val", "test", "test", "train", "test", "train", "train"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, masks=MASKS, rows=range(N), **writer) -> Path:
    writer.setdefault("mask_classes", CLASSES)
    with H5Writer(path, bands=BANDS, size=(H, W), gsd=10.0, source="t", **writer) as w:
        for i in rows:
            w.append(IMAGES[i], lat=float(i), lon=float(-i), mask=masks[i], split=SPLIT[i])
    return path


def assert_writer_error(tmp_path: Path, pattern: str, **kwargs) -> None:
    out = tmp_path / "w.h5"
    with pytest.raises(DataError) as e:
        kwargs.pop("action", lambda: write(out, **kwargs))()
    message = str(e.value)
    assert message.startswith(f"{out}: ") and "\n" not in message, message
    assert re.search(pattern, message), message
    assert list(tmp_path.iterdir()) == []  # nothing left behind


# ----------------------------------------------------------------------------- writing, reading
def test_masks_are_written_one_chunk_per_sample_with_their_attributes(tmp_path):
    path = write(tmp_path / "m.h5", masks=MASKS.astype(np.int32))  # any integer dtype
    with h5py.File(path) as f:
        ds = f["mask"]
        assert ds.dtype == np.uint8 and ds.shape == (N, H, W) and ds.chunks == (1, H, W)
        assert np.array_equal(ds[()], MASKS)
        assert list(f.attrs["mask_classes"]) == CLASSES and int(f.attrs["mask_nodata"]) == 255
        # the convention of class_names: an array of strings
        assert isinstance(f.attrs["mask_classes"], np.ndarray)


def test_items_and_batches_hold_uint8_masks(tmp_path):
    path = write(tmp_path / "m.h5")
    ds = GeoDataset(path)
    assert ds.has_mask and ds.mask_classes == CLASSES and ds.mask_nodata == 255 and "mask" in ds.keys
    item = ds[3]
    assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (H, W)
    assert torch.equal(item["mask"], torch.from_numpy(MASKS[3].astype(np.uint8)))
    order = [7, 2, 7, 0, 9, 2]  # unsorted, with repeats: the batched path sorts and reads each row once
    batch = torch.utils.data.default_collate(ds.__getitems__(order))
    assert batch["mask"].dtype == torch.uint8 and batch["mask"].shape == (len(order), H, W)
    assert torch.equal(batch["mask"], torch.from_numpy(MASKS[order].astype(np.uint8)))
    assert torch.equal(batch["image"], torch.from_numpy(IMAGES[order]))
    assert np.array_equal(ds.read_masks(order), MASKS[order])
    loader = DataLoader(GeoDataset(path, split="test"), batch_size=2)
    masks = torch.cat([b["mask"] for b in loader])
    assert torch.equal(masks, torch.from_numpy(MASKS[[4, 5, 7]].astype(np.uint8)))


def test_masks_are_read_through_a_band_subset_and_transforms(tmp_path):
    path = write(tmp_path / "m.h5")
    seen = []
    ds = GeoDataset(path, bands=["B04"], transforms=lambda item: seen.append(item["mask"].shape) or item)
    batch = torch.utils.data.default_collate(ds.__getitems__([1, 0]))
    assert batch["image"].shape == (2, 1, H, W) and torch.equal(batch["mask"][0], torch.from_numpy(MASKS[1]).byte())
    assert seen == [(H, W), (H, W)]


def test_a_file_without_masks(tiny_world):
    ds = GeoDataset(tiny_world)
    assert not ds.has_mask and ds.mask_classes is None and ds.mask_nodata is None and "mask" not in ds[0]
    with pytest.raises(DataError, match=r": mask: the file has no masks"):
        ds.read_masks([0])


def test_a_custom_nodata_value(tmp_path):
    masks = np.where(MASKS == 255, 9, MASKS)
    path = write(tmp_path / "m.h5", masks=masks, mask_nodata=9)
    ds = GeoDataset(path)
    assert ds.mask_nodata == 9 and ds[0]["mask"][0, 0].item() == 9
    info = check_file(path)
    assert info["mask_nodata"] == 9 and info["mask_pixel_counts"]["no-data"] == N


# ----------------------------------------------------------------------------- bad input to the writer
@pytest.mark.parametrize("change, pattern", [
    (lambda m: m.__setitem__((4, 2, 3), 3), r"mask: sample 4 has value 3 at pixel \(2, 3\), expected a class index "
                                            r"0 \.\. 2 \(mask_classes\) or 255 \(mask_nodata\)"),
    (lambda m: m.__setitem__((5, 0, 1), 300), r"mask: sample 5 has value 300, outside uint8"),
    (lambda m: m.__setitem__((6, 0, 1), -1), r"mask: sample 6 has value -1, outside uint8"),
])
def test_a_bad_mask_value_names_the_sample(tmp_path, change, pattern):
    masks = MASKS.copy()
    change(masks)
    assert_writer_error(tmp_path, pattern, masks=masks)


def test_a_float_or_misshapen_mask_is_one_line(tmp_path):
    assert_writer_error(tmp_path, r"mask: sample 0 has dtype float64, expected integer class indices",
                        masks=MASKS.astype(np.float64))
    assert_writer_error(tmp_path, r"mask: sample 0 has shape \(6, 8\), expected \(8, 6\)",
                        masks=MASKS.transpose(0, 2, 1))


def test_mask_and_mask_classes_go_together(tmp_path):
    assert_writer_error(tmp_path, r"mask: given for sample 0, but the writer has no mask_classes", mask_classes=None)
    out = tmp_path / "w.h5"

    def no_masks():
        with H5Writer(out, bands=BANDS, size=(H, W), gsd=10.0, source="t", mask_classes=CLASSES) as w:
            w.append(IMAGES[0], lat=0.0, lon=0.0)

    assert_writer_error(tmp_path, r"mask: the writer has mask_classes but no sample was given a mask", action=no_masks)

    def some_masks():
        with H5Writer(out, bands=BANDS, size=(H, W), gsd=10.0, source="t", mask_classes=CLASSES) as w:
            w.append(IMAGES[0], lat=0.0, lon=0.0, mask=MASKS[0])
            w.append(IMAGES[1], lat=0.0, lon=0.0)

    assert_writer_error(tmp_path, r"mask: given for some samples but not for sample 1", action=some_masks)


@pytest.mark.parametrize("writer, pattern", [
    ({"mask_nodata": 1}, r"mask_nodata: 1 is a class index \(mask_classes has 3 classes\)"),
    ({"mask_nodata": 256}, r"mask_nodata: expected an integer 0 \.\. 255, got 256"),
    ({"mask_classes": None, "mask_nodata": 255}, r"mask_nodata: given without mask_classes"),
    ({"mask_classes": []}, r"mask_classes: expected a non-empty list of class names"),
    ({"mask_classes": "cashew"}, r"mask_classes: expected a list of class names"),
    ({"mask_classes": ["a", "a"]}, r"mask_classes: 'a' is listed twice"),
])
def test_bad_mask_attributes_are_one_line(tmp_path, writer, pattern):
    assert_writer_error(tmp_path, pattern, **writer)


# ----------------------------------------------------------------------------- bad files
def _assert_bad_file(path: Path, pattern: str) -> None:
    for read in (check_file, GeoDataset):
        with pytest.raises(DataError) as e:
            read(path)
        message = str(e.value)
        assert message.startswith(f"{path}: ") and "\n" not in message and re.search(pattern, message), message


@pytest.mark.parametrize("edit, pattern", [
    (lambda f: f.attrs.__delitem__("mask_classes"), r"mask_classes: required attribute is missing"),
    (lambda f: f.attrs.__setitem__("mask_nodata", 2), r"mask_nodata: 2 is a class index"),
    (lambda f: f.attrs.__setitem__("mask_nodata", "none"), r"mask_nodata: expected an integer 0 \.\. 255"),
    (lambda f: f.__delitem__("mask"), r"mask_classes: attribute present but the file has no mask dataset"),
])
def test_bad_mask_attributes_in_a_file(tmp_path, edit, pattern):
    path = write(tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        edit(f)
    _assert_bad_file(path, pattern)


def test_a_mask_of_another_size_than_the_images(tmp_path):
    path = write(tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        del f["mask"]
        f.create_dataset("mask", data=np.zeros((N, H, W + 1), np.uint8))
    _assert_bad_file(path, r"mask: is 8x7 px per sample but images are 8x6")


def test_stored_values_beyond_the_classes_are_warned_about(tmp_path, caplog):
    path = write(tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        f["mask"][2, 1, 1] = 7
    info = check_file(path)
    assert info["mask_pixel_counts"]["value 7"] == 1
    assert "neither a class index (0 .. 2) nor mask_nodata 255" in caplog.text


# ----------------------------------------------------------------------------- data info
def test_data_info_counts_mask_pixels_per_class(capsys, tmp_path):
    path = write(tmp_path / "m.h5")
    info = check_file(path)
    expected = {name: int((MASKS == i).sum()) for i, name in enumerate(CLASSES)}
    assert info["mask_classes"] == CLASSES and info["mask_nodata"] == 255 and info["mask_pixels_sampled"] is None
    assert info["mask_pixel_counts"] == {**expected, "no-data": N}
    code, out, _ = run(capsys, "data", "info", path)
    assert code == 0 and "mask      3 classes, no-data value 255; pixels:" in out
    assert re.search(r"  cashew +%d\n" % expected["cashew"], out) and re.search(r"  no-data +%d\n" % N, out)
    assert json.loads(run(capsys, "data", "info", path, "--json")[1])["mask_pixel_counts"]["no-data"] == N


def test_data_info_samples_the_pixels_of_large_files_and_says_so(capsys, tmp_path, monkeypatch):
    path = write(tmp_path / "m.h5")
    monkeypatch.setattr(columns, "MASK_SUMMARY_PIXELS", 3 * H * W)  # 3 samples' worth
    info = check_file(path)
    assert info["mask_pixels_sampled"] == [3, N]
    assert sum(info["mask_pixel_counts"].values()) == 3 * H * W
    code, out, _ = run(capsys, "data", "info", path)
    assert code == 0 and "pixels (pixels of 3 of the 10 samples, drawn at random):" in out


# ----------------------------------------------------------------------------- shards
def _sharded(folder: Path, classes=(CLASSES, CLASSES)) -> Path:
    folder.mkdir()
    shards = []
    for s, rows in enumerate((range(0, 6), range(6, N))):
        name = f"shard-{s:05d}.h5"
        write(folder / name, rows=rows, mask_classes=classes[s])
        shards.append((name, len(rows)))
    counts = {k: SPLIT.count(k) for k in ("train", "val", "test")}
    ShardIndex(folder=folder, shards=shards, bands=BANDS, size=(H, W), gsd=10.0, source="t", class_names=[],
               columns=["images", "lat", "lon", "mask", "splits"], stats={}, splits={"official": counts},
               default_split="official").write()
    return folder


def test_a_sharded_dataset_carries_masks(tmp_path):
    folder = _sharded(tmp_path / "sharded")
    ds = GeoDataset(folder)
    assert ds.has_mask and ds.mask_classes == CLASSES and ds.mask_nodata == 255
    order = [9, 0, 5, 6, 5]  # across both shards
    batch = torch.utils.data.default_collate(ds.__getitems__(order))
    assert torch.equal(batch["mask"], torch.from_numpy(MASKS[order].astype(np.uint8)))
    assert torch.equal(ds[7]["mask"], torch.from_numpy(MASKS[7].astype(np.uint8)))
    info = check_file(folder)
    assert info["mask_classes"] == CLASSES and info["mask_pixel_counts"]["no-data"] == N
    assert info["mask_pixel_counts"]["road"] == int((MASKS == 2).sum()) and info["columns"]["mask"]["shape"][0] == N


def test_shards_with_other_mask_classes_are_refused(tmp_path):
    folder = _sharded(tmp_path / "sharded", classes=(CLASSES, ["background", "cashew", "river"]))
    for read in (check_file, GeoDataset):
        with pytest.raises(DataError, match=r"shard-00001\.h5: mask_classes: .*river.* differs from the first "
                                            r"shard's .*road") as e:
            read(folder)
        assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- the synthetic world
def test_synthetic_masks_show_in_the_pixels(capsys, tmp_path):
    path = tmp_path / "seg.h5"
    code, out, _ = run(capsys, "data", "synth", "-o", path, "--n", "90", "--size", "16", "--classes", "4",
                       "--block-km", "0", "--masks")
    assert code == 0 and "with per-pixel masks" in out
    info = check_file(path)
    assert info["mask_classes"] == info["classes"] and info["mask_nodata"] == 255
    assert 0 < info["mask_pixel_counts"]["no-data"] < 0.5 * 90 * 16 * 16  # clutter: some no-data, not most
    with h5py.File(path) as f:
        images, masks, labels = f["images"][()].astype(np.float64), f["mask"][()], f["label"][()]
    # a scene shows two classes: its place's class and another one
    assert all(len(set(np.unique(m)) - {255}) <= 2 for m in masks)
    assert np.mean([(m == lab).any() for m, lab in zip(masks, labels)]) > 0.9
    assert np.mean([len(set(np.unique(m)) - {255}) == 2 for m in masks]) > 0.3
    # the class is visible pixel by pixel: nearest class centroid of the log spectra, fitted on
    # the first 60 samples, is right far more often than the most frequent class on the last 30
    x = np.log1p(images.transpose(0, 2, 3, 1))
    fit, held = slice(0, 60), slice(60, 90)
    known = masks[fit] != 255
    centroids = np.stack([x[fit][known & (masks[fit] == k)].mean(axis=0) for k in range(4)])
    test_x, test_y = x[held][masks[held] != 255], masks[held][masks[held] != 255]
    predicted = np.argmin(((test_x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy, majority = (predicted == test_y).mean(), np.bincount(test_y).max() / len(test_y)
    assert accuracy > 0.6 and accuracy > majority + 0.25, (accuracy, majority)


def test_synthetic_masks_follow_tiles(tmp_path):
    from ssl_rs.data.synth import synthesize

    path = synthesize(tmp_path / "t.h5", n=36, size=8, tiles=3, dates=2, num_classes=3, masks=True, progress=False)
    ds = GeoDataset(path)
    assert ds.has_mask and ds[0]["mask"].shape == (8, 8)
    scene = ds.read_masks(range(9)).reshape(3, 3, 8, 8).transpose(0, 2, 1, 3).reshape(24, 24)
    other_date = ds.read_masks(range(9, 18)).reshape(3, 3, 8, 8).transpose(0, 2, 1, 3).reshape(24, 24)
    assert np.array_equal(scene, other_date)  # the dates of a place show the same ground


def test_synthetic_default_has_no_masks(tiny_world):
    with h5py.File(tiny_world) as f:
        assert "mask" not in f and "mask_classes" not in f.attrs
