"""Segmentation data: image tiles with per-pixel class masks, cut into chips.

Two converters share the chipping here:

``geotiff-masks`` (generic)
    ``SRC/images/<stem>.tif`` (multi-band GeoTIFFs) and ``SRC/masks/<stem>.tif`` (single-band
    class indices on the same pixel grid), optionally inside ``SRC/train``, ``SRC/val`` and
    ``SRC/test`` (the folders give the official split). Band names come from ``--bands`` or, when
    it is left out, from the images' band descriptions; class names from ``--classes``.

``cashew-benin`` (Smallholder Cashew Plantations in Benin, TechnoServe / Radiant MLHub)
    The layout torchgeo's ``BeninSmallHolderCashews`` reads (microsoft/torchgeo
    ``torchgeo/datasets/benin_cashews.py`` at commit 7ea0616, 2025-08): one 1186 x 1122 px tile
    at 10 m in EPSG:32631, 70 dates, one file per band and date
    ``imagery/00/00_<YYYYMMDD>/00_<YYYYMMDD>_<band>_10m.tif`` (B01 ... B12 and B8A, all
    resampled to 10 m by the provider, plus a ``CLD`` cloud-probability band), and the labels as
    polygons in ``labels/00.geojson`` (property ``class``: 1 well-managed plantation,
    2 poorly-managed plantation, 3 non-plantation, 4 residential, 5 background, 6 uncertain;
    pixels outside every polygon are "no data"). The polygons are rasterised onto the tile's
    grid (a pixel belongs to a polygon when its centre is inside, as in torchgeo) and the tile
    is cut into ``chip_size`` chips every ``stride`` pixels, the last row and column flush with
    the tile's edge (torchgeo's defaults: 256 and 128). One date is converted (``--date``): by
    default the least cloudy one by the mean of its ``CLD`` band, which is logged and stored as
    each chip's ``time``. Chips overlap, so split them spatially
    (``ssl-rs data split OUT.h5 --scheme spatial-block --block-km 2``), not at random.

Masks are stored with classes ``0 .. K-1`` and ``mask_nodata`` (255) for unlabelled pixels.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import ConfigError, DataError
from ..bands import S2_BANDS_L2A, normalize_band_name
from .base import CONVERTERS, Converter, Option
from .geotiff import Grid, _as_uint16, grid_of, open_geotiff
from .parallel import ConversionPlan, write_file

log = logging.getLogger(__name__)

MASK_NODATA = 255
SPLIT_FOLDERS = ("train", "val", "test")
TIF_SUFFIXES = (".tif", ".tiff")


# ----------------------------------------------------------------------------- chips
def chip_offsets(length: int, chip: int, stride: int) -> List[int]:
    """Start offsets along one axis: every ``stride`` pixels, the last chip flush with the edge
    (so every pixel is covered and no chip runs past the tile)."""
    if chip > length:
        return []
    starts = list(range(0, length - chip, stride))
    return starts + [length - chip]


def chip_windows(height: int, width: int, chip: int, stride: int) -> List[Tuple[int, int]]:
    """(row, col) of the upper-left corner of every chip of a ``height`` x ``width`` tile."""
    return [(r, c) for r in chip_offsets(height, chip, stride) for c in chip_offsets(width, chip, stride)]


def as_mask(array: np.ndarray, path: Path, num_classes: int, nodata: int) -> np.ndarray:
    """Class indices as uint8; a value that is neither a class nor ``nodata`` is a DataError."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise DataError(f"{path}: mask: values are not whole class indices")
    values = np.unique(array)
    bad = [v for v in values.tolist() if not (0 <= v < num_classes or v == nodata)]
    if bad:
        raise DataError(f"{path}: mask: value {bad[0]:g} is neither a class index (0 .. {num_classes - 1}) "
                        f"nor the no-data value {nodata}")
    return array.astype(np.uint8)


