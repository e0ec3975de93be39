"""Segmentation converters (``geotiff-masks``, ``cashew-benin``) on fabricated files that follow
their layouts: chips, masks, no-data, georeferencing and the error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
from affine import Affine

from ssl_rs.data.converters import convert
from ssl_rs.data.converters.segmentation_tiles import (
    CASHEW_CLASSES, CASHEW_FILE_BANDS, MASK_NODATA, chip_offsets, chip_windows,
)
from ssl_rs.data.dataset import GeoDataset
from ssl_rs.errors import ConfigError, DataError

from test_converters import write_tif  # the converter tests' GeoTIFF writer (same folder)

CRS = "EPSG:32631"
# the Benin tile's georeferencing (torchgeo's test data for BeninSmallHolderCashews)
CASHEW_TRANSFORM = Affine(10.002549584378608, 0.0, 440853.29890114715, 0.0, -9.99842989423825, 1012804.082877621)


def strings(values) -> list:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


# ----------------------------------------------------------------------------- chipping
@pytest.mark.parametrize("length,chip,stride,expected", [
    (10, 4, 4, [0, 4, 6]),       # the last chip is flush with the edge
    (8, 4, 4, [0, 4]),
    (1186, 256, 128, list(range(0, 930, 128)) + [930]),
    (4, 4, 2, [0]),
    (3, 4, 2, []),
])
def test_chip_offsets_cover_the_tile(length, chip, stride, expected):
    assert chip_offsets(length, chip, stride) == expected


def test_chip_windows_match_torchgeo_count():
    # torchgeo's BeninSmallHolderCashews: rows 0, 128 .. 896, 930 and columns 0, 128 .. 768, 866
    assert len(chip_windows(1186, 1122, 256, 128)) == 9 * 8


# ----------------------------------------------------------------------------- generic tiles + masks
def tile_pair(root: Path, stem: str, rng, size=(20, 24), classes=3, x0=600000.0, bands=4, nodata_box=True):
    transform = Affine(10, 0, x0, 0, -10, 5500000)
    image = rng.integers(0, 5000, size=(bands,) + size, dtype=np.uint16)
    mask = rng.integers(0, classes, size=size).astype(np.uint8)
    if nodata_box:
        mask[:2, :2] = MASK_NODATA
    write_tif(root / "images" / f"{stem}.tif", image, transform, CRS)
    write_tif(root / "masks" / f"{stem}.tif", mask, transform, CRS)
    return image, mask


def test_geotiff_masks_whole_tiles_with_splits(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    expected = {}
    for split, stems in (("train", ["a", "b"]), ("test", ["c"])):
        for i, stem in enumerate(stems):
            expected[stem] = tile_pair(src / split, stem, rng, x0=600000.0 + 1000 * len(expected)) + (split,)
    out = convert("geotiff-masks", src, tmp_path / "tiles.h5", progress=False,
                  bands="B02,B03,B04,B08", classes="soil,crop,water")
    with h5py.File(out) as f:
        assert strings(f.attrs["mask_classes"]) == ["soil", "crop", "water"]
        assert int(f.attrs["mask_nodata"]) == MASK_NODATA
        assert f["mask"].dtype == np.uint8 and f["mask"].shape == (3, 20, 24)
        names = strings(f["name"][:])
        for i, name in enumerate(names):
            image, mask, split = expected[name]
            np.testing.assert_array_equal(f["images"][i], image)
            np.testing.assert_array_equal(f["mask"][i], mask)
    ds = GeoDataset(out, split="test")
    assert len(ds) == 1 and ds.has_mask and ds.mask_classes == ["soil", "crop", "water"]
    item = ds[0]
    assert item["mask"].dtype.is_floating_point is False and tuple(item["mask"].shape) == (20, 24)
    assert 40 < float(item["lat"]) < 55 and 0 < float(item["lon"]) < 6  # UTM 31N near 600 km E, 5500 km N


def test_geotiff_masks_chips_and_band_descriptions(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    image, mask = tile_pair(src, "big", rng, size=(10, 12), nodata_box=False)
    with rasterio.open(src / "images" / "big.tif", "r+") as ds:
        ds.descriptions = ("B02", "B03", "B04", "B8A")
    out = convert("geotiff-masks", src, tmp_path / "chips.h5", progress=False, classes="a,b,c",
                  chip_size=4, stride=4)
    with h5py.File(out) as f:
        assert strings(f.attrs["bands"]) == ["B02", "B03", "B04", "B8A"]
        names = strings(f["name"][:])
        assert len(names) == 3 * 3  # rows 0, 4, 6 x cols 0, 4, 8
        i = names.index("big_r6_c8")
        np.testing.assert_array_equal(f["images"][i], image[:, 6:10, 8:12])
        np.testing.assert_array_equal(f["mask"][i], mask[6:10, 8:12])
        lat = f["lat"][:]
        assert lat[names.index("big_r0_c0")] > lat[names.index("big_r6_c0")]  # north up


@pytest.mark.parametrize("case,options,error,match", [
    ("no classes", dict(bands="B02,B03,B04,B08"), ConfigError, "--classes"),
    ("nodata is a class", dict(bands="B02,B03,B04,B08", classes="a,b,c", nodata=1), ConfigError, "--nodata: 1 is the index of class 'b'"),
    ("unnamed bands", dict(classes="a,b,c"), ConfigError, "--bands: .* has 4 bands without names"),
    ("wrong band count", dict(bands="B02,B03", classes="a,b,c"), DataError, "4 bands in the file, 2 named"),
    ("mask value", dict(bands="B02,B03,B04,B08", classes="a,b"), DataError, r"mask: value 2 is neither a class index \(0 .. 1\)"),
])
def test_geotiff_masks_bad_input(tmp_path, case, options, error, match):
    src = tmp_path / "src"
    tile_pair(src, "a", np.random.default_rng(2))
    with pytest.raises(error, match=match):
        convert("geotiff-masks", src, tmp_path / "out" / "x.h5", progress=False, **options)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_geotiff_masks_pairing_errors(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    tile_pair(src, "a", rng)
    (src / "masks" / "a.tif").rename(src / "masks" / "b.tif")
    with pytest.raises(DataError, match=r"a.tif: mask: no mask"):
        convert("geotiff-masks", src, tmp_path / "x.h5", progress=False, bands="B02,B03,B04,B08", classes="a,b,c")
    tile_pair(src, "a", rng)
    with pytest.raises(DataError, match=r"b.tif: image: no image for this mask"):
        convert("geotiff-masks", src, tmp_path / "x.h5", progress=False, bands="B02,B03,B04,B08", classes="a,b,c")
    (src / "masks" / "b.tif").unlink()
    write_tif(src / "masks" / "a.tif", np.zeros((20, 24), np.uint8), Affine(10, 0, 0, 0, -10, 0), CRS)
    with pytest.raises(DataError, match=r"a.tif: georeferencing: not on its image's pixel grid"):
        convert("geotiff-masks", src, tmp_path / "x.h5", progress=False, bands="B02,B03,B04,B08", classes="a,b,c")


# ----------------------------------------------------------------------------- Benin cashews
def fake_cashew(root: Path, dates=("20191105", "20191110"), size=(36, 40), cloud=(30, 5)) -> Path:
    """The torchgeo/Radiant MLHub layout: imagery/00/00_<date>/00_<date>_<band>_10m.tif + labels/00.geojson."""
    rng = np.random.default_rng(4)
    for date, cld in zip(dates, cloud):
        folder = root / "imagery" / "00" / f"00_{date}"
        for band in CASHEW_FILE_BANDS:
            write_tif(folder / f"00_{date}_{band}_10m.tif",
                      rng.integers(0, 4000, size=size, dtype=np.uint16), CASHEW_TRANSFORM, CRS)
        write_tif(folder / f"00_{date}_CLD_10m.tif", np.full(size, cld, np.uint16), CASHEW_TRANSFORM, CRS)
    # two polygons in the tile's own CRS (as the real labels, which declare EPSG:32631)
    t = CASHEW_TRANSFORM

    def box(r0, c0, r1, c1):
        corners = [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]
        return {"type": "Polygon", "coordinates": [[list(t @ (c, r)) for c, r in corners]]}

    features = [
        {"type": "Feature", "properties": {"class": 1, "class_name": "Well-managed planatation"}, "geometry": box(0, 0, 10, 20)},
        {"type": "Feature", "properties": {"class": 5, "class_name": "Background"}, "geometry": box(20, 10, 36, 40)},
    ]
    labels = root / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    (labels / "00.geojson").write_text(json.dumps({
        "type": "FeatureCollection", "name": "cashew_benin",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32631"}},
        "features": features,
    }))
    return root


def test_cashew_benin_least_cloudy_date_and_rasterised_masks(tmp_path):
    src = fake_cashew(tmp_path / "cashew")
    out = convert("cashew-benin", src, tmp_path / "cashew.h5", progress=False, chip_size=16, stride=8)
    with h5py.File(out) as f:
        times = set(strings(f["time"][:]))
        assert times == {"2019-11-10"}  # the date with the lower CLD mean
        names = strings(f["name"][:])
        assert len(names) == len(chip_windows(36, 40, 16, 8)) == 4 * 4
        masks = f["mask"][:]
        first = masks[names.index("00_20191110_r0_c0")]
        assert (first[:10, :16] == 0).all()          # class 1 (well-managed) -> 0
        assert (first[10:, :] == MASK_NODATA).all()  # outside every polygon: no data
        last = masks[names.index("00_20191110_r20_c24")]
        assert (last == 4).all()                     # class 5 (background) -> 4
    ds = GeoDataset(out)
    assert ds.mask_classes == list(CASHEW_CLASSES) and ds.mask_nodata == MASK_NODATA
    assert 8.5 < float(ds.lat[0]) < 9.5 and 2.0 < float(ds.lon[0]) < 2.8  # central Benin


def test_cashew_benin_labels_in_wgs84_are_reprojected(tmp_path):
    src = fake_cashew(tmp_path / "cashew")
    path = src / "labels" / "00.geojson"
    collection = json.loads(path.read_text())
    from pyproj import Transformer

    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    for feature in collection["features"]:
        ring = feature["geometry"]["coordinates"][0]
        feature["geometry"]["coordinates"][0] = [list(to_wgs84.transform(x, y)) for x, y in ring]
    del collection["crs"]  # RFC 7946: WGS84
    path.write_text(json.dumps(collection))
    out = convert("cashew-benin", src, tmp_path / "cashew.h5", progress=False, chip_size=16, stride=8, date="20191105")
    with h5py.File(out) as f:
        names = strings(f["name"][:])
        first = f["mask"][names.index("00_20191105_r0_c0")]
    assert (first[1:9, 1:15] == 0).all() and (first[12:, :] == MASK_NODATA).all()


def test_cashew_benin_errors(tmp_path):
    src = fake_cashew(tmp_path / "cashew")
    with pytest.raises(ConfigError, match="--date: '20200101' is not one of the 2 dates"):
        convert("cashew-benin", src, tmp_path / "x.h5", progress=False, date="20200101")
    with pytest.raises(DataError, match="size: the tile .* is smaller than --chip-size 256"):
        convert("cashew-benin", src, tmp_path / "x.h5", progress=False)
    (src / "imagery" / "00" / "00_20191105" / "00_20191105_B8A_10m.tif").unlink()
    with pytest.raises(DataError, match=r"B8A_10m.tif: bands: file missing \(1 of 12"):
        convert("cashew-benin", src, tmp_path / "x.h5", progress=False, date="20191105", chip_size=16)
    path = src / "labels" / "00.geojson"
    collection = json.loads(path.read_text())
    collection["features"][0]["properties"]["class"] = 9
    path.write_text(json.dumps(collection))
    with pytest.raises(DataError, match=r"features\[0\].properties.class: 9 is not a class 1 .. 6"):
        convert("cashew-benin", src, tmp_path / "x.h5", progress=False, chip_size=16)
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob(".*part*"))


def test_cashew_benin_cli(tmp_path):
    src = fake_cashew(tmp_path / "cashew")
    out = tmp_path / "cashew.h5"
    ok = subprocess.run([sys.executable, "-m", "ssl_rs.cli", "data", "convert", "cashew-benin", str(src), "-o", str(out),
                         "--chip-size", "16", "--stride", "8"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert out.is_file()
    bad = subprocess.run([sys.executable, "-m", "ssl_rs.cli", "data", "convert", "cashew-benin", str(src),
                          "-o", str(tmp_path / "y.h5"), "--date", "1999"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--date: '1999'" in bad.stderr and "Traceback" not in bad.stderr


def test_geotiff_masks_gsd_is_measured_in_metres(tmp_path):
    """The GSD attribute is the tile's pixel size in metres: the CRS's for UTM, the geodesic pixel
    step for a tile in degrees (never an assumed 10 m)."""
    rng = np.random.default_rng(5)
    utm = tmp_path / "utm"
    tile_pair(utm, "a", rng)  # 10 m pixels in EPSG:32631
    out = convert("geotiff-masks", utm, tmp_path / "utm.h5", progress=False, bands="B02,B03,B04,B08", classes="a,b,c")
    with h5py.File(out) as f:
        assert float(f.attrs["gsd"]) == 10.0
    degrees = tmp_path / "degrees"
    step = 1e-4  # degrees per pixel, at 48 N: ~11.1 m north-south, ~7.4 m east-west
    transform = Affine(step, 0, 11.0, 0, -step, 48.0)
    write_tif(degrees / "images" / "a.tif", rng.integers(0, 5000, size=(4, 20, 24), dtype=np.uint16), transform, "EPSG:4326")
    write_tif(degrees / "masks" / "a.tif", np.zeros((20, 24), np.uint8), transform, "EPSG:4326")
    out = convert("geotiff-masks", degrees, tmp_path / "deg.h5", progress=False, bands="B02,B03,B04,B08", classes="a")
    with h5py.File(out) as f:
        gsd = float(f.attrs["gsd"])
    assert 9.0 < gsd < 9.5  # (11.1 + 7.4) / 2
