"""Sen4AgriNet (Sykas et al., 2022) as the multi-label crop classification of the GeoRank paper
("Sen4Agri-ML"): 3x3 crops of every 366x366 px patch, one sample per crop and acquisition date,
labelled with the crop groups present in the crop.

Source layout (Orion-AI-Lab/S4A, README and ``utils/``, commit 7ac66dce57abb6dd05683891bc810c2ddc36a966;
files on Dropbox / Google Drive / huggingface.co/datasets/orion-ai-lab/S4A): one netCDF4 (HDF5)
file per patch, ``<year>_<tile>_patch_<row>_<col>.nc`` (e.g. ``2020_31TCG_patch_14_14.nc``), anywhere
under ``SRC`` (the distribution nests them as ``<year>/<tile>/``). Root attributes
``patch_full_name``, ``patch_year``, ``patch_name``, ``patch_country_code``, ``patch_tile`` ...;
one group per band, ``B01`` ... ``B12`` and ``B8A``, holding the variable of the group's name
(``time, y, x``, uint16 L1C digital numbers: 366 px at 10 m, 183 at 20 m, 61 at 60 m) with the
coordinate variables ``time`` (CF ``<unit> since <date>``), ``y`` and ``x`` (projected metres), and
the attribute ``crs`` (``+init=epsg:32631``); a group ``labels`` (variable ``labels``, ``y, x``,
366 px, the S4A crop codes of ``utils/encodings_en.py``, 0 = background) and a group ``parcels``.

What is cut, as the GeoRank authors do (tomburgert/georank, ``lmdb/write_s4a.py``,
``data/dataset.py`` and ``data/constants.py``, commit 4754634ceb85f31e11a37702fb06c9ea5a9c248d):

* every acquisition date of a patch is a sample of its own (``--time-index`` keeps one date);
* the patch is cut into a ``grid`` x ``grid`` (3x3) grid of cells, 122 px at 10 m (61 px at 20 m);
  20 m bands are upsampled per cell to the 10 m grid, bilinear with half-pixel centres and
  mirrored edges (their ``skimage.transform.resize(..., mode='reflect')``); 60 m bands, which the
  authors do not use (61 px do not split into 3 cells), are upsampled the same way over the whole
  patch before it is cut;
* a cell's labels are the crop groups of the codes covering more than ``min_pixels`` (25) of its
  pixels, background (0) excluded; a cell without any is skipped. The 9 groups are the first level
  of the S4A taxonomy (code // 100: 1xx cereals ... 9xx other crops and classes), in the authors'
  index order (:data:`CLASSES`);
* the authors keep 122 px cells and their loader resizes them to 120 px; this converter stores
  the central ``size`` (120) px of each cell instead (no interpolation), labels from the whole cell.

Per sample: bands in canonical Sentinel-2 order (``--bands all``: the 13 L1C bands; ``georank``:
the authors' 10, without B01, B09, B10), ``lat``/``lon`` (WGS84 degrees) of the crop's centre from
the patch's ``x``/``y`` and ``crs``, ``time`` = the acquisition date, ``group`` = the source patch
(its index in the sorted list of files; crops and dates of one patch share it), ``name`` =
``<patch_full_name>_ts<date index from 1>_grid<row><col>`` (the authors' keys, rows and columns from 1).

Splits (the paper's S4A-rand and S4A-tiles; the authors' split files are not published): both
keep the crops and dates of a patch on one side. ``splits/random``: patches drawn at random
(seed), 70/10/20 % train/val/test, the default scheme. ``splits/tile``: whole Sentinel-2 tiles;
``--test-tiles T1,T2`` sends those tiles to test and the rest to train, else tiles are drawn at
random (seed) for about 70/10/20 % of the patches.
"""

from __future__ import annotations

import re
import warnings
from datetime import datetime, timedelta
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ...errors import ConfigError, DataError
from ..bands import S2_BANDS, S2_GSD
from ..splits import random_split
from ..writer import write_split
from .base import CONVERTERS, Converter, Option
from .parallel import ConversionPlan, write_file

