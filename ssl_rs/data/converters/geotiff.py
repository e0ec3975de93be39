"""GeoTIFF helpers shared by the converters: opening with checks, patch centres in WGS84,
resampling per-band files onto one pixel grid and stacking them in canonical band order.

Every problem with an input file raises :class:`~ssl_rs.errors.DataError` as one line
``FILE: FIELD: what is wrong``.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, Mapping, Sequence, Tuple

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio._err import CPLE_BaseError
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from ...errors import DataError
from ..bands import normalize_band_name

# Upsampling 20 m / 60 m bands onto the 10 m grid is bilinear: smooth, no blocky 60 m
# pixels, and values stay inside the range of their neighbours (no overshoot as with cubic).
RESAMPLING = Resampling.bilinear


@dataclass(frozen=True)
class Grid:
    """The pixel grid of a reference raster: CRS, affine transform and shape."""

    crs: rasterio.crs.CRS
    transform: Affine
    height: int
    width: int

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        x0, y0 = pixel_to_xy(self.transform, 0, 0)
        x1, y1 = pixel_to_xy(self.transform, self.height, self.width)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    def latlon(self, rows, cols) -> Tuple[np.ndarray, np.ndarray]:
        """WGS84 (lat, lon) of fractional pixel positions; (row + 0.5, col + 0.5) is a pixel centre."""
        return pixel_to_latlon(self.crs, self.transform, rows, cols)

    def center_latlon(self, row_off: int = 0, col_off: int = 0, height: int | None = None, width: int | None = None):
        """(lat, lon) of the centre of a window (default: the whole raster)."""
        h = self.height if height is None else height
        w = self.width if width is None else width
        lat, lon = self.latlon(row_off + h / 2.0, col_off + w / 2.0)
        return float(lat), float(lon)


@contextmanager
def open_geotiff(path: str | os.PathLike) -> Iterator[rasterio.io.DatasetReader]:
    """Open a georeferenced GeoTIFF; unreadable files and files without CRS/transform raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file: not found")
    try:
        with warnings.catch_warnings():
            # we raise our own, clearer error below instead of rasterio's warning
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioIOError as e:
        raise DataError(f"{path}: file: cannot be read as a GeoTIFF ({e})") from None
    with ds:
        if ds.crs is None or ds.transform == Affine.identity():
            raise DataError(f"{path}: georeferencing: GeoTIFF has no CRS/transform")
        if np.dtype(ds.dtypes[0]).kind not in "ui":
            # floats would be truncated silently when stored as uint16 reflectance
            raise DataError(f"{path}: dtype: expected integer reflectance, found {ds.dtypes[0]}")
        try:
            yield ds
        except (RasterioIOError, CPLE_BaseError) as e:
            # a valid header over missing or damaged pixel data (a truncated download)
            cause = e.__cause__ or e.__context__ or e
            detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            raise DataError(f"{path}: pixels: cannot be read, the file is truncated or corrupt ({detail})") from None


def grid_of(ds: rasterio.io.DatasetReader) -> Grid:
    return Grid(ds.crs, ds.transform, ds.height, ds.width)


@lru_cache(maxsize=64)
def _to_wgs84(crs_wkt: str) -> Transformer:
    # always_xy=True: input is (x=easting or lon, y=northing or lat), output is (lon, lat),
    # whatever axis order the CRS definitions declare (EPSG:4326 itself declares lat first).
    return Transformer.from_crs(crs_wkt, "EPSG:4326", always_xy=True)


def pixel_to_xy(transform: Affine, rows, cols):
    """CRS coordinates (x, y) of fractional pixel positions; (0, 0) is the upper-left corner."""
    x = transform.a * cols + transform.b * rows + transform.c
    y = transform.d * cols + transform.e * rows + transform.f
    return x, y


