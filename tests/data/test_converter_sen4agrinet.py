"""The Sen4AgriNet converter (GeoRank's Sen4Agri-ML) on fabricated netCDF4 patches, end to end
through ``ssl-rs data convert sen4agrinet``, and its bad-input errors."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import h5py
import numpy as np
import pytest
from pyproj import Transformer
from scipy import ndimage

from fabricate_sen4agrinet import write_patch
from ssl_rs.cli import main
from ssl_rs.data.bands import S2_BANDS
from ssl_rs.data.converters import convert
from ssl_rs.data.converters.sen4agrinet import BAND_SETS, CLASSES, CODE_TO_CLASS, bilinear_matrix
from ssl_rs.data.layout import check_file
from ssl_rs.errors import ConfigError, DataError

SMALL = ["--size", "10"]  # fabricated patches are 36 px: 3x3 cells of 12 px


def strings(ds) -> list:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[:]]


def cli(capsys, *argv):
    code = main(["data", "convert", "sen4agrinet", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def labelled(cells: dict, size: int = 36, grid: int = 3) -> np.ndarray:
    """A label raster: ``cells[(r, c)]`` is a code filling the cell, or a list of (code, pixels)."""
    cell = size // grid
    labels = np.zeros((size, size), np.uint32)
    for (r, c), spec in cells.items():
        block = labels[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].reshape(-1)
        if isinstance(spec, int):
            block[:] = spec
        else:
            start = 0
            for code, n in spec:
                block[start:start + n] = code
                start += n
        labels[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = block.reshape(cell, cell)
    return labels


def centre_latlon(epsg, x0, y0, row, col):
    lon, lat = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True).transform(x0 + 10 * col, y0 - 10 * row)
    return lat, lon


@pytest.fixture
def source(tmp_path):
    """Three patches on two tiles, two dates each."""
    src = tmp_path / "s4a"
    a = labelled({(0, 0): 110, (0, 1): [(110, 20), (435, 124)], (2, 2): [(975, 26), (0, 118)]})
    write_patch(src / "2020" / "31TCG" / "2020_31TCG_patch_14_14.nc", labels=a, seed=1)
    b = labelled({(r, c): 810 for r in range(3) for c in range(3)})
    write_patch(src / "2020" / "31TCG" / "2020_31TCG_patch_14_15.nc", col=15, labels=b, x0=360360.0, seed=2)
    c = labelled({(1, 1): 330})
    write_patch(src / "2020" / "31TDM" / "2020_31TDM_patch_01_02.nc", tile="31TDM", row=1, col=2, labels=c,
                x0=460000.0, y0=4700000.0, dates=[date(2020, 5, 1), date(2020, 9, 30)], seed=3)
    return src


def test_end_to_end_through_the_cli(source, tmp_path, capsys):
    out = tmp_path / "s4a.h5"
    code, stdout, err = cli(capsys, source, "-o", out, *SMALL)
    assert code == 0, err
    # patch a: 3 labelled cells, b: 9, c: 1; two dates each
    assert stdout.strip() == f"wrote {out}: 26 samples, 13 bands, 10x10 px"
    info = check_file(out)
    assert info["bands"] == S2_BANDS and info["classes"] == CLASSES and info["gsd"] == 10.0
    with h5py.File(out) as f:
        names, labels, groups = strings(f["name"]), f["labels"][:], f["group"][:]
        times, lat, lon, images = strings(f["time"]), f["lat"][:], f["lon"][:], f["images"]
        at = {n: i for i, n in enumerate(names)}
        a = "2020_31TCG_patch_14_14"
        assert [n for n in names if n.startswith(a)] == [
            f"{a}_ts{t}_grid{rc}" for t in (1, 2) for rc in ("11", "12", "33")]
        hot = lambda *classes: [int(k in classes) for k in range(len(CLASSES))]  # noqa: E731
        assert labels[at[f"{a}_ts1_grid11"]].tolist() == hot(0)  # wheat
        assert labels[at[f"{a}_ts1_grid12"]].tolist() == hot(3)  # 20 px wheat <= 25: only rapeseed counts
        assert labels[at[f"{a}_ts2_grid33"]].tolist() == hot(8)  # 26 px fallow land > 25
        assert labels[at["2020_31TCG_patch_14_15_ts1_grid22"]].tolist() == hot(7)  # sugar beet
        assert labels[at["2020_31TDM_patch_01_02_ts2_grid22"]].tolist() == hot(2)  # grapes
        assert times[at[f"{a}_ts1_grid11"]] == "2020-03-04" and times[at[f"{a}_ts2_grid11"]] == "2020-07-12"
        assert times[at["2020_31TDM_patch_01_02_ts2_grid22"]] == "2020-09-30"
        # group: the source patch, in sorted file order
        assert sorted(set(groups[[at[n] for n in names if n.startswith(a)]])) == [0]
        assert set(groups) == {0, 1, 2}
        # lat/lon: the centre of the 10 px crop = the centre of its 12 px cell (pixel centres in x/y)
        i = at[f"{a}_ts1_grid12"]
        ref_lat, ref_lon = centre_latlon(32631, 360000.0, 4600020.0, 6, 18)
        assert abs(lat[i] - ref_lat) < 1e-9 and abs(lon[i] - ref_lon) < 1e-9
        assert 41 < lat[i] < 42 and 1 < lon[i] < 2  # 31TCG: Catalonia
        # pixels: B02 of date 2 (1000 * 2 + 100 + ramp), crop rows/cols 1..10 of cell (0, 1)
        with h5py.File(source / "2020" / "31TCG" / f"{a}.nc") as src:
            b02 = src["B02"]["B02"][1]
            np.testing.assert_array_equal(images[at[f"{a}_ts2_grid12"], S2_BANDS.index("B02")], b02[1:11, 13:23])
        assert images.dtype == np.uint16
        band_means = images[at[f"{a}_ts1_grid11"]].reshape(13, -1).mean(axis=1)
        np.testing.assert_allclose(band_means, [1000 * (b + 1) + 25 for b in range(13)], atol=25)
        # both split schemes, per patch; the tile scheme keeps tiles whole
        assert set(f["splits"]) == {"random", "tile"} and f.attrs["default_split"] == "random"
        for scheme in ("random", "tile"):
            codes = f["splits"][scheme][:]
            for g in set(groups):
                assert len(set(codes[groups == g])) == 1
        tile_codes = f["splits"]["tile"][:]
        assert len(set(tile_codes[groups == 0]) | set(tile_codes[groups == 1])) == 1
        assert list(f.attrs["tiles"]) == ["31TCG", "31TDM"]


def test_test_tiles_and_time_index(source, tmp_path):
    out = convert("sen4agrinet", source, tmp_path / "t.h5", size=10, test_tiles="31tdm", time_index=-1,
                  bands="georank", progress=False)
    info = check_file(out)
    assert info["n"] == 13 and info["bands"] == BAND_SETS["georank"]
    with h5py.File(out) as f:
        names, tiles = strings(f["name"]), f["splits"]["tile"][:]
        assert all("_ts2_" in n for n in names)
        assert set(strings(f["time"])) == {"2020-07-12", "2020-09-30"}
        assert [int(c) for n, c in zip(names, tiles) if "31TDM" in n] == [2]
        assert {int(c) for n, c in zip(names, tiles) if "31TCG" in n} == {0}
        assert list(f["splits"]["tile"].attrs["test_tiles"]) == ["31TDM"]
    with pytest.raises(ConfigError, match=r"test_tiles \['31TXX'\] are not among the tiles"):
        convert("sen4agrinet", source, tmp_path / "x.h5", size=10, test_tiles="31TXX", progress=False)
    with pytest.raises(ConfigError, match="time_index 2 is out of range"):
        convert("sen4agrinet", source, tmp_path / "x.h5", size=10, time_index=2, progress=False)
    with pytest.raises(ConfigError, match=r"size 120 must be in 1\.\.12"):
        convert("sen4agrinet", source, tmp_path / "x.h5", progress=False)
    assert not (tmp_path / "x.h5").exists()


def test_shards_hold_both_split_schemes(source, tmp_path):
    out = convert("sen4agrinet", source, tmp_path / "shards", size=10, shard_size=10, progress=False)
    single = convert("sen4agrinet", source, tmp_path / "one.h5", size=10, progress=False)
    shards = sorted(out.glob("*.h5"))
    assert len(shards) == 3  # one patch (6 or 18 samples) per shard
    with h5py.File(single) as g:
        codes = {s: g["splits"][s][:] for s in ("random", "tile")}
        names = strings(g["name"])
    got = {"random": [], "tile": [], "name": []}
    for shard in shards:
        with h5py.File(shard) as f:
            got["name"] += strings(f["name"])
            for s in ("random", "tile"):
                got[s] += f["splits"][s][:].tolist()
    assert got["name"] == names
    for s in ("random", "tile"):
        assert got[s] == codes[s].tolist()  # the same split whatever the sharding


def test_pixel_corner_coordinates_give_the_same_centres(tmp_path):
    labels = labelled({(1, 2): 120})
    write_patch(tmp_path / "c" / "p.nc", labels=labels, centres=False, time_units="hours since 2020-01-01")
    write_patch(tmp_path / "m" / "p.nc", labels=labels, centres=True)
    corner = convert("sen4agrinet", tmp_path / "c", tmp_path / "c.h5", size=10, progress=False)
    centre = convert("sen4agrinet", tmp_path / "m", tmp_path / "m.h5", size=10, progress=False)
    with h5py.File(corner) as f, h5py.File(centre) as g:
        assert f["lat"][0] == pytest.approx(g["lat"][0], abs=1e-12)
        assert f["lon"][0] == pytest.approx(g["lon"][0], abs=1e-12)
        assert strings(f["time"]) == strings(g["time"]) == ["2020-03-04", "2020-07-12"]
        assert f["splits/random"][:].tolist() == g["splits/random"][:].tolist()


def test_real_366_px_geometry(tmp_path):
    """The real patch size: 366 px, 3x3 cells of 122 px, 120 px crops; 20 m bands upsampled per cell,
    60 m bands over the patch, both bilinear with mirrored edges (scipy's map_coordinates 'mirror')."""
    labels = np.full((366, 366), 0, np.uint32)
    labels[:122, 122:244] = 150  # cell (0, 1): barley
    labels[244:, 244:] = 921  # cell (2, 2): cotton
    path = write_patch(tmp_path / "src" / "2019_31TBF_patch_17_11.nc", tile="31TBF", year=2019, row=17, col=11,
                       size=366, dates=[date(2019, 6, 1)], labels=labels, x0=300000.0, y0=4500000.0)
    out = tmp_path / "real.h5"
    convert("sen4agrinet", tmp_path / "src", out, progress=False)
    info = check_file(out)
    assert info["n"] == 2 and info["size"] == [120, 120] and info["bands"] == S2_BANDS
    with h5py.File(out) as f, h5py.File(path) as src:
        assert strings(f["name"]) == ["2019_31TBF_patch_17_11_ts1_grid12", "2019_31TBF_patch_17_11_ts1_grid33"]
        img = f["images"][0]
        np.testing.assert_array_equal(img[S2_BANDS.index("B08")], src["B08"]["B08"][0][1:121, 123:243])
        b05 = src["B05"]["B05"][0][0:61, 61:122].astype(np.float64)
        u = (np.arange(122) + 0.5) / 2 - 0.5
        rows, cols = np.meshgrid(u, u, indexing="ij")
        expected = ndimage.map_coordinates(b05, [rows, cols], order=1, mode="mirror")
        # rounded to the nearest integer (a tie may go either way after float arithmetic)
        np.testing.assert_allclose(img[S2_BANDS.index("B05")], expected[1:121, 1:121], atol=0.5 + 1e-9, rtol=0)
        b01 = src["B01"]["B01"][0].astype(np.float64)
        u = (np.arange(366) + 0.5) / 6 - 0.5
        rows, cols = np.meshgrid(u, u, indexing="ij")
        expected = ndimage.map_coordinates(b01, [rows, cols], order=1, mode="mirror")
        np.testing.assert_allclose(img[S2_BANDS.index("B01")], expected[1:121, 123:243], atol=0.5 + 1e-9, rtol=0)
        ref_lat, ref_lon = centre_latlon(32631, 300000.0, 4500000.0, 61, 183)
        assert abs(f["lat"][0] - ref_lat) < 1e-9 and abs(f["lon"][0] - ref_lon) < 1e-9
        assert f["labels"][1].tolist() == [0] * 8 + [1]


def test_bilinear_matrix_rows_sum_to_one():
    for n_in, n_out in ((61, 122), (61, 366), (1, 4), (5, 5)):
        m = bilinear_matrix(n_in, n_out)
        np.testing.assert_allclose(m.sum(axis=1), 1.0)


def test_code_table():
    assert len(CODE_TO_CLASS) == 168 and CODE_TO_CLASS[110] == 0 and CODE_TO_CLASS[998] == 8
    assert all(CODE_TO_CLASS[c] == c // 100 - 1 for c in CODE_TO_CLASS)


# ----------------------------------------------------------------------------- bad input


def _one(tmp_path, **kwargs) -> Path:
    kwargs.setdefault("labels", labelled({(0, 0): 110}))
    return write_patch(tmp_path / "src" / "2020_31TCG_patch_14_14.nc", **kwargs)


def _cli_error(capsys, tmp_path) -> str:
    out = tmp_path / "out" / "x.h5"
    code, stdout, err = cli(capsys, tmp_path / "src", "-o", out, *SMALL)
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssl-rs: error: ")
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))
    return lines[0][len("ssl-rs: error: "):]


