"""Dataset converters on the real samples in ../shared/data, plus bad-input handling."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.errors import NotGeoreferencedWarning

from ssl_rs.data.bands import S2_BANDS, S2_BANDS_L2A, S2_GSD
from ssl_rs.data.converters import CONVERTERS, convert
from ssl_rs.data.converters.bigearthnet import CLASSES_19, CLASSES_43, MAP_43_TO_19
from ssl_rs.data.converters.major_tom import convert_major_tom, patch_grid, window_means
from ssl_rs.data.layout import check_file
from ssl_rs.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def sample(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real Sentinel-2 sample {name} not found at {path.resolve()}")
    return path


def strings(ds) -> list:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[:]]


def read_raw(path: Path, band: int = 1) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(band)


def assert_no_leftovers(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [], "a failed convert left files behind"


# ----------------------------------------------------------------------------- EuroSAT-MS


@pytest.fixture(scope="module")
def eurosat(tmp_path_factory):
    src = sample("eurosat_ms_subset")
    return src, convert("eurosat-ms", src, tmp_path_factory.mktemp("eurosat") / "eurosat.h5", progress=False)


def test_eurosat_ms(eurosat):
    src, out = eurosat
    info = check_file(out)
    assert info["n"] == 270 and info["bands"] == S2_BANDS and info["size"] == [64, 64] and info["gsd"] == 10.0
    folders = sorted(p.name for p in (src / "train").iterdir())
    assert info["classes"] == folders and len(folders) == 10
    assert info["class_counts"]["AnnualCrop"] == 30 and info["class_counts"]["Pasture"] == 20
    assert info["splits"]["official"] == {"train": 216, "val": 0, "test": 54}
    manifest = {Path(r["path"]).stem: r for r in csv.DictReader(open(src / "manifest.csv"))}
    with h5py.File(out) as f:
        names, lat, lon = strings(f["name"]), f["lat"][:], f["lon"][:]
        assert set(names) == set(manifest)
        ref_lat = np.array([float(manifest[n]["center_lat"]) for n in names])
        ref_lon = np.array([float(manifest[n]["center_lon"]) for n in names])
        np.testing.assert_allclose(lat, ref_lat, atol=1e-4)
        np.testing.assert_allclose(lon, ref_lon, atol=1e-4)
        assert 34 < lat.min() and lat.max() < 66 and -10 < lon.min() and lon.max() < 34
        labels = [info["classes"][i] for i in f["label"][:]]
        assert labels == [manifest[n]["label"] for n in names]
        # B8A is the LAST band in the file and must land after B08; B10 (cirrus) is near 0
        i = names.index("Forest_616") if "Forest_616" in names else 0
        raw_path = src / manifest[names[i]]["path"]
        with rasterio.open(raw_path) as ds:
            raw = ds.read()
        image = f["images"][i]
        np.testing.assert_array_equal(image[S2_BANDS.index("B8A")], raw[12])
        np.testing.assert_array_equal(image[S2_BANDS.index("B09")], raw[8])
        np.testing.assert_array_equal(image[S2_BANDS.index("B12")], raw[11])
        assert f["images"][:, S2_BANDS.index("B10")].mean() < 50


# ----------------------------------------------------------------------------- BigEarthNet


@pytest.fixture(scope="module")
def bigearthnet(tmp_path_factory):
    src = sample("bigearthnet_s2_examples")
    tmp = tmp_path_factory.mktemp("ben")
    out43 = convert("bigearthnet", src, tmp / "ben43.h5", progress=False)
    out19 = convert("bigearthnet", src, tmp / "ben19.h5", labels="19", progress=False)
    return src, out43, out19


def test_bigearthnet_43(bigearthnet):
    src, out, _ = bigearthnet
    info = check_file(out)
    assert info["n"] == 6 and info["bands"] == S2_BANDS_L2A and info["size"] == [120, 120]
    assert info["classes"] == CLASSES_43 and len(CLASSES_43) == 43 and info["task"] == "multi-label"
    with h5py.File(out) as f:
        names = strings(f["name"])
        assert sorted(names) == sorted(p.name for p in src.iterdir() if p.is_dir())
        for i, name in enumerate(names):
            meta = json.loads((src / name / f"{name}_labels_metadata.json").read_text())
            assert sorted(CLASSES_43[j] for j in np.flatnonzero(f["labels"][i])) == sorted(meta["labels"])
            assert strings(f["time"])[i] == meta["acquisition_date"][:10]
            # cross-check with the json box centre, reprojected independently of the converter
            box = meta["coordinates"]
            to_wgs84 = Transformer.from_crs(meta["projection"], "EPSG:4326", always_xy=True)
            lon, lat = to_wgs84.transform((box["ulx"] + box["lrx"]) / 2, (box["uly"] + box["lry"]) / 2)
            assert abs(f["lat"][i] - lat) < 1e-6 and abs(f["lon"][i] - lon) < 1e-6
        i = names.index("S2A_MSIL2A_20170617T113321_4_55")  # SOURCE.md: about 52.64 N, 7.44 W
        assert abs(f["lat"][i] - 52.64) < 0.01 and abs(f["lon"][i] + 7.44) < 0.01
        # 10 m bands pass through unchanged; 20 m / 60 m ones are upsampled (bilinear) from their file
        image = f["images"][i]
        stem = src / names[i] / names[i]
        np.testing.assert_array_equal(image[S2_BANDS_L2A.index("B02")], read_raw(Path(f"{stem}_B02.tif")))
        for band in ("B05", "B8A", "B01"):
            raw = read_raw(Path(f"{stem}_{band}.tif")).astype(float)
            up = image[S2_BANDS_L2A.index(band)].astype(float)
            factor = S2_GSD[band] // 10
            blocks = up.reshape(raw.shape[0], factor, raw.shape[1], factor).mean(axis=(1, 3))
            assert np.abs(blocks - raw).mean() < 0.05 * raw.mean(), band


def test_bigearthnet_19(bigearthnet):
    src, _, out = bigearthnet
    info = check_file(out)
    assert info["classes"] == CLASSES_19 and len(CLASSES_19) == 19
    with h5py.File(out) as f:
        names = strings(f["name"])
        i = names.index("S2B_MSIL2A_20170924T93020_69_24")
        # Coniferous forest, Mixed forest, Transitional woodland/shrub, Peatbogs, Water bodies
        got = [CLASSES_19[j] for j in np.flatnonzero(f["labels"][i])]
        assert got == [
            "Coniferous forest", "Mixed forest", "Transitional woodland, shrub", "Inland wetlands", "Inland waters"
        ]
        i = names.index("S2A_MSIL2A_20170617T113321_36_85")  # Non-irrigated arable land, Pastures
        assert [CLASSES_19[j] for j in np.flatnonzero(f["labels"][i])] == ["Arable land", "Pastures"]


def test_bigearthnet_19_mapping_is_the_official_one():
    dropped = {CLASSES_43[i] for i in range(43) if i not in MAP_43_TO_19}
    assert dropped == {
        "Road and rail networks and associated land", "Port areas", "Airports", "Mineral extraction sites",
        "Dump sites", "Construction sites", "Green urban areas", "Sport and leisure facilities", "Bare rock",
        "Burnt areas", "Intertidal flats",
    }
    assert sorted(set(MAP_43_TO_19.values())) == list(range(19))
    assert CLASSES_19[MAP_43_TO_19[CLASSES_43.index("Olive groves")]] == "Permanent crops"
    grass = CLASSES_19[MAP_43_TO_19[CLASSES_43.index("Sparsely vegetated areas")]]
    assert grass == "Natural grassland and sparsely vegetated areas"
    assert CLASSES_19[MAP_43_TO_19[CLASSES_43.index("Estuaries")]] == "Marine waters"


# ----------------------------------------------------------------------------- SSL4EO-S12


def test_ssl4eo_l1c_and_l2a(tmp_path):
    src = sample("ssl4eo_s12_sample")
    out = convert("ssl4eo-s12", src, tmp_path / "l1c.h5", progress=False)
    info = check_file(out)
    assert info["n"] == 2 and info["bands"] == S2_BANDS and info["size"] == [264, 264] and info["groups"] == 1
    folder = src / "s2c" / "0000200" / "20200604T054639_20200604T054831_T43RCP"
    with h5py.File(out) as f, rasterio.open(folder / "B2.tif") as b2:
        assert strings(f["time"]) == ["2020-06-04", "2020-08-23"] and list(f["group"][:]) == [200, 200]
        assert f.attrs["product"] == "L1C"
        # EPSG:4326 file: the centre is the middle of the bounds, lon = x, lat = y
        left, bottom, right, top = b2.bounds
        np.testing.assert_allclose(f["lat"][:], (bottom + top) / 2, atol=1e-9)
        np.testing.assert_allclose(f["lon"][:], (left + right) / 2, atol=1e-9)
        assert abs(f["lat"][0] - 30.464) < 1e-3 and abs(f["lon"][0] - 73.306) < 1e-3  # SOURCE.md
        image = f["images"][0]
        np.testing.assert_array_equal(image[S2_BANDS.index("B02")], b2.read(1))
        assert image[S2_BANDS.index("B10")].mean() < image[S2_BANDS.index("B08")].mean()

    out = convert("ssl4eo-s12", src, tmp_path / "l2a.h5", product="L2A", size=256, progress=False)
    info = check_file(out)
    assert info["n"] == 2 and info["bands"] == S2_BANDS_L2A and info["size"] == [256, 256]
    with h5py.File(out) as f:
        assert strings(f["time"]) == ["2020-06-04", "2020-08-13"] and f.attrs["product"] == "L2A"
        full = read_raw(src / "s2a" / "0000200" / "20200604T054639_20200604T054831_T43RCP" / "B2.tif")
        np.testing.assert_array_equal(f["images"][0, S2_BANDS_L2A.index("B02")], full[4:260, 4:260])
        assert abs(f["lat"][0] - 30.464) < 1e-3 and abs(f["lon"][0] - 73.306) < 1e-3


# ----------------------------------------------------------------------------- Major-TOM


def test_major_tom(tmp_path):
    src = sample("major_tom_core_s2l2a_sample")
    out = convert("major-tom", src, tmp_path / "mt.h5", patch_size=256, progress=False)
    info = check_file(out)
    assert info["n"] == 2 * 4 * 4 and info["bands"] == S2_BANDS_L2A and info["size"] == [256, 256]
    references = {"0U_199R": (0.045, 17.919, "2022-07-06"), "199U_1099R": (17.920, 103.753, "2020-02-23")}
    with h5py.File(out) as f:
        assert "group" not in f and list(f.attrs["tiles"]) == ["0U_199R", "199U_1099R"]
        names, lat, lon, times = strings(f["name"]), f["lat"][:], f["lon"][:], strings(f["time"])
        for cell, (ref_lat, ref_lon, day) in references.items():
            rows = [i for i, n in enumerate(names) if n.startswith(cell + "_")]
            assert len(rows) == 16 and {times[i] for i in rows} == {day}
            # the 4x4 patches cover 1024 of 1068 px: their mean centre is within ~22 px of the cell's
            assert abs(lat[rows].mean() - ref_lat) < 5e-3 and abs(lon[rows].mean() - ref_lon) < 5e-3
            folder = next((src / cell.split("_")[0] / cell).iterdir())
            i = names.index(f"{cell}_2_1")
            with rasterio.open(folder / "B02.tif") as b02:
                window = b02.read(1)[512:768, 256:512]
                x, y = b02.xy(512 + 128, 256 + 128, offset="ul")  # (row, col) of the patch centre
                plon, plat = Transformer.from_crs(b02.crs, "EPSG:4326", always_xy=True).transform(x, y)
            np.testing.assert_array_equal(f["images"][i, S2_BANDS_L2A.index("B02")], window)
            assert abs(lat[i] - plat) < 1e-9 and abs(lon[i] - plon) < 1e-9
        # neighbouring patches are 2.56 km apart
        a, b = names.index("0U_199R_0_0"), names.index("0U_199R_0_1")
        assert abs((lon[b] - lon[a]) * 111.32 - 2.56) < 0.05 and abs(lat[b] - lat[a]) < 1e-3


def one_cell(src: Path, cell: str, dst: Path) -> Path:
    """A Major-TOM source folder holding only ``cell`` (its files linked, not copied)."""
    product = next((src / cell.split("_")[0] / cell).iterdir())
    folder = dst / cell.split("_")[0] / cell / product.name
    folder.mkdir(parents=True)
    for tif in product.glob("*.tif"):
        (folder / tif.name).symlink_to(tif.resolve())
    return dst


def haversine_km(lat1, lon1, lat2, lon2):
    la1, lo1, la2, lo2 = map(np.radians, (lat1, lon1, lat2, lon2))
    h = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def test_major_tom_overlapping_stride(tmp_path):
    cell = "0U_199R"
    src = one_cell(sample("major_tom_core_s2l2a_sample"), cell, tmp_path / "src")
    out = convert("major-tom", src, tmp_path / "half.h5", patch_size=256, stride=128, progress=False)
    plain = convert("major-tom", src, tmp_path / "plain.h5", patch_size=256, progress=False)
    assert patch_grid(1068, 1068, 256, 128) == (7, 7)  # corners 0, 128, ..., 768 (768 + 256 <= 1068)
    with h5py.File(out) as f, h5py.File(plain) as g:
        assert f.attrs["stride"] == 128 and f.attrs["patch_size"] == 256 and g.attrs["stride"] == 256
        names, lat, lon, images = strings(f["name"]), f["lat"][:], f["lon"][:], f["images"]
        assert names == [f"{cell}_{r}_{c}" for r in range(7) for c in range(7)]
        at = {n: i for i, n in enumerate(names)}
        # overlapping pixels are identical: (0, 1) starts at column 128 of (0, 0), (1, 0) at row 128
        a, right, below = images[at[f"{cell}_0_0"]], images[at[f"{cell}_0_1"]], images[at[f"{cell}_1_0"]]
        np.testing.assert_array_equal(right[:, :, :128], a[:, :, 128:])
        np.testing.assert_array_equal(below[:, :128], a[:, 128:])
        folder = next((src / "0U" / cell).iterdir())
        b02 = read_raw(folder / "B02.tif")
        np.testing.assert_array_equal(images[at[f"{cell}_3_5"], S2_BANDS_L2A.index("B02")], b02[384:640, 640:896])
        # every other stride-128 patch is a stride-256 patch: same pixels, same centre
        for r, c in ((0, 0), (2, 2), (4, 6), (6, 0)):
            i, j = at[f"{cell}_{r}_{c}"], strings(g["name"]).index(f"{cell}_{r // 2}_{c // 2}")
            np.testing.assert_array_equal(images[i], g["images"][j])
            assert lat[i] == g["lat"][j] and lon[i] == g["lon"][j]
        # centres of neighbours are stride * 10 m = 1.28 km apart, east along a row, south down a column
        grid_lat, grid_lon = lat.reshape(7, 7), lon.reshape(7, 7)
        east = haversine_km(grid_lat[:, :-1], grid_lon[:, :-1], grid_lat[:, 1:], grid_lon[:, 1:])
        south = haversine_km(grid_lat[:-1], grid_lon[:-1], grid_lat[1:], grid_lon[1:])
        np.testing.assert_allclose(east, 1.28, rtol=0.01)
        np.testing.assert_allclose(south, 1.28, rtol=0.01)
        assert (grid_lon[:, 1:] > grid_lon[:, :-1]).all() and (grid_lat[1:] < grid_lat[:-1]).all()


def test_major_tom_default_stride_is_patch_size(tmp_path):
    src = one_cell(sample("major_tom_core_s2l2a_sample"), "199U_1099R", tmp_path / "src")
    default = convert_major_tom(src, tmp_path / "default.h5", patch_size=256, progress=False)
    explicit = convert("major-tom", src, tmp_path / "explicit.h5", patch_size=256, stride=256, progress=False)
    with h5py.File(default) as f, h5py.File(explicit) as g:
        assert len(f["name"]) == 16 and f.attrs["stride"] == 256
        for key in ("images", "lat", "lon"):
            np.testing.assert_array_equal(f[key][:], g[key][:])
        assert strings(f["name"]) == strings(g["name"]) and strings(f["time"]) == strings(g["time"])


def write_tif(path: Path, array: np.ndarray, transform=None, crs=None) -> Path:
    """A small GeoTIFF; without ``crs`` and ``transform`` it has no georeferencing."""
    array = array if array.ndim == 3 else array[None]
    profile = dict(driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0], dtype=array.dtype)
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(array)
    return path


def fake_major_tom_cell(root: Path, cloudy=(slice(0, 32), slice(0, 32)), size: int = 96) -> Path:
    """A synthetic Major-TOM cell (``size`` px at 10 m) whose cloud mask flags one region."""
    folder = root / "0U" / "0U_1R" / "S2A_MSIL2A_20200101T101010_N0400_R001_T33NZA_20200101T120000"
    rng = np.random.default_rng(0)
    for band in S2_BANDS_L2A:
        gsd = S2_GSD[band]
        n = size * 10 // gsd
        write_tif(folder / f"{band}.tif", rng.integers(100, 3000, (n, n), dtype=np.uint16),
                  Affine(gsd, 0, 500000, 0, -gsd, 100000), "EPSG:32633")
    mask = np.zeros((size, size), np.uint8)
    mask[cloudy] = 1
    write_tif(folder / "cloud_mask.tif", mask, Affine(10, 0, 500000, 0, -10, 100000), "EPSG:32633")
    return folder


def test_major_tom_max_cloud(tmp_path):
    fake_major_tom_cell(tmp_path / "src")  # 3x3 patches of 32 px, the top-left one fully cloudy
    out = convert("major-tom", tmp_path / "src", tmp_path / "all.h5", patch_size=32, progress=False)
    assert check_file(out)["n"] == 9
    out = convert("major-tom", tmp_path / "src", tmp_path / "clear.h5", patch_size=32, max_cloud=0.5, progress=False)
    with h5py.File(out) as f:
        assert len(f["name"]) == 8 and "0U_1R_0_0" not in strings(f["name"])
        assert strings(f["time"])[0] == "2020-01-01"


def test_major_tom_stride_clouds_and_gaps(tmp_path):
    folder = fake_major_tom_cell(tmp_path / "src")  # 96 px, rows/cols 0..32 cloudy
    out = convert("major-tom", tmp_path / "src", tmp_path / "all.h5", patch_size=32, stride=16, progress=False)
    assert check_file(out)["n"] == 25  # corners 0, 16, ..., 64
    # overlapping patches: (0, 0) is all cloud, (0, 1) and (1, 0) half, (1, 1) a quarter
    out = convert("major-tom", tmp_path / "src", tmp_path / "clear.h5", patch_size=32, stride=16, max_cloud=0.3,
                  progress=False)
    with h5py.File(out) as f:
        names = strings(f["name"])
        assert len(names) == 22 and "0U_1R_1_1" in names
        assert not {"0U_1R_0_0", "0U_1R_0_1", "0U_1R_1_0"} & set(names)
    # stride > patch size leaves gaps: corners 0 and 40
    out = convert("major-tom", tmp_path / "src", tmp_path / "gaps.h5", patch_size=32, stride=40, progress=False)
    b02 = read_raw(folder / "B02.tif")
    with h5py.File(out) as f:
        assert strings(f["name"]) == ["0U_1R_0_0", "0U_1R_0_1", "0U_1R_1_0", "0U_1R_1_1"]
        np.testing.assert_array_equal(f["images"][1, S2_BANDS_L2A.index("B02")], b02[0:32, 40:72])
        np.testing.assert_array_equal(f["images"][2, S2_BANDS_L2A.index("B02")], b02[40:72, 0:32])


@pytest.mark.parametrize("shape, patch, stride", [((50, 37), 8, 3), ((50, 37), 8, 8), ((50, 37), 5, 11), ((9, 9), 9, 1)])
def test_window_means_match_slicing(shape, patch, stride):
    mask = np.random.default_rng(0).random(shape) < 0.3
    rows, cols = patch_grid(*shape, patch, stride)
    expected = np.array([[mask[r * stride : r * stride + patch, c * stride : c * stride + patch].mean()
                          for c in range(cols)] for r in range(rows)])
    np.testing.assert_array_equal(window_means(mask, patch, stride, rows, cols), expected)


@pytest.mark.parametrize("stride, message", [(0, "stride must be a positive"), (-4, "stride must be a positive"),
                                             (1.5, "stride=1.5 is not a valid int"), ("x", "stride='x' is not")])
def test_major_tom_bad_stride(tmp_path, stride, message):
    fake_major_tom_cell(tmp_path / "src")
    with pytest.raises(ConfigError, match=message):
        convert("major-tom", tmp_path / "src", tmp_path / "out" / "x.h5", patch_size=32, stride=stride, progress=False)
    with pytest.raises(ConfigError, match="stride must be a positive"):
        convert_major_tom(tmp_path / "src", tmp_path / "out" / "x.h5", patch_size=32, stride=0.5, progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- bad input


def test_unknown_format_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'eurosat-ms'"):
        convert("eurosat", "anything", "out.h5")


@pytest.mark.parametrize("fmt", sorted(CONVERTERS))
def test_missing_empty_or_tif_less_source(fmt, tmp_path):
    with pytest.raises(DataError, match="nowhere: source: directory not found"):
        convert(fmt, tmp_path / "nowhere", tmp_path / "out" / "x.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: source: directory is empty"):
        convert(fmt, tmp_path / "empty", tmp_path / "out" / "x.h5")
    src = tmp_path / "notes"
    for sub in ("s2c/0000001", "0U/0U_1R", "train/Forest"):  # look like each layout, but hold no tif
        (src / sub).mkdir(parents=True)
    (src / "README.txt").write_text("no data here\n")
    with pytest.raises(DataError, match="files: no"):
        convert(fmt, src, tmp_path / "out" / "x.h5", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_options_are_checked(tmp_path):
    src = sample("ssl4eo_s12_sample")
    with pytest.raises(ConfigError, match="unknown option"):
        convert("eurosat-ms", src, tmp_path / "x.h5", patch_size=64)
    with pytest.raises(ConfigError, match="product"):
        convert("ssl4eo-s12", src, tmp_path / "x.h5", product="L3")
    with pytest.raises(ConfigError, match="size 300"):
        convert("ssl4eo-s12", src, tmp_path / "x.h5", size=300, progress=False)
    with pytest.raises(ConfigError, match="labels"):
        convert("bigearthnet", src, tmp_path / "x.h5", labels="10")
    assert_no_leftovers(tmp_path)


def test_geotiff_without_georeferencing_leaves_no_output(tmp_path):
    crs, transform = "EPSG:32631", Affine(10, 0, 600000, 0, -10, 5500000)
    image = np.full((13, 64, 64), 1000, np.uint16)
    write_tif(tmp_path / "src" / "train" / "Forest" / "Forest_1.tif", image, transform, crs)
    bad = write_tif(tmp_path / "src" / "train" / "Forest" / "Forest_2.tif", image)  # no CRS, no transform
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = out_dir / "eurosat.h5"
    old.write_bytes(b"previous result")
    with pytest.raises(DataError) as err:
        convert("eurosat-ms", tmp_path / "src", old, progress=False)
    assert str(err.value) == f"{bad}: georeferencing: GeoTIFF has no CRS/transform"
    # the first file was already written to the temporary file: it must be gone, the old output untouched
    assert sorted(p.name for p in out_dir.iterdir()) == ["eurosat.h5"] and old.read_bytes() == b"previous result"


def test_missing_band_file_leaves_no_output(tmp_path):
    src = sample("bigearthnet_s2_examples")
    patches = sorted(p for p in src.iterdir() if p.is_dir())[:2]
    for p in patches:
        shutil.copytree(p, tmp_path / "src" / p.name)
    missing = tmp_path / "src" / patches[1].name / f"{patches[1].name}_B8A.tif"
    missing.unlink()
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=f"^{missing}: bands: file for band B8A is missing$"):
        convert("bigearthnet", tmp_path / "src", tmp_path / "out" / "ben.h5", progress=False)
    assert_no_leftovers(tmp_path / "out")


def test_wrong_band_count_and_misaligned_band(tmp_path):
    transform = Affine(10, 0, 600000, 0, -10, 5500000)
    write_tif(tmp_path / "eu" / "Forest" / "Forest_1.tif", np.ones((12, 64, 64), np.uint16), transform, "EPSG:32631")
    with pytest.raises(DataError, match="Forest_1.tif: bands: expected 13 bands, found 12"):
        convert("eurosat-ms", tmp_path / "eu", tmp_path / "eu.h5", progress=False)
    folder = fake_major_tom_cell(tmp_path / "mt")
    shifted = Affine(20, 0, 510000, 0, -20, 100000)  # 10 km east of the cell
    moved = write_tif(folder / "B05.tif", np.ones((48, 48), np.uint16), shifted, "EPSG:32633")
    with pytest.raises(DataError, match=f"^{moved}: georeferencing: footprint"):
        convert("major-tom", tmp_path / "mt", tmp_path / "mt.h5", patch_size=32, progress=False)
    assert not (tmp_path / "eu.h5").exists() and not (tmp_path / "mt.h5").exists()
    assert not list(tmp_path.glob(".*.part"))


def test_conversion_workers_do_not_import_torch():
    """A spawned conversion worker imports its converter's module and the writer; torch (~3 s and
    0.7 GB per process) is not needed for that."""
    import subprocess
    import sys

    modules = ["parallel", "eurosat", "bigearthnet", "bigearthnet_v2", "so2sat", "ssl4eo", "major_tom",
               "segmentation_tiles", "sen4agrinet"]
    code = "; ".join(f"import ssl_rs.data.converters.{m}" for m in modules)
    done = subprocess.run([sys.executable, "-c", f"{code}; import sys; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
