"""The BigEarthNet v2.0 (reBEN) converter on a small source fabricated in the release's layout:
``metadata.parquet`` (+ the flagged patches' parquet file) and
``BigEarthNet-S2/<tile>/<patch_id>/<patch_id>_<band>.tif``, 12 uint16 UTM GeoTIFFs per patch."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

import h5py
import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from ssl_rs.cli import main
from ssl_rs.data.bands import S2_BANDS_L2A, S2_GSD
from ssl_rs.data.converters import convert
from ssl_rs.data.converters.bigearthnet import CLASSES_19
from ssl_rs.data.converters.bigearthnet_v2 import FLAGGED_METADATA, METADATA, plan_bigearthnet_v2
from ssl_rs.data.reader import check_file
from ssl_rs.errors import ConfigError, DataError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# the columns of the release's metadata files, in their order and types
# (kai-tub/bigearthnet-pipeline, nu-scripts/ben-metadata-finalizer.sql)
SCHEMA = pa.schema([
    ("patch_id", pa.string()), ("labels", pa.list_(pa.string())), ("split", pa.string()),
    ("country", pa.string()), ("s1_name", pa.string()), ("s2v1_name", pa.string()),
    ("contains_seasonal_snow", pa.bool_()), ("contains_cloud_or_shadow", pa.bool_()),
])

# patch id, EPSG code, upper-left corner (UTM metres), split, labels (sorted, as the release lists them),
# country, snow, cloud/shadow
PATCHES = [
    ("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57", 32633, (331200.0, 5301600.0), "train",
     ["Complex cultivation patterns", "Industrial or commercial units", "Urban fabric"], "Austria", False, False),
    ("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_58", 32633, (332400.0, 5301600.0), "train",
     ["Broad-leaved forest", "Mixed forest", "Transitional woodland, shrub"], "Austria", False, False),
    ("S2B_MSIL2A_20170615T102019_N9999_R122_T32TNS_45_23", 32632, (527600.0, 5146800.0), "validation",
     ["Arable land", "Inland waters", "Pastures"], "Switzerland", False, False),
    ("S2A_MSIL2A_20171221T112501_N9999_R037_T29SMC_41_60", 32629, (493200.0, 4291200.0), "test",
     ["Beaches, dunes, sands", "Marine waters", "Urban fabric"], "Portugal", False, False),
    # flagged: listed in the second metadata file, as in the release
    ("S2B_MSIL2A_20180204T094159_N9999_R036_T35VNL_12_40", 32635, (514400.0, 6975600.0), "train",
     ["Coniferous forest", "Inland wetlands"], "Finland", True, False),
]
FLAGGED = {p[0] for p in PATCHES if p[6] or p[7]}


def tile_of(patch: str) -> str:
    return patch.rsplit("_", 2)[0]


def band_values(patch_index: int, band_index: int, n: int) -> np.ndarray:
    """Distinct, recognisable pixels: band index in the thousands, patch in the hundreds."""
    rng = np.random.default_rng(patch_index * 100 + band_index)
    return (1000 * (band_index + 1) + 100 * patch_index + rng.integers(0, 50, (n, n))).astype(np.uint16)


def write_band(path: Path, array: np.ndarray, epsg: int, corner, gsd: int) -> None:
    profile = dict(driver="GTiff", height=array.shape[0], width=array.shape[1], count=1, dtype="uint16",
                   crs=f"EPSG:{epsg}", transform=Affine(gsd, 0, corner[0], 0, -gsd, corner[1]))
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(array, 1)


def metadata_table(rows) -> pa.Table:
    return pa.Table.from_pylist([
        dict(patch_id=p, labels=labels, split=split, country=country,
             s1_name=f"S1A_IW_GRDH_1SDV_{p.split('_')[2]}_{tile_of(p)[-5:]}_{'_'.join(p.split('_')[-2:])}",
             s2v1_name=f"{'_'.join(p.split('_')[:3])}_{'_'.join(p.split('_')[-2:])}",
             contains_seasonal_snow=snow, contains_cloud_or_shadow=cloud)
        for p, _, _, split, labels, country, snow, cloud in rows
    ], schema=SCHEMA)


def write_metadata(path: Path, rows) -> Path:
    pq.write_table(metadata_table(rows), path, compression="zstd")
    return path


def fabricate_ben_v2(root: Path, patches=PATCHES) -> Path:
    """A BigEarthNet v2.0 source folder: both metadata files and the 12 band files of every patch
    at their native sizes (10 m: 120 px, 20 m: 60 px, 60 m: 20 px)."""
    root.mkdir(parents=True)
    for i, (patch, epsg, corner, *_rest) in enumerate(patches):
        folder = root / "BigEarthNet-S2" / tile_of(patch) / patch
        folder.mkdir(parents=True)
        for b, band in enumerate(S2_BANDS_L2A):
            gsd = S2_GSD[band]
            write_band(folder / f"{patch}_{band}.tif", band_values(i, b, 1200 // gsd), epsg, corner, gsd)
    write_metadata(root / METADATA, [p for p in patches if p[0] not in FLAGGED])
    flagged = [p for p in patches if p[0] in FLAGGED]
    if flagged:
        write_metadata(root / FLAGGED_METADATA, flagged)
    return root


def strings(ds) -> List[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[:]]


def expected_centre(epsg: int, corner) -> tuple:
    lon, lat = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True).transform(
        corner[0] + 600.0, corner[1] - 600.0)
    return lat, lon


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return fabricate_ben_v2(tmp_path_factory.mktemp("benv2") / "reBEN")


def copy_source(source: Path, dst: Path) -> Path:
    shutil.copytree(source, dst)
    return dst


def cli_error(args, capsys) -> str:
    """The one stderr line of a failed ``ssl-rs`` call (exit 2, no traceback)."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# ----------------------------------------------------------------------------- conversion