def test_missing_band_group(tmp_path, capsys):
    path = _one(tmp_path, bands=[b for b in S2_BANDS if b != "B8A"])
    assert _cli_error(capsys, tmp_path) == f"{path}: B8A: band group is missing (not a Sen4AgriNet patch?)"
    # the authors' 10 bands do not need B8A's neighbours B01, B09, B10, but do need B8A
    with pytest.raises(DataError, match="B8A: band group is missing"):
        convert("sen4agrinet", tmp_path / "src", tmp_path / "g.h5", size=10, bands="georank", progress=False)


def test_missing_reference_band_and_labels(tmp_path, capsys):
    path = _one(tmp_path, bands=[b for b in S2_BANDS if b != "B02"])
    assert _cli_error(capsys, tmp_path) == f"{path}: B02: band group is missing (not a Sen4AgriNet patch?)"
    path = _one(tmp_path)
    with h5py.File(path, "a") as f:
        del f["labels"]
    assert _cli_error(capsys, tmp_path) == f"{path}: labels: variable group is missing (not a Sen4AgriNet patch?)"


def test_unknown_label_code(tmp_path, capsys):
    path = _one(tmp_path, labels=labelled({(0, 0): 110, (1, 1): [(123, 3), (110, 141)]}))
    assert _cli_error(capsys, tmp_path) == f"{path}: labels/labels: unknown Sen4AgriNet crop code(s) [123]"