GSD = 10.0
GRID = 3  # cells per side of a patch (366 px -> 122 px cells)
SIZE = 120  # px stored per crop, the centre of its cell
MIN_PIXELS = 25  # a code is a label of a cell when it covers more pixels than this
FRACTIONS = (0.7, 0.1, 0.2)  # train / val / test
BAND_SETS = {
    "all": list(S2_BANDS),
    "georank": ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
}
REFERENCE = "B02"  # the 10 m band whose grid the crops are cut from

# The first level of the S4A taxonomy, in the GeoRank authors' class index order; a code's group
# is code // 100 (110 Wheat -> 1 Cereals, 975 Fallow land -> 9 Other crops and Classes).
CLASSES: List[str] = [
    "Cereals",
    "Vegetables and melons",
    "Fruit and nuts",
    "Oilseed crops",
    "Root tuber crops with high starch or inulin content",
    "Beverage and spice crops",
    "Leguminous crops",
    "Sugar crops",
    "Other crops and Classes",
]
# Every code of the S4A taxonomy (utils/encodings_en.py of Orion-AI-Lab/S4A), by group.
_CODES_BY_GROUP = {
    1: "100 110 120 130 140 150 160 170 180 190 191 192",
    2: "200 210 211 212 213 214 215 216 217 219 220 221 222 223 224 225 226 227 230 231 232 233 234 235 236 240 250",
    3: "300 310 311 312 313 314 315 316 317 318 320 321 322 323 324 325 330 340 341 342 343 344 345 346 347 350 351 "
       "352 353 354 355 356 357 360 361 362 363 364 365 366 367 380",
    4: "400 410 420 430 431 432 433 434 435 436 437 438 439 440 441 442 443 444",
    5: "500 510 520 530 540 550",
    6: "600 610 611 612 613 614 615 620 621 622 623 624 625 626 627 628 629 630",
    7: "700 710 720 730 740 750 760 770 780 790",
    8: "800 810 820 830 840",
    9: "900 910 911 912 920 921 922 923 924 925 930 931 932 940 950 951 952 960 970 971 972 973 974 975 976 977 980 "
       "981 982 998",
}
BACKGROUND = 0
CODE_TO_CLASS: Dict[int, int] = {int(c): g - 1 for g, codes in _CODES_BY_GROUP.items() for c in codes.split()}
ROOT_ATTRS = ("patch_full_name", "patch_tile")
TIME_UNITS = re.compile(r"^\s*(days|hours|minutes|seconds|milliseconds|microseconds)\s+since\s+(.+?)\s*$")


# ----------------------------------------------------------------------------- reading one file


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", "replace")
    return str(value)