def test_cli_converts_the_release_layout(source, tmp_path, capsys):
    out = tmp_path / "ben2.h5"
    assert main(["data", "convert", "bigearthnet-v2", str(source), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    info = check_file(out)
    assert info["n"] == 5 and info["bands"] == S2_BANDS_L2A and info["size"] == [120, 120] and info["gsd"] == 10.0
    assert info["classes"] == CLASSES_19 and info["task"] == "multi-label"
    assert info["splits"]["official"] == {"train": 3, "val": 1, "test": 1}
    by_id = {p[0]: (i, p) for i, p in enumerate(PATCHES)}
    with h5py.File(out) as f:
        names = strings(f["name"])
        assert names == sorted(by_id)
        assert f.attrs["snow_cloud"] == "keep" and f.attrs["dropped_snow_cloud"] == 0
        assert list(f.attrs["metadata"]) == [METADATA, FLAGGED_METADATA]
        splits = f["splits/official"][:]
        for row, name in enumerate(names):
            i, (patch, epsg, corner, split, labels, *_rest) = by_id[name]
            assert [CLASSES_19[j] for j in np.flatnonzero(f["labels"][row])] == sorted(labels, key=CLASSES_19.index)
            assert ("train", "val", "test")[splits[row]] == {"validation": "val"}.get(split, split)
            day = patch.split("_")[2][:8]
            assert strings(f["time"])[row] == f"{day[:4]}-{day[4:6]}-{day[6:]}"
            lat, lon = expected_centre(epsg, corner)
            assert abs(f["lat"][row] - lat) < 1e-9 and abs(f["lon"][row] - lon) < 1e-9
            image = f["images"][row]
            assert image.dtype == np.uint16
            # 10 m bands pass through unchanged, each band lands at its canonical index
            for band in ("B02", "B08"):
                b = S2_BANDS_L2A.index(band)
                np.testing.assert_array_equal(image[b], band_values(i, b, 120))
            for band in ("B01", "B8A", "B12"):  # upsampled from 20 / 60 px: values stay in the band's range
                b = S2_BANDS_L2A.index(band)
                low = 1000 * (b + 1) + 100 * i
                assert low <= image[b].min() and image[b].max() < low + 50, band
    # places: Finland ~63 N 27 E, Portugal ~38.8 N 9.1 W
    with h5py.File(out) as f:
        at = {n: k for k, n in enumerate(strings(f["name"]))}
        finland = at["S2B_MSIL2A_20180204T094159_N9999_R036_T35VNL_12_40"]
        assert 62 < f["lat"][finland] < 64 and 26 < f["lon"][finland] < 29
        portugal = at["S2A_MSIL2A_20171221T112501_N9999_R037_T29SMC_41_60"]
        assert 38 < f["lat"][portugal] < 39.5 and -9.5 < f["lon"][portugal] < -8.5


def test_drop_snow_cloud(source, tmp_path):
    out = tmp_path / "clean.h5"
    assert main(["data", "convert", "bigearthnet-v2", str(source), "-o", str(out), "--snow-cloud", "drop"]) == 0
    with h5py.File(out) as f:
        assert set(strings(f["name"])) == {p[0] for p in PATCHES} - FLAGGED
        assert f.attrs["snow_cloud"] == "drop" and list(f.attrs["metadata"]) == [METADATA]
    # a metadata.parquet that lists flagged patches itself: they are dropped from it too
    src = copy_source(source, tmp_path / "src")
    write_metadata(src / METADATA, PATCHES)
    (src / FLAGGED_METADATA).unlink()
    with h5py.File(convert("bigearthnet-v2", src, tmp_path / "one.h5", snow_cloud="drop", progress=False)) as f:
        assert set(strings(f["name"])) == {p[0] for p in PATCHES} - FLAGGED and f.attrs["dropped_snow_cloud"] == 1


def test_sharded_with_workers_matches_one_file(source, tmp_path):
    one = convert("bigearthnet-v2", source, tmp_path / "one.h5", progress=False)
    shards = convert("bigearthnet-v2", source, tmp_path / "shards", shard_size=2, workers=2, progress=False)
    info = check_file(shards)
    assert info["n"] == 5 and info["shards"] == 3 and info["splits"]["official"] == {"train": 3, "val": 1, "test": 1}
    with h5py.File(one) as f:
        names, images = strings(f["name"]), f["images"][:]
    got = {}
    for shard in sorted(shards.glob("*.h5")):
        with h5py.File(shard) as g:
            got.update(zip(strings(g["name"]), g["images"][:]))
    assert sorted(got) == names
    for name, image in zip(names, images):
        np.testing.assert_array_equal(got[name], image)


def test_only_the_columns_torchgeo_fabricates(source, tmp_path):
    """patch_id, labels, split, s1_name (no flags): converts; dropping flagged patches needs the flags."""
    src = copy_source(source, tmp_path / "src")
    (src / FLAGGED_METADATA).unlink()
    table = metadata_table(CLEAN).select(["patch_id", "s1_name", "split", "labels"])
    pq.write_table(table, src / METADATA)
    assert check_file(convert("bigearthnet-v2", src, tmp_path / "x.h5", progress=False))["n"] == 4
    with pytest.raises(DataError, match=(f"^{src / METADATA}: columns: missing contains_seasonal_snow, "
                                         r"contains_cloud_or_shadow \(needed to drop flagged patches\); found ")):
        convert("bigearthnet-v2", src, tmp_path / "y.h5", snow_cloud="drop", progress=False)
    assert not (tmp_path / "y.h5").exists()


# ----------------------------------------------------------------------------- bad input


def test_missing_metadata(source, tmp_path, capsys):
    src = copy_source(source, tmp_path / "src")
    (src / METADATA).unlink()
    err = cli_error(["data", "convert", "bigearthnet-v2", str(src), "-o", str(tmp_path / "x.h5")], capsys)
    assert err.startswith(f"ssl-rs: error: {src / METADATA}: files: not found (a BigEarthNet v2.0 source folder")
    # pointing at BigEarthNet-S2 itself: the folder above is suggested
    with pytest.raises(DataError, match=f"; give the folder above it, {source}$"):
        convert("bigearthnet-v2", source / "BigEarthNet-S2", tmp_path / "x.h5", progress=False)
    assert not (tmp_path / "x.h5").exists()


def test_missing_band_leaves_no_output(source, tmp_path, capsys):
    src = copy_source(source, tmp_path / "src")
    patch = PATCHES[2][0]
    missing = src / "BigEarthNet-S2" / tile_of(patch) / patch / f"{patch}_B8A.tif"
    missing.unlink()
    (tmp_path / "out").mkdir()
    err = cli_error(["data", "convert", "bigearthnet-v2", str(src), "-o", str(tmp_path / "out" / "x.h5")], capsys)
    assert err == f"ssl-rs: error: {missing}: bands: file for band B8A is missing"
    assert list((tmp_path / "out").iterdir()) == []  # the patches before it went to a temporary file


def test_patches_missing_on_disk(source, tmp_path, capsys):
    src = copy_source(source, tmp_path / "src")
    gone = sorted(p[0] for p in PATCHES[:3])
    for patch in gone:
        shutil.rmtree(src / "BigEarthNet-S2" / tile_of(patch) / patch)
    err = cli_error(["data", "convert", "bigearthnet-v2", str(src), "-o", str(tmp_path / "x.h5")], capsys)
    s2 = src / "BigEarthNet-S2"
    assert err == (f"ssl-rs: error: {s2}: patches: 3 of the 5 patches listed in {METADATA} and {FLAGGED_METADATA} "
                   f"are missing (first: {s2 / tile_of(gone[0]) / gone[0]})")
    shutil.rmtree(s2)
    with pytest.raises(DataError, match=f"^{s2}: files: not found"):
        convert("bigearthnet-v2", src, tmp_path / "x.h5", progress=False)
    assert not (tmp_path / "x.h5").exists()


def edited(rows, index: int, **changes):
    """``rows`` with the fields of row ``index`` replaced (split=..., labels=..., patch_id=...)."""
    fields = ["patch_id", "epsg", "corner", "split", "labels", "country", "snow", "cloud"]
    rows = [list(r) for r in rows]
    for key, value in changes.items():
        rows[index][fields.index(key)] = value
    return [tuple(r) for r in rows]


CLEAN = [p for p in PATCHES if p[0] not in FLAGGED]


@pytest.mark.parametrize("changes, message", [
    # a v1.0 (43-class) name where the 19-class nomenclature is expected
    (dict(labels=["Non-irrigated arable land", "Pastures"]),
     "labels: unknown BigEarthNet 19-class name 'Non-irrigated arable land' (patch {patch})"),
    (dict(split="val"), "split: patch {patch} has 'val', expected one of train, validation, test"),
    (dict(patch_id="S2A_MSIL2A_20170617T113321_36_85"),  # a v1.0 patch name
     "patch_id: 'S2A_MSIL2A_20170617T113321_36_85' is not a BigEarthNet v2.0 Sentinel-2 patch id"),
    (dict(patch_id="S2A_MSIL2A_20171313T101031_N9999_R022_T33UUP_1_1"),
     "patch_id: S2A_MSIL2A_20171313T101031_N9999_R022_T33UUP_1_1 holds no valid date (20171313)"),
])
def test_bad_metadata_values(source, tmp_path, changes, message):
    src = copy_source(source, tmp_path / "src")
    rows = edited(CLEAN, 1, **changes)
    if "patch_id" in changes:  # give the renamed patch its folder, so only its name is wrong
        old, new = CLEAN[1][0], changes["patch_id"]
        folder = src / "BigEarthNet-S2" / tile_of(new) / new
        folder.parent.mkdir(exist_ok=True)
        (src / "BigEarthNet-S2" / tile_of(old) / old).rename(folder)
    write_metadata(src / METADATA, rows)
    expected = f"{src / METADATA}: " + message.format(patch=rows[1][0])
    with pytest.raises(DataError) as err:
        convert("bigearthnet-v2", src, tmp_path / "x.h5", progress=False)
    assert str(err.value).startswith(expected), str(err.value)
    assert not (tmp_path / "x.h5").exists()


def test_missing_column_duplicate_and_corrupt_parquet(source, tmp_path):
    src = copy_source(source, tmp_path / "src")
    pq.write_table(metadata_table(CLEAN).drop(["split"]), src / METADATA)
    with pytest.raises(DataError, match=f"^{src / METADATA}: columns: missing split; found patch_id, labels, country"):
        convert("bigearthnet-v2", src, tmp_path / "x.h5", progress=False)
    # a patch listed in both files
    write_metadata(src / METADATA, CLEAN + [p for p in PATCHES if p[0] in FLAGGED])
    flagged = sorted(FLAGGED)[0]
    with pytest.raises(DataError, match=f"^{src / FLAGGED_METADATA}: patch_id: {flagged} is listed twice "
                                        rf"\(also in {METADATA}\)$"):
        convert("bigearthnet-v2", src, tmp_path / "x.h5", progress=False)
    # an empty metadata file; every patch flagged and dropped
    write_metadata(src / METADATA, [])
    (src / FLAGGED_METADATA).unlink()
    with pytest.raises(DataError, match=f"^{src / METADATA}: patch_id: no patches listed$"):
        convert("bigearthnet-v2", src, tmp_path / "x.h5", progress=False)
    write_metadata(src / METADATA, [p for p in PATCHES if p[0] in FLAGGED])
    with pytest.raises(DataError, match="no patches listed after dropping the patches flagged with snow or cloud"):
        convert("bigearthnet-v2", src, tmp_path / "x.h5", snow_cloud="drop", progress=False)
    # a truncated download
    data = (source / METADATA).read_bytes()
    (src / METADATA).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"^{src / METADATA}: parquet: cannot be read"):
        convert("bigearthnet-v2", src, tmp_path / "x.h5", progress=False)
    assert not (tmp_path / "x.h5").exists()


def test_pyarrow_missing_names_the_extra(source, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)  # `import pyarrow.parquet` fails
    err = cli_error(["data", "convert", "bigearthnet-v2", str(source), "-o", str(tmp_path / "x.h5")], capsys)
    assert err == ("ssl-rs: error: bigearthnet-v2: reading metadata.parquet needs pyarrow, which is not installed "
                   "(pip install 'ssl-rs[parquet]')")
    assert not (tmp_path / "x.h5").exists()


def test_bad_option(source, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"snow_cloud='remove' must be one of \['keep', 'drop'\]"):
        convert("bigearthnet-v2", source, tmp_path / "x.h5", snow_cloud="remove")
    with pytest.raises(ConfigError, match="snow_cloud must be one of"):
        plan_bigearthnet_v2(source, snow_cloud="yes")
    with pytest.raises(SystemExit) as exit:  # argparse refuses the choice
        main(["data", "convert", "bigearthnet-v2", str(source), "-o", str(tmp_path / "x.h5"), "--snow-cloud", "remove"])
    assert exit.value.code == 2 and "--snow-cloud: invalid choice: 'remove'" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()