def pixel_to_latlon(crs, transform: Affine, rows, cols) -> Tuple[np.ndarray, np.ndarray]:
    """WGS84 (lat, lon) in degrees of fractional pixel positions (row, col) of a raster."""
    rows = np.asarray(rows, np.float64)
    cols = np.asarray(cols, np.float64)
    x, y = pixel_to_xy(transform, rows, cols)
    lon, lat = _to_wgs84(crs.to_wkt()).transform(x, y)
    return np.asarray(lat), np.asarray(lon)


def raster_center_latlon(ds: rasterio.io.DatasetReader) -> Tuple[float, float]:
    """(lat, lon) of the centre of a raster's footprint."""
    return grid_of(ds).center_latlon()


def read_resampled(ds: rasterio.io.DatasetReader, shape: Tuple[int, int], band: int = 1) -> np.ndarray:
    """Read one band resampled to ``shape`` (rows, cols) with bilinear interpolation (GDAL
    RasterIO ``out_shape``); a band already at ``shape`` is read unchanged."""
    if (ds.height, ds.width) == tuple(shape):
        return ds.read(band)
    return ds.read(band, out_shape=tuple(shape), resampling=RESAMPLING)


def check_aligned(ds: rasterio.io.DatasetReader, path: Path, grid: Grid) -> None:
    """Raise DataError unless ``ds`` covers the footprint of ``grid`` in the same CRS.

    The tolerance is one native pixel of ``ds``: SSL4EO-S12 exports each resolution on its
    own grid, offset by a fraction of a 60 m pixel, which resampling by shape absorbs.
    """
    if ds.crs != grid.crs:
        raise DataError(f"{path}: georeferencing: CRS {ds.crs} differs from the reference band's {grid.crs}")
    tolerance = max(abs(ds.res[0]), abs(ds.res[1]))
    offset = np.max(np.abs(np.subtract(tuple(ds.bounds), grid.bounds)))
    if offset > tolerance:
        raise DataError(
            f"{path}: georeferencing: footprint {tuple(round(b, 6) for b in ds.bounds)} is off the "
            f"reference grid {tuple(round(b, 6) for b in grid.bounds)} by more than one pixel"
        )


def band_files(folder: Path, bands: Sequence[str], pattern: str) -> Dict[str, Path]:
    """Map each wanted band to ``folder / pattern.format(band=...)``; a missing one raises DataError.

    ``pattern`` gets the canonical name (``B01``, ``B8A``) and the short one (``B1``) as
    ``{band}`` and ``{short}``, e.g. ``"{short}.tif"`` for SSL4EO-S12.
    """
    files = {}
    for band in bands:
        band = normalize_band_name(band)
        short = "B8A" if band == "B8A" else f"B{int(band[1:])}"
        path = folder / pattern.format(band=band, short=short)
        if not path.is_file():
            raise DataError(f"{path}: bands: file for band {band} is missing")
        files[band] = path
    return files


def stack_bands(files: Mapping[str, Path], bands: Sequence[str], reference: str) -> Tuple[np.ndarray, Grid]:
    """Read per-band files onto the grid of the ``reference`` band, in the order of ``bands``.

    Returns the (C, H, W) uint16 stack and the reference grid (for coordinates).
    """
    with open_geotiff(files[reference]) as ref:
        grid = grid_of(ref)
    stack = np.empty((len(bands), grid.height, grid.width), np.uint16)
    for i, band in enumerate(bands):
        path = files[band]
        with open_geotiff(path) as ds:
            if ds.count != 1:
                raise DataError(f"{path}: bands: expected a single-band GeoTIFF, found {ds.count} bands")
            check_aligned(ds, path, grid)
            stack[i] = _as_uint16(read_resampled(ds, (grid.height, grid.width)), path)
    return stack, grid


def _as_uint16(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype != np.uint16 and array.size and (array.min() < 0 or array.max() > np.iinfo(np.uint16).max):
        raise DataError(f"{path}: values: outside the uint16 range [{array.min()}, {array.max()}]")
    return array.astype(np.uint16, copy=False)