def open_patch(path: Path):
    """The patch file opened with h5py; a file that is not netCDF4/HDF5 raises DataError."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: file: cannot be read as a netCDF4 (HDF5) Sen4AgriNet patch ({e})") from None


def root_attr(f, path: Path, key: str) -> str:
    if key not in f.attrs:
        raise DataError(f"{path}: {key}: root attribute is missing (not a Sen4AgriNet patch?)")
    return _text(f.attrs[key]).strip()


def variable(f, path: Path, group: str, ndim: int):
    """``/<group>/<group>``, the data variable of a band (or labels) group, with ``ndim`` axes."""
    if group not in f:
        what = "band" if group.startswith("B") else "variable"
        raise DataError(f"{path}: {group}: {what} group is missing (not a Sen4AgriNet patch?)")
    if group not in f[group]:
        raise DataError(f"{path}: {group}/{group}: variable is missing")
    ds = f[group][group]
    if ds.ndim != ndim:
        dims = "time, y, x" if ndim == 3 else "y, x"
        raise DataError(f"{path}: {group}/{group}: expected {ndim} dimensions ({dims}), found shape {ds.shape}")
    return ds


def coordinate(f, path: Path, group: str, axis: str, n: int) -> np.ndarray:
    if axis not in f[group]:
        raise DataError(f"{path}: {group}/{axis}: coordinate variable is missing")
    values = np.asarray(f[group][axis][()], np.float64).reshape(-1)
    if values.shape != (n,):
        raise DataError(f"{path}: {group}/{axis}: {values.size} values for {n} pixels")
    return values


def acquisition_dates(f, path: Path, group: str, n: int) -> List[str]:
    """ISO dates of the ``time`` coordinate of a band group (CF ``<unit> since <date>``)."""
    if "time" not in f[group]:
        raise DataError(f"{path}: {group}/time: coordinate variable is missing")
    ds = f[group]["time"]
    units = _text(ds.attrs.get("units", ""))
    m = TIME_UNITS.match(units)
    if m is None:
        raise DataError(f"{path}: {group}/time: units {units!r} are not '<days|hours|...> since <date>'")
    try:
        epoch = datetime.fromisoformat(m[2].replace("T", " ").split(".")[0])
    except ValueError:
        raise DataError(f"{path}: {group}/time: reference date {m[2]!r} in units is not a date") from None
    values = np.asarray(ds[()], np.float64).reshape(-1)
    if values.shape != (n,) or not np.isfinite(values).all():
        raise DataError(f"{path}: {group}/time: expected {n} finite values, found {values.size}")
    return [(epoch + timedelta(**{m[1]: float(v)})).date().isoformat() for v in values]


@lru_cache(maxsize=16)
def _transformer(crs_text: str):
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError

    m = re.search(r"epsg:(\d+)", crs_text, re.IGNORECASE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyproj warns about the '+init=' syntax
            crs = CRS.from_epsg(int(m[1])) if m else CRS.from_user_input(crs_text)
    except CRSError:
        return None, None
    # always_xy: (easting, northing) in, (lon, lat) out, whatever axis order the CRS declares
    return crs, Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def patch_grid(f, path: Path, tile: str, shape10: Tuple[int, int], shape20: Tuple[int, int]):
    """(x0, y0, dx, dy, transformer): the upper-left corner of the 10 m grid and its pixel size.

    ``x``/``y`` are pixel centres (xarray's ``open_rasterio``) or corners; which, the 20 m band
    tells: its first centre lies 5 m further in than the 10 m band's, its first corner does not.
    """
    h, w = shape10
    x10, y10 = coordinate(f, path, REFERENCE, "x", w), coordinate(f, path, REFERENCE, "y", h)
    x20, y20 = coordinate(f, path, "B05", "x", shape20[1]), coordinate(f, path, "B05", "y", shape20[0])
    dx, dy = np.diff(x10), np.diff(y10)
    if not (np.allclose(dx, GSD, atol=1e-3) and np.allclose(dy, -GSD, atol=1e-3)):
        raise DataError(f"{path}: {REFERENCE}/x, {REFERENCE}/y: not a regular 10 m grid (north up)")
    for axis, a, b in (("x", x10[0], x20[0]), ("y", y10[0], y20[0])):
        if min(abs(abs(b - a) - GSD / 2), abs(b - a)) > 0.5:
            raise DataError(f"{path}: B05/{axis}: the 20 m grid starts {b - a:+.2f} m from the 10 m grid "
                            "(expected 0 for pixel corners or 5 m for pixel centres)")
    x0, y0 = 2 * x10[0] - x20[0], 2 * y10[0] - y20[0]
    ds = f[REFERENCE][REFERENCE]
    if "crs" not in ds.attrs:
        raise DataError(f"{path}: {REFERENCE}/{REFERENCE}: crs attribute is missing")
    crs_text = _text(ds.attrs["crs"])
    crs, transformer = _transformer(crs_text)
    if transformer is None:
        raise DataError(f"{path}: {REFERENCE}/{REFERENCE}: crs {crs_text!r} is not a coordinate reference system")
    zone = crs.utm_zone
    if zone is not None and re.match(r"^\d+", tile) and int(zone[:-1]) != int(re.match(r"^\d+", tile)[0]):
        raise DataError(f"{path}: {REFERENCE}/{REFERENCE}: crs {crs_text!r} is UTM zone {zone}, "
                        f"but patch_tile {tile} lies in zone {re.match(r'^[0-9]+', tile)[0]}")
    return float(x0), float(y0), GSD, -GSD, transformer


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a bilinear resize with half-pixel centres and mirrored edges
    (numpy's ``reflect``: ... c b | a b c ...)."""
    u = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(u).astype(np.int64)
    w1 = u - i0
    m = np.zeros((n_out, n_in), np.float64)
    for idx, weight in ((i0, 1.0 - w1), (i0 + 1, w1)):
        if n_in > 1:
            idx = np.abs(idx)
            idx = np.where(idx > n_in - 1, 2 * (n_in - 1) - idx, idx)
        else:
            idx = np.zeros_like(idx)
        np.add.at(m, (np.arange(n_out), idx), weight)
    return m


def resize(image: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """A 2-D array resized bilinearly to ``shape`` (float64)."""
    if image.shape == tuple(shape):
        return image.astype(np.float64)
    return bilinear_matrix(image.shape[0], shape[0]) @ image.astype(np.float64) @ bilinear_matrix(image.shape[1],
                                                                                                    shape[1]).T


def _to_uint16(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def cell_labels(cell: np.ndarray, min_pixels: int, path: Path) -> List[int]:
    """Class indices of the codes covering more than ``min_pixels`` pixels of a cell."""
    codes, counts = np.unique(cell, return_counts=True)
    unknown = [int(c) for c in codes if int(c) != BACKGROUND and int(c) not in CODE_TO_CLASS]
    if unknown:
        raise DataError(f"{path}: labels/labels: unknown Sen4AgriNet crop code(s) {unknown[:5]}")
    return sorted({CODE_TO_CLASS[int(c)] for c, n in zip(codes, counts) if int(c) != BACKGROUND and n > min_pixels})


# ----------------------------------------------------------------------------- the plan


def find_patches(src: Path) -> List[Path]:
    patches = sorted(p for p in src.rglob("*.nc") if p.is_file())
    if not patches:
        raise DataError(f"{src}: files: no Sen4AgriNet netCDF patches found (expected {src}/<year>/<tile>/"
                        "<year>_<tile>_patch_<row>_<col>.nc)")
    return patches


def inspect_patch(path: Path) -> Tuple[str, str, int, Tuple[int, int]]:
    """(patch_full_name, tile, number of dates, 10 m shape) of a patch file."""
    with open_patch(path) as f:
        name, tile = (root_attr(f, path, key) for key in ROOT_ATTRS)
        ds = variable(f, path, REFERENCE, 3)
        return name, tile, int(ds.shape[0]), (int(ds.shape[1]), int(ds.shape[2]))


def _parse_tiles(test_tiles: Optional[str]) -> Optional[List[str]]:
    if test_tiles is None:
        return None
    tiles = [t.strip().upper() for t in str(test_tiles).split(",") if t.strip()]
    if not tiles:
        raise ConfigError("sen4agrinet: test_tiles must name at least one tile (e.g. 31TCG,31TDM)")
    return tiles


def plan_sen4agrinet(src: Path, *, bands: str = "all", size: int = SIZE, grid: int = GRID,
                     min_pixels: int = MIN_PIXELS, time_index: Optional[int] = None,
                     test_tiles: Optional[str] = None, seed: int = 0) -> ConversionPlan:
    """What :func:`convert_sen4agrinet` writes: the crops of every patch file under ``src``, sorted."""
    if bands not in BAND_SETS:
        raise ConfigError(f"sen4agrinet: bands must be one of {tuple(BAND_SETS)}, got {bands!r}")
    if grid < 1:
        raise ConfigError(f"sen4agrinet: grid must be a positive number of cells per side, got {grid}")
    if min_pixels < 0:
        raise ConfigError(f"sen4agrinet: min_pixels must be >= 0, got {min_pixels}")
    tiles_test = _parse_tiles(test_tiles)
    files = find_patches(src)
    infos = [inspect_patch(p) for p in files]
    shape = infos[0][3]
    for path, info in zip(files, infos):
        if info[3] != shape:
            raise DataError(f"{path}: {REFERENCE}: {info[3][0]}x{info[3][1]} px, expected {shape[0]}x{shape[1]} "
                            f"like {files[0]}")
    if shape[0] != shape[1] or shape[0] % (2 * grid):
        raise ConfigError(f"sen4agrinet: grid {grid} does not split {files[0]} ({shape[0]}x{shape[1]} px at 10 m, "
                          f"{shape[0] // 2} at 20 m) into whole cells")
    cell = shape[0] // grid
    if not 0 < size <= cell:
        raise ConfigError(f"sen4agrinet: size {size} must be in 1..{cell} (the cells of {files[0]} are {cell} px)")
    if time_index is not None:
        for path, info in zip(files, infos):
            if not -info[2] <= time_index < info[2]:
                raise ConfigError(f"sen4agrinet: time_index {time_index} is out of range for {path} "
                                  f"({info[2]} dates)")
    tiles = [info[1] for info in infos]
    names = [info[0] for info in infos]
    seen: Dict[str, Path] = {}
    for path, name in zip(files, names):
        if name in seen:
            raise DataError(f"{path}: patch_full_name: {name!r} is also the name of {seen[name]}")
        seen[name] = path
    all_tiles = sorted(set(tiles))
    random_codes = random_split(len(files), FRACTIONS, seed)
    if tiles_test is not None:
        missing = [t for t in tiles_test if t not in all_tiles]
        if missing:
            raise ConfigError(f"sen4agrinet: test_tiles {missing} are not among the tiles of {src} ({all_tiles})")
        tile_codes = np.array([2 if t in tiles_test else 0 for t in tiles], np.uint8)
    else:
        tile_ids = np.array([all_tiles.index(t) for t in tiles])
        tile_codes = random_split(len(files), FRACTIONS, seed, groups=tile_ids)
    band_list = BAND_SETS[bands]
    dates = [1 if time_index is not None else info[2] for info in infos]
    split_attrs = {"seed": seed, "fractions": list(FRACTIONS)}
    return ConversionPlan(
        name="sen4agrinet",
        items=[(path, i) for i, path in enumerate(files)],
        read=read_sen4agrinet,
        writer=dict(
            bands=band_list,
            size=(size, size),
            gsd=GSD,
            source=f"Sen4AgriNet (Sykas et al., 2022), GeoRank multi-label crops, converted from {src}",
            class_names=CLASSES,
            multi_label=True,
            attrs={"product": "L1C", "grid": grid, "cell": cell, "min_pixels": min_pixels, "tiles": all_tiles,
                   "time_index": "all" if time_index is None else int(time_index)},
            before_commit=partial(add_splits, random_codes=np.asarray(random_codes, np.uint8),
                                  tile_codes=np.asarray(tile_codes, np.uint8), attrs=split_attrs,
                                  test_tiles=tiles_test),
        ),
        context=dict(bands=band_list, size=size, grid=grid, cell=cell, min_pixels=min_pixels,
                     time_index=time_index, shape=shape),
        samples=[grid * grid * d for d in dates],
    )


def add_splits(f, path: Path, *, random_codes: np.ndarray, tile_codes: np.ndarray, attrs: Dict[str, Any],
               test_tiles: Optional[List[str]]) -> None:
    """``splits/random`` (default) and ``splits/tile`` from the per-patch codes, by ``group``."""
    group = f["group"][:]
    write_split(f, "random", random_codes[group])
    f["splits"]["random"].attrs.update({"scheme": "random", "unit": "patch", **attrs})
    write_split(f, "tile", tile_codes[group])
    tile_attrs = {"scheme": "tile", "unit": "tile", **attrs}
    if test_tiles is not None:
        tile_attrs = {"scheme": "tile", "unit": "tile", "test_tiles": list(test_tiles)}
    f["splits"]["tile"].attrs.update(tile_attrs)
    f.attrs["default_split"] = "random"


def read_sen4agrinet(item: Tuple[Path, int], context: Dict[str, Any]) -> Iterator[Tuple[np.ndarray, Dict[str, Any]]]:
    """The labelled crops of one patch file, date by date, row by row."""
    path, group = item
    bands, size, grid, cell = context["bands"], context["size"], context["grid"], context["cell"]
    shape10 = context["shape"]
    with open_patch(path) as f:
        name, tile = (root_attr(f, path, key) for key in ROOT_ATTRS)
        ref = variable(f, path, REFERENCE, 3)
        if ref.shape[1:] != shape10:
            raise DataError(f"{path}: {REFERENCE}: {ref.shape[1]}x{ref.shape[2]} px, expected {shape10[0]}x{shape10[1]}")
        n_dates = ref.shape[0]
        variables = {}
        for band in bands:
            ds = variable(f, path, band, 3)
            native = shape10[0] * 10 // S2_GSD[band]
            if ds.shape != (n_dates, native, native):
                raise DataError(f"{path}: {band}/{band}: shape {ds.shape}, expected ({n_dates}, {native}, {native}) "
                                f"at {S2_GSD[band]} m")
            if ds.dtype.kind not in "ui":
                raise DataError(f"{path}: {band}/{band}: expected integer digital numbers, found {ds.dtype}")
            variables[band] = ds
        dates = acquisition_dates(f, path, REFERENCE, n_dates)
        labels = variable(f, path, "labels", 2)
        if labels.shape != shape10:
            raise DataError(f"{path}: labels/labels: shape {labels.shape}, expected {shape10}")
        labels = labels[()]
        if labels.dtype.kind not in "ui":
            raise DataError(f"{path}: labels/labels: expected integer crop codes, found {labels.dtype}")
        shape20 = (shape10[0] // 2, shape10[1] // 2)
        x0, y0, dx, dy, transformer = patch_grid(f, path, tile, shape10, shape20)
        off = (cell - size) // 2
        cells = []
        for r in range(grid):
            for c in range(grid):
                classes = cell_labels(labels[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell],
                                      context["min_pixels"], path)
                if classes:
                    cells.append((r, c, classes))
        if not cells:
            return
        rows = np.array([r * cell + off + size / 2 for r, _, _ in cells])
        cols = np.array([c * cell + off + size / 2 for _, c, _ in cells])
        lon, lat = transformer.transform(x0 + dx * cols, y0 + dy * rows)
        time_index = context["time_index"]
        steps = range(n_dates) if time_index is None else [range(n_dates)[time_index]]
        for t in steps:
            stack = _stack_date(variables, bands, t, shape10, grid, cell)
            for k, (r, c, classes) in enumerate(cells):
                top, left = r * cell + off, c * cell + off
                image = stack[:, top:top + size, left:left + size]
                yield image, dict(lat=float(lat[k]), lon=float(lon[k]), labels=classes, time=dates[t], group=group,
                                  name=f"{name}_ts{t + 1}_grid{r + 1}{c + 1}")


def _stack_date(variables, bands: List[str], t: int, shape10: Tuple[int, int], grid: int, cell: int) -> np.ndarray:
    """All bands of date ``t`` on the 10 m grid (uint16): 20 m bands upsampled cell by cell, as the
    GeoRank authors do, 60 m bands over the whole patch (61 px do not split into 3 cells)."""
    stack = np.empty((len(bands),) + tuple(shape10), np.uint16)
    for i, band in enumerate(bands):
        data = variables[band][t]
        gsd = S2_GSD[band]
        if gsd == 10:
            stack[i] = data
        elif gsd == 20:
            native = cell // 2
            for r in range(grid):
                for c in range(grid):
                    block = data[r * native:(r + 1) * native, c * native:(c + 1) * native]
                    stack[i, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = _to_uint16(resize(block, (cell, cell)))
        else:
            stack[i] = _to_uint16(resize(data, shape10))
    return stack


def convert_sen4agrinet(src: Path, out: Path, *, bands: str = "all", size: int = SIZE, grid: int = GRID,
                        min_pixels: int = MIN_PIXELS, time_index: Optional[int] = None,
                        test_tiles: Optional[str] = None, seed: int = 0, progress: bool = True) -> Path:
    """Convert Sen4AgriNet patches to the GeoRank multi-label crops (see the module docstring)."""
    plan = plan_sen4agrinet(src, bands=bands, size=size, grid=grid, min_pixels=min_pixels, time_index=time_index,
                            test_tiles=test_tiles, seed=seed)
    return write_file(plan, out, progress=progress)


CONVERTERS.register(Converter(
    "sen4agrinet",
    "Sen4AgriNet: 3x3 crops (120 px) of 366 px patches, every date, multi-label crop groups (9), "
    "random and tile splits (GeoRank's Sen4Agri-ML)",
    convert_sen4agrinet,
    (
        Option("bands", str, "all", "all (13 L1C bands) or georank (the authors' 10: no B01, B09, B10)",
               tuple(BAND_SETS)),
        Option("size", int, SIZE, "px kept at the centre of each cell (cells are 122 px)"),
        Option("grid", int, GRID, "cells per side of a patch"),
        Option("min_pixels", int, MIN_PIXELS, "a crop code labels a cell when it covers more pixels than this"),
        Option("time_index", int, None, "keep only this date of each patch (0 = first, -1 = last); default: all"),
        Option("test_tiles", str, None, "comma-separated tiles for the test side of splits/tile; "
               "default: whole tiles drawn at random"),
        Option("seed", int, 0, "seed of the random and tile splits"),
    ),
    plan=plan_sen4agrinet,
))