def test_missing_root_attribute(tmp_path, capsys):
    path = _one(tmp_path, skip_root=["patch_tile"])
    assert _cli_error(capsys, tmp_path) == f"{path}: patch_tile: root attribute is missing (not a Sen4AgriNet patch?)"


def test_not_a_netcdf4_file(tmp_path, capsys):
    path = tmp_path / "src" / "2020_31TCG_patch_14_14.nc"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"CDF\x01 netCDF-3 classic is not HDF5")
    assert _cli_error(capsys, tmp_path).startswith(f"{path}: file: cannot be read as a netCDF4 (HDF5) Sen4AgriNet")


def test_no_patches(tmp_path, capsys):
    (tmp_path / "src" / "2020").mkdir(parents=True)
    (tmp_path / "src" / "notes.txt").write_text("nothing\n")
    assert _cli_error(capsys, tmp_path).startswith(f"{tmp_path / 'src'}: files: no Sen4AgriNet netCDF patches found")


def test_crs_of_another_zone_and_bad_time_units(tmp_path, capsys):
    path = _one(tmp_path, epsg=32630)
    assert _cli_error(capsys, tmp_path) == (f"{path}: B02/B02: crs '+init=epsg:32630' is UTM zone 30N, "
                                            "but patch_tile 31TCG lies in zone 31")
    path = _one(tmp_path, time_units="fortnights since 2020-01-01")
    assert _cli_error(capsys, tmp_path) == (f"{path}: B02/time: units 'fortnights since 2020-01-01' are not "
                                            "'<days|hours|...> since <date>'")


def test_wrong_band_shape_and_misaligned_grid(tmp_path, capsys):
    path = _one(tmp_path)
    with h5py.File(path, "a") as f:
        data = f["B11"]["B11"][:, :9, :9]
        del f["B11"]["B11"]
        f["B11"].create_dataset("B11", data=data)
    assert _cli_error(capsys, tmp_path) == f"{path}: B11/B11: shape (2, 9, 9), expected (2, 18, 18) at 20 m"
    path = _one(tmp_path)
    with h5py.File(path, "a") as f:
        f["B05"]["x"][...] = f["B05"]["x"][:] + 3.0
    assert _cli_error(capsys, tmp_path) == (f"{path}: B05/x: the 20 m grid starts +8.00 m from the 10 m grid "
                                            "(expected 0 for pixel corners or 5 m for pixel centres)")


def test_duplicate_patch_names(tmp_path):
    _one(tmp_path)
    write_patch(tmp_path / "src" / "copy" / "2020_31TCG_patch_14_14.nc", labels=labelled({(0, 0): 110}))
    with pytest.raises(DataError, match="patch_full_name: '2020_31TCG_patch_14_14' is also the name of"):
        convert("sen4agrinet", tmp_path / "src", tmp_path / "x.h5", size=10, progress=False)