def chips_of(image: np.ndarray, mask: np.ndarray, grid: Grid, chip: int, stride: int):
    """(image chip, mask chip, lat, lon, row, col) of a tile; ``chip == 0`` keeps the whole tile."""
    height, width = image.shape[-2:]
    windows = [(0, 0)] if chip == 0 else chip_windows(height, width, chip, stride)
    side_h, side_w = (height, width) if chip == 0 else (chip, chip)
    for row, col in windows:
        lat, lon = grid.center_latlon(row, col, side_h, side_w)
        yield (image[:, row:row + side_h, col:col + side_w], mask[row:row + side_h, col:col + side_w],
               lat, lon, row, col)


def parse_names(option: str, text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ConfigError(f"{option}: empty name in {text!r} (use a comma-separated list)")
    if len(set(names)) != len(names):
        raise ConfigError(f"{option}: names repeat in {text!r}")
    return names


# ----------------------------------------------------------------------------- generic tiles + masks
def find_tile_pairs(src: Path) -> List[Tuple[Path, Path, Optional[str]]]:
    """(image, mask, split or None) of every image tile, in a deterministic order."""
    split_roots = [(src / s, s) for s in SPLIT_FOLDERS if (src / s).is_dir()]
    roots = split_roots or [(src, None)]
    pairs = []
    for root, split in roots:
        images, masks = root / "images", root / "masks"
        if not images.is_dir() and not masks.is_dir():
            raise DataError(f"{src}: files: no GeoTIFF tiles found (expected {root}/images/*.tif and {root}/masks/*.tif)")
        for folder in (images, masks):
            if not folder.is_dir():
                raise DataError(f"{folder}: folder not found (expected {root}/images/*.tif and {root}/masks/*.tif)")
        for image in sorted(p for p in images.iterdir() if p.suffix.lower() in TIF_SUFFIXES):
            mask = next((masks / (image.stem + s) for s in TIF_SUFFIXES if (masks / (image.stem + s)).is_file()), None)
            if mask is None:
                raise DataError(f"{image}: mask: no mask {masks / image.name} for this image")
            pairs.append((image, mask, split))
        orphans = sorted({p.stem for p in masks.iterdir() if p.suffix.lower() in TIF_SUFFIXES}
                         - {p.stem for p in images.iterdir()})
        if orphans:
            raise DataError(f"{masks / orphans[0]}.tif: image: no image for this mask ({len(orphans)} such masks)")
    if not pairs:
        raise DataError(f"{src}: files: no GeoTIFF tiles found (expected {src}/images/*.tif with {src}/masks/*.tif)")
    return pairs


def tile_bands(path: Path, count: int, descriptions: Sequence[Optional[str]], given: Optional[List[str]]) -> List[str]:
    """The image's band names: ``--bands``, or its band descriptions (``B02`` ...)."""
    if given is not None:
        names = given
    elif all(descriptions):
        names = list(descriptions)
    else:
        raise ConfigError(f"--bands: {path} has {count} bands without names; name them in file order "
                          f"(e.g. --bands {','.join(S2_BANDS_L2A[:count])})")
    if len(names) != count:
        raise DataError(f"{path}: bands: {count} bands in the file, {len(names)} named ({','.join(names)})")
    try:
        return [normalize_band_name(n) for n in names]
    except ValueError as e:
        raise ConfigError(f"--bands: {e}") from None


def ground_sample_distance(grid: Grid) -> float:
    """Metres per pixel: the CRS's pixel size where it is in metres (UTM ...), otherwise (degrees,
    feet) the geodesic length of one pixel step east and south at the tile's centre, averaged."""
    from pyproj import Geod

    if grid.crs.is_projected and grid.crs.linear_units in ("metre", "meter"):
        return float(abs(grid.transform.a))
    row, col = grid.height / 2.0, grid.width / 2.0
    lat, lon = grid.latlon([row, row, row + 1], [col, col + 1, col])
    _, _, east = Geod(ellps="WGS84").inv(lon[0], lat[0], lon[1], lat[1])
    _, _, south = Geod(ellps="WGS84").inv(lon[0], lat[0], lon[2], lat[2])
    return float((east + south) / 2.0)


def plan_geotiff_masks(src: Path, *, bands: Optional[str] = None, classes: Optional[str] = None,
                       nodata: int = MASK_NODATA, chip_size: int = 0, stride: int = 0) -> ConversionPlan:
    pairs = find_tile_pairs(src)  # the source first: a folder of something else is said before a missing option
    class_names = parse_names("--classes", classes)
    if class_names is None:
        raise ConfigError("--classes: name the mask's classes in index order (e.g. --classes background,field,forest)")
    if not 0 <= nodata <= 255:
        raise ConfigError(f"--nodata: must be 0 .. 255 (masks are uint8), got {nodata}")
    if nodata < len(class_names):
        raise ConfigError(f"--nodata: {nodata} is the index of class {class_names[nodata]!r}; use a value >= {len(class_names)}")
    if chip_size < 0 or stride < 0:
        raise ConfigError(f"--{'chip-size' if chip_size < 0 else 'stride'}: must be >= 0")
    stride = stride or chip_size
    with open_geotiff(pairs[0][0]) as first:  # the first tile sets the bands, the size and the GSD
        count, descriptions, grid = first.count, first.descriptions, grid_of(first)
    band_names = tile_bands(pairs[0][0], count, descriptions, parse_names("--bands", bands))
    tile = (grid.height, grid.width)
    if chip_size == 0:
        size, counts = tile, [1] * len(pairs)
    else:
        size = (chip_size, chip_size)
        counts = []
        for image, _, _ in pairs:
            with open_geotiff(image) as ds:
                n = len(chip_windows(ds.height, ds.width, chip_size, stride))
            if n == 0:
                raise DataError(f"{image}: size: {ds.height}x{ds.width} px is smaller than --chip-size {chip_size}")
            counts.append(n)
    return ConversionPlan(
        name="geotiff-masks",
        items=pairs,
        read=read_tile_pair,
        samples=counts,
        writer=dict(bands=band_names, size=size, gsd=ground_sample_distance(grid),
                    source=f"GeoTIFF tiles with masks, converted from {src}",
                    mask_classes=class_names, mask_nodata=nodata),
        context=dict(bands=band_names, classes=class_names, nodata=nodata, chip=chip_size, stride=stride,
                     tile=tile, first=pairs[0][0].name),
    )


def read_tile_pair(item: Tuple[Path, Path, Optional[str]], context: Dict[str, Any]) -> Iterator[Tuple[np.ndarray, Dict]]:
    image_path, mask_path, split = item
    with open_geotiff(image_path) as ds:
        if ds.count != len(context["bands"]):
            raise DataError(f"{image_path}: bands: {ds.count} bands, expected {len(context['bands'])} like {context['first']}")
        if context["chip"] == 0 and (ds.height, ds.width) != tuple(context["tile"]):
            raise DataError(f"{image_path}: size: {ds.height}x{ds.width} px, expected {context['tile'][0]}x"
                            f"{context['tile'][1]} like {context['first']} (or cut chips with --chip-size)")
        grid = grid_of(ds)
        image = _as_uint16(ds.read(), image_path)
    with open_geotiff(mask_path) as ms:
        if ms.count != 1:
            raise DataError(f"{mask_path}: bands: a mask has one band, found {ms.count}")
        if (ms.height, ms.width) != (grid.height, grid.width):
            raise DataError(f"{mask_path}: size: {ms.height}x{ms.width} px, but its image is {grid.height}x{grid.width}")
        if ms.crs != grid.crs or not np.allclose(tuple(ms.transform)[:6], tuple(grid.transform)[:6]):
            raise DataError(f"{mask_path}: georeferencing: not on its image's pixel grid ({image_path.name})")
        mask = as_mask(ms.read(1), mask_path, len(context["classes"]), context["nodata"])
    for chip, chip_mask, lat, lon, row, col in chips_of(image, mask, grid, context["chip"], context["stride"]):
        name = image_path.stem if context["chip"] == 0 else f"{image_path.stem}_r{row}_c{col}"
        yield chip, dict(lat=lat, lon=lon, mask=chip_mask, name=name, split=split)


def convert_geotiff_masks(src: Path, out: Path, *, progress: bool = True, **options: Any) -> Path:
    """Convert image tiles + mask tiles (see the module docstring) into one HDF5 file with masks."""
    return write_file(plan_geotiff_masks(src, **options), out, progress=progress)


CONVERTERS.register(Converter(
    "geotiff-masks",
    "image GeoTIFFs + class-mask GeoTIFFs (images/, masks/; optional train/val/test folders), chipped",
    convert_geotiff_masks,
    options=(
        Option("bands", str, None, "the images' band names in file order, comma-separated (default: the files' band descriptions)"),
        Option("classes", str, None, "the mask's class names in index order, comma-separated (required)"),
        Option("nodata", int, MASK_NODATA, "the mask value of unlabelled pixels (ignored by segmentation metrics)"),
        Option("chip_size", int, 0, "cut tiles into square chips of this many pixels (0: keep whole tiles)"),
        Option("stride", int, 0, "pixels between chips (default: --chip-size, no overlap)"),
    ),
    plan=plan_geotiff_masks,
))


# ----------------------------------------------------------------------------- Benin cashews
CASHEW_FILE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
CASHEW_CLOUD_BAND = "CLD"
#: label classes 1 .. 6 of labels/00.geojson, stored as 0 .. 5 (0, "no data", becomes MASK_NODATA)
CASHEW_CLASSES = ("well-managed plantation", "poorly-managed plantation", "non-plantation",
                  "residential", "background", "uncertain")
CASHEW_TILE = "00"


def cashew_dates(src: Path) -> List[str]:
    root = src / "imagery" / CASHEW_TILE
    if not root.is_dir():
        raise DataError(f"{src}: files: no cashew imagery found (expected {root}/00_<YYYYMMDD>/00_<YYYYMMDD>_<band>_10m.tif)")
    dates = sorted(p.name[len(CASHEW_TILE) + 1:] for p in root.iterdir()
                   if p.is_dir() and p.name.startswith(CASHEW_TILE + "_"))
    if not dates:
        raise DataError(f"{root}: dates: no 00_<YYYYMMDD> folders")
    return dates


def cashew_band_file(src: Path, date: str, band: str) -> Path:
    folder = f"{CASHEW_TILE}_{date}"
    return src / "imagery" / CASHEW_TILE / folder / f"{folder}_{band}_10m.tif"


def least_cloudy(src: Path, dates: Sequence[str]) -> str:
    """The date whose ``CLD`` band has the lowest mean (ties: the earliest)."""
    means = []
    for date in dates:
        path = cashew_band_file(src, date, CASHEW_CLOUD_BAND)
        if not path.is_file():
            raise DataError(f"{path}: bands: cloud band missing (needed to pick the least cloudy date; or give --date)")
        with open_geotiff(path) as ds:
            means.append(float(ds.read(1).mean()))
    return dates[int(np.argmin(means))]


def rasterize_labels(geojson: Path, grid: Grid) -> np.ndarray:
    """The polygons' classes on ``grid`` as mask values (class - 1; MASK_NODATA outside every polygon)."""
    from rasterio.crs import CRS
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    try:
        collection = json.loads(geojson.read_text())
        features = collection["features"]
    except FileNotFoundError:
        raise DataError(f"{geojson}: labels: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{geojson}: labels: not a GeoJSON FeatureCollection ({type(e).__name__})") from None
    # RFC 7946 GeoJSON is WGS84; the Benin labels declare their projected CRS in a "crs" member
    crs_name = (collection.get("crs") or {}).get("properties", {}).get("name", "EPSG:4326")
    try:
        label_crs = CRS.from_user_input(crs_name)
    except Exception:
        raise DataError(f"{geojson}: crs: {crs_name!r} is not a coordinate reference system") from None
    shapes = []
    for i, feature in enumerate(features):
        try:
            cls = feature["properties"]["class"]
            geometry = feature["geometry"]
        except (KeyError, TypeError):
            raise DataError(f"{geojson}: features[{i}]: no properties.class or geometry") from None
        if not (isinstance(cls, int) and 1 <= cls <= len(CASHEW_CLASSES)):
            raise DataError(f"{geojson}: features[{i}].properties.class: {cls!r} is not a class 1 .. {len(CASHEW_CLASSES)}")
        if label_crs != grid.crs:
            geometry = transform_geom(label_crs, grid.crs, geometry)
        shapes.append((geometry, cls - 1))
    if not shapes:
        raise DataError(f"{geojson}: features: no labelled polygons")
    return rasterize(shapes, out_shape=(grid.height, grid.width), fill=MASK_NODATA, transform=grid.transform,
                     all_touched=False, dtype=np.uint8)


def plan_cashew(src: Path, *, date: str = "least-cloudy", chip_size: int = 256, stride: int = 128) -> ConversionPlan:
    if chip_size < 1:
        raise ConfigError(f"--chip-size: must be >= 1, got {chip_size}")
    if stride < 1:
        raise ConfigError(f"--stride: must be >= 1, got {stride}")
    dates = cashew_dates(src)
    if date == "least-cloudy":
        date = least_cloudy(src, dates)
        log.info("cashew-benin: the least cloudy date is %s (mean of its CLD band)", date)
    elif date not in dates:
        raise ConfigError(f"--date: {date!r} is not one of the {len(dates)} dates in {src} ({dates[0]} ... {dates[-1]})")
    files = {band: cashew_band_file(src, date, band) for band in CASHEW_FILE_BANDS}
    missing = [p for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: bands: file missing ({len(missing)} of {len(files)} band files of {date})")
    with open_geotiff(files["B02"]) as ds:
        height, width = ds.height, ds.width
    windows = chip_windows(height, width, chip_size, stride)
    if not windows:
        raise DataError(f"{files['B02']}: size: the tile ({height}x{width} px) is smaller than --chip-size {chip_size}")
    return ConversionPlan(
        name="cashew-benin",
        items=[(src, date)],
        read=read_cashew,
        samples=[len(windows)],
        writer=dict(bands=list(CASHEW_FILE_BANDS), size=(chip_size, chip_size), gsd=10.0,
                    source=f"Smallholder Cashew Plantations in Benin (TechnoServe), {date}, converted from {src}",
                    mask_classes=list(CASHEW_CLASSES), mask_nodata=MASK_NODATA, attrs={"product": "L2A"}),
        context=dict(chip=chip_size, stride=stride),
    )


def read_cashew(item: Tuple[Path, str], context: Dict[str, Any]) -> Iterator[Tuple[np.ndarray, Dict]]:
    src, date = item
    grid = None
    bands = []
    for band in CASHEW_FILE_BANDS:
        path = cashew_band_file(src, date, band)
        with open_geotiff(path) as ds:
            if ds.count != 1:
                raise DataError(f"{path}: bands: expected a single-band GeoTIFF, found {ds.count} bands")
            if grid is None:
                grid = grid_of(ds)
            elif (ds.height, ds.width) != (grid.height, grid.width) or ds.crs != grid.crs:
                raise DataError(f"{path}: georeferencing: not on the grid of the date's B01 file")
            bands.append(_as_uint16(ds.read(1), path))
    image = np.stack(bands)
    mask = rasterize_labels(src / "labels" / f"{CASHEW_TILE}.geojson", grid)
    time = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    for chip, chip_mask, lat, lon, row, col in chips_of(image, mask, grid, context["chip"], context["stride"]):
        yield chip, dict(lat=lat, lon=lon, mask=chip_mask, time=time, name=f"{CASHEW_TILE}_{date}_r{row}_c{col}")


def convert_cashew(src: Path, out: Path, *, progress: bool = True, **options: Any) -> Path:
    """Convert the Benin cashew tile (see the module docstring) into chips with masks."""
    return write_file(plan_cashew(src, **options), out, progress=progress)


CONVERTERS.register(Converter(
    "cashew-benin",
    "Smallholder Cashew Plantations in Benin: one 10 m tile, 6 classes of polygons, cut into chips with masks",
    convert_cashew,
    options=(
        Option("date", str, "least-cloudy", "the date to convert, YYYYMMDD (default: the least cloudy by its CLD band)"),
        Option("chip_size", int, 256, "chip side in pixels (as torchgeo)"),
        Option("stride", int, 128, "pixels between chips (as torchgeo; chips overlap)"),
    ),
    plan=plan_cashew,
))
