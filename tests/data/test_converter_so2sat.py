"""So2Sat LCZ42 converter, end to end through ``ssl-rs data convert so2sat`` on tiny fabricated
HDF5 files with the published dataset names, dtypes and shapes (sen1 (N, 32, 32, 8), sen2
(N, 32, 32, 10) float64 reflectance, label (N, 17) float64 one-hot)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from ssl_rs.cli import main
from ssl_rs.data.converters import CONVERTERS
from ssl_rs.data.converters import so2sat
from ssl_rs.data.converters.so2sat import LCZ_CLASSES, SO2SAT_BANDS
from ssl_rs.data.dataset import GeoDataset
from ssl_rs.data.layout import check_file


def write_so2sat(path: Path, n: int, seed: int, *, sen2=None, label=None, drop=()) -> dict:
    """One So2Sat file: reflectance = DN / 10000 (as the authors store it); returns what it holds."""
    rng = np.random.default_rng(seed)
    dn = rng.integers(0, 12000, (n, 32, 32, 10))
    classes = rng.integers(0, 17, n)
    data = {
        "sen1": rng.normal(size=(n, 32, 32, 8)),
        "sen2": dn / 10000.0 if sen2 is None else sen2,
        "label": np.eye(17)[classes] if label is None else label,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            if key not in drop:
                f.create_dataset(key, data=value)
    return {"dn": dn, "classes": classes}


def v2_source(root: Path, sizes=(5, 3, 4)) -> dict:
    return {name: write_so2sat(root / f"{name}.h5", n, seed)
            for seed, (name, n) in enumerate(zip(("training", "validation", "testing"), sizes))}


def convert(capsys, src: Path, out: Path, *flags: str):
    rc = main(["data", "convert", "so2sat", str(src), "-o", str(out), *flags])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def strings(ds) -> list:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[:]]


def assert_one_line_error(rc: int, err: str, *parts: str) -> None:
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("ssl-rs: error:")]
    assert len(lines) == 1, err
    for part in parts:
        assert part in lines[0], lines[0]


# ----------------------------------------------------------------------------- v2


def test_v2_end_to_end(tmp_path, capsys):
    src, out = tmp_path / "so2sat", tmp_path / "so2sat.h5"
    held = v2_source(src)
    rc, stdout, err = convert(capsys, src, out)
    assert rc == 0, err
    assert "wrote" in stdout and "12 samples, 10 bands, 32x32 px" in stdout
    info = check_file(out)
    assert info["n"] == 12 and info["bands"] == SO2SAT_BANDS and info["size"] == [32, 32] and info["gsd"] == 10.0
    assert info["classes"] == LCZ_CLASSES and len(LCZ_CLASSES) == 17
    assert info["splits"] == {"official": {"train": 5, "val": 3, "test": 4}}
    with h5py.File(out) as f:
        assert "lat" not in f and "lon" not in f  # So2Sat has no per-patch coordinates
        assert f["images"].dtype == np.uint16
        assert f.attrs["release"] == "v2" and f.attrs["product"] == "L1C"
        names = strings(f["name"])
        assert names == [f"training_{i}" for i in range(5)] + [f"validation_{i}" for i in range(3)] \
            + [f"testing_{i}" for i in range(4)]
        images, labels = f["images"][:], f["label"][:]
    dn = np.concatenate([held[k]["dn"] for k in ("training", "validation", "testing")])
    classes = np.concatenate([held[k]["classes"] for k in ("training", "validation", "testing")])
    # (N, H, W, C) reflectance -> (N, C, H, W) DN: band i of the file is SO2SAT_BANDS[i]
    np.testing.assert_array_equal(images, dn.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(labels, classes)
    # an evaluation-only file: the official splits, no locations
    val = GeoDataset(out, split="val")
    assert len(val) == 3 and not val.has_location
    item = val[1]
    np.testing.assert_array_equal(np.asarray(item["image"]), held["validation"]["dn"][1].transpose(2, 0, 1))
    assert int(item["label"]) == held["validation"]["classes"][1]


def test_band_and_class_names_are_the_published_ones():
    # the authors' description of sen2: B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12 (torchgeo agrees)
    assert SO2SAT_BANDS == ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    assert LCZ_CLASSES[0] == "Compact high-rise" and LCZ_CLASSES[9] == "Heavy industry"
    assert LCZ_CLASSES[10] == "Dense trees" and LCZ_CLASSES[-1] == "Water"


def test_scaling_rounds_and_names_the_band(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out.h5"
    v2_source(src)
    sen2 = np.full((2, 32, 32, 10), 0.0123)  # 0.0123 * 10000 = 122.99999999999999: rounds to 123
    sen2[1, 3, 4] = np.arange(10) / 10000.0 + 0.5  # band i of row 1 at pixel (3, 4): 5000 + i
    sen2[0, 0, 0, 9] = 6.5535  # the largest value that fits
    write_so2sat(src / "testing.h5", 2, 9, sen2=sen2)
    rc, _, err = convert(capsys, src, out)
    assert rc == 0, err
    with h5py.File(out) as f:
        test = f["images"][-2:]
    assert test[0, 0, 5, 5] == 123 and test[0, 9, 0, 0] == 65535
    for i, band in enumerate(SO2SAT_BANDS):
        assert test[1, SO2SAT_BANDS.index(band), 3, 4] == 5000 + i


# ----------------------------------------------------------------------------- v3


def v3_source(root: Path) -> dict:
    """random/ and block/ hold different partitions (and row orders) of the patches."""
    return {
        "random": {"training": write_so2sat(root / "random" / "training.h5", 6, 10),
                   "testing": write_so2sat(root / "random" / "testing.h5", 2, 11)},
        "block": {"training": write_so2sat(root / "block" / "training.h5", 5, 20),
                  "testing": write_so2sat(root / "block" / "testing.h5", 3, 21)},
    }


@pytest.mark.parametrize("split", ["random", "block"])
def test_v3_folder_is_one_file_with_its_scheme(tmp_path, capsys, split):
    src, out = tmp_path / "v3", tmp_path / f"so2sat-{split}.h5"
    held = v3_source(src)[split]
    rc, _, err = convert(capsys, src, out, "--release", "v3", "--split", split)
    assert rc == 0, err
    info = check_file(out)
    n_train, n_test = len(held["training"]["classes"]), len(held["testing"]["classes"])
    assert info["splits"] == {split: {"train": n_train, "val": 0, "test": n_test}}
    assert info["default_split"] == split
    with h5py.File(out) as f:
        assert f.attrs["release"] == "v3" and f.attrs["so2sat_split"] == split
        np.testing.assert_array_equal(f["label"][:], np.concatenate([held["training"]["classes"],
                                                                     held["testing"]["classes"]]))
        np.testing.assert_array_equal(f["images"][:n_train], held["training"]["dn"].transpose(0, 3, 1, 2))


def test_v3_sharded_keeps_the_scheme(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(so2sat, "READ_ROWS", 2)  # blocks of 2 rows: several shards from tiny files
    src, out = tmp_path / "v3", tmp_path / "shards"
    v3_source(src)
    rc, stdout, err = convert(capsys, src, out, "--release", "v3", "--split", "random", "--shard-size", "4",
                               "--workers", "2")  # spawned workers: the before_commit hook pickles
    assert rc == 0, err
    assert "8 samples in 2 shards" in stdout
    index = json.loads((out / "index.json").read_text())
    assert index["splits"] == {"random": {"train": 6, "val": 0, "test": 2}}
    assert index["default_split"] == "random"
    assert check_file(out)["n"] == 8


@pytest.mark.parametrize("flags, message", [
    (["--release", "v3"], "--release v3 needs --split random|block|culture_10 (the folder of"),
    (["--split", "random"], "--split random is for --release v3"),
    (["--release", "v3", "--split", "culture_10"], "culture_10: source: directory not found"),
])
def test_v3_split_is_required_and_explicit(tmp_path, capsys, flags, message):
    src = tmp_path / "v3"
    v3_source(src)
    rc, _, err = convert(capsys, src, tmp_path / "out.h5", *flags)
    assert_one_line_error(rc, err, message)
    assert not (tmp_path / "out.h5").exists()


def test_unknown_split_is_refused_by_the_cli(tmp_path, capsys):
    v3_source(tmp_path / "v3")
    with pytest.raises(SystemExit) as e:
        main(["data", "convert", "so2sat", str(tmp_path / "v3"), "-o", str(tmp_path / "o.h5"),
              "--release", "v3", "--split", "culture10"])
    assert e.value.code == 2 and "invalid choice: 'culture10'" in capsys.readouterr().err


def test_converter_options_are_declared():
    options = {o.name: o for o in CONVERTERS.get("so2sat").options}
    assert options["release"].choices == ("v2", "v3") and options["release"].default == "v2"
    assert options["split"].choices == ("random", "block", "culture_10") and options["split"].default is None
    assert options["out_of_range"].choices == ("error", "clip")


# ----------------------------------------------------------------------------- memory


def test_files_are_read_in_bounded_blocks(tmp_path, capsys, monkeypatch):
    """The real training.h5 is ~50 GB: every read of sen2/label is at most READ_ROWS rows."""
    monkeypatch.setattr(so2sat, "READ_ROWS", 4)
    src = tmp_path / "src"
    v2_source(src, sizes=(10, 3, 5))
    reads = []
    original = h5py.Dataset.__getitem__

    def recording(self, key):
        value = original(self, key)
        if Path(self.file.filename).parent == src:  # reads of the source files (not of the output)
            reads.append((self.name, np.shape(value)[0] if np.ndim(value) else 0))
        return value

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
    rc, _, err = convert(capsys, src, tmp_path / "out.h5")
    assert rc == 0, err
    assert reads and max(rows for _, rows in reads) <= 4
    assert not any(name == "/sen1" for name, _ in reads)  # Sentinel-1 is never read
    assert sum(rows for name, rows in reads if name == "/sen2") == 18  # each row once
    plan = so2sat.plan_so2sat(src)
    assert [item[2:] for item in plan.items[:3]] == [(0, 4), (4, 8), (8, 10)]
    assert list(plan.counts()) == [4, 4, 2, 3, 4, 1]


# ----------------------------------------------------------------------------- errors


def _sen2(n=3, value=0.1, at=None, bad=None):
    """Reflectance 0.1 everywhere, ``bad`` at index ``at`` (row, y, x, band)."""
    sen2 = np.full((n, 32, 32, 10), value)
    if at is not None:
        sen2[at] = bad
    return sen2


BAD_FILES = {
    "no sen2": (dict(drop=("sen2",)), ["testing.h5: sen2: dataset missing", "found label, sen1"]),
    "no label": (dict(drop=("label",)), ["testing.h5: label: dataset missing"]),
    "two ones": (dict(label=np.eye(17)[[0, 1, 2]] + np.eye(17)[[0, 5, 2]] * [[0], [1], [0]]),
                 ["testing.h5: label: row 1 is not one-hot", "nonzero columns {1: 1.0, 5: 1.0}"]),
    "all zeros": (dict(label=np.eye(17)[[0, 1, 2]] * np.array([[1], [1], [0]])),
                  ["testing.h5: label: row 2 is not one-hot (all zeros"]),
    "soft label": (dict(label=np.eye(17)[[0, 1, 2]] * 0.5 + np.eye(17)[[0, 0, 0]] * 0.5),
                   ["testing.h5: label: row 1 is not one-hot"]),
    "short label": (dict(label=np.eye(17)[[0, 1]]), ["testing.h5: label: 2 rows but sen2 has 3"]),
    "17 classes": (dict(label=np.eye(16)[[0, 1, 2]]), ["testing.h5: label: shape (3, 16), expected (N, 17)"]),
    "sen2 shape": (dict(sen2=np.zeros((3, 32, 32, 13))),
                   ["testing.h5: sen2: shape (3, 32, 32, 13), expected (N, 32, 32, 10)"]),
    "sen2 uint16": (dict(sen2=np.zeros((3, 32, 32, 10), np.uint16)),
                    ["testing.h5: sen2: dtype uint16, expected float"]),
    "negative": (dict(sen2=_sen2(at=(1, 2, 3, 4), bad=-0.1)),
                 ["testing.h5: sen2: row 1 band B06 pixel (2, 3) is -0.1", "--out-of-range clip"]),
    "too bright": (dict(sen2=_sen2(value=6.6)), ["testing.h5: sen2: row 0 band B02 pixel (0, 0) is 6.6",
                                                 "does not fit uint16"]),
    "nan": (dict(sen2=_sen2(at=(0, 5, 6, 8), bad=np.nan)),
            ["row 0 band B11 pixel (5, 6) is NaN, which x 10000 does not fit uint16"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_a_one_line_error_and_leaves_nothing(tmp_path, capsys, case):
    src, out = tmp_path / "src", tmp_path / "out" / "so2sat.h5"
    out.parent.mkdir()
    v2_source(src)
    kwargs, parts = BAD_FILES[case]
    write_so2sat(src / "testing.h5", 3, 7, **kwargs)
    rc, _, err = convert(capsys, src, out)
    assert_one_line_error(rc, err, *parts)
    assert sorted(out.parent.iterdir()) == [], "a failed convert left files behind"


def test_missing_and_unreadable_files(tmp_path, capsys):
    src = tmp_path / "src"
    v2_source(src)
    (src / "validation.h5").unlink()
    rc, _, err = convert(capsys, src, tmp_path / "out.h5")
    assert_one_line_error(rc, err, f"{src}: files: no validation.h5 ",
                          "(So2Sat LCZ42 v2 has training.h5, validation.h5, testing.h5)")
    (src / "validation.h5").write_text("not hdf5")
    rc, _, err = convert(capsys, src, tmp_path / "out.h5")
    assert_one_line_error(rc, err, "validation.h5: not a readable HDF5 file")
    assert not (tmp_path / "out.h5").exists()


def test_out_of_range_clip_warns_and_clips(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out.h5"
    v2_source(src)
    sen2 = _sen2()
    sen2[0, 0, 0, 0], sen2[2, 1, 1, 1] = -0.01, 7.0
    write_so2sat(src / "testing.h5", 3, 7, sen2=sen2)
    rc, _, err = convert(capsys, src, out, "--out-of-range", "clip")
    assert rc == 0, err
    assert "testing.h5: sen2: rows 0-2: 2 values outside 0..6.5535 clipped" in err
    with h5py.File(out) as f:
        test = f["images"][-3:]
    assert test[0, 0, 0, 0] == 0 and test[2, 1, 1, 1] == 65535 and test[1, 0, 0, 0] == 1000
    # NaN has no clipped value: still an error
    write_so2sat(src / "testing.h5", 3, 7, sen2=_sen2(at=(0, 0, 0, 0), bad=np.nan))
    rc, _, err = convert(capsys, src, tmp_path / "out2.h5", "--out-of-range", "clip")
    assert_one_line_error(rc, err, "band B02 pixel (0, 0) is NaN")
