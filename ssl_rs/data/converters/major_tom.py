"""Major-TOM Core-S2L2A (Francis & Czerkawski, 2024): ~10 km grid cells of 1068x1068 px, one
GeoTIFF per band at native resolution plus ``cloud_mask.tif``:
``SRC/<row>/<cell>/<product id>/B01.tif`` (e.g. ``0U/0U_199R/S2A_MSIL2A_20220706T085611_.../``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ...errors import ConfigError, DataError
from ..bands import S2_BANDS_L2A
from .base import CONVERTERS, Converter, Option
from .parallel import ConversionPlan, write_file
from .geotiff import band_files, check_aligned, open_geotiff, stack_bands

GSD = 10.0
BAND_PATTERN = "{band}.tif"  # Major-TOM names files B01.tif ... B8A.tif ... B12.tif
CLOUD_MASK = "cloud_mask.tif"
CELL = re.compile(r"^\d+[UD]_\d+[LR]$")  # grid cell name: row (Up/Down) _ column (Left/Right)
PRODUCT = re.compile(r"^S2[A-D]_MSIL2A_(\d{4})(\d{2})(\d{2})T\d{6}_")  # Sentinel-2 product id


def find_products(src: Path) -> List[Tuple[Path, str, str]]:
    """(product folder, cell name, ISO date) for every folder holding GeoTIFFs, sorted."""
    folders = sorted({tif.parent for tif in src.rglob("*.tif")})
    if not folders:
        raise DataError(f"{src}: files: no GeoTIFF files found (expected {src}/<row>/<cell>/<product id>/B02.tif)")
    found, seen = [], {}
    for folder in folders:
        cell = folder.parent.name
        if not CELL.match(cell):
            raise DataError(f"{folder}: cell: parent folder {cell!r} is not a Major-TOM grid cell name like '0U_199R'")
        if cell in seen:
            raise DataError(f"{folder}: cell: second product for cell {cell} (already have {seen[cell]})")
        seen[cell] = folder
        m = PRODUCT.match(folder.name)
        if m is None:
            raise DataError(
                f"{folder}: time: folder name is not a Sentinel-2 L2A product id (S2A_MSIL2A_YYYYMMDDThhmmss_...)"
            )
        found.append((folder, cell, f"{m[1]}-{m[2]}-{m[3]}"))
    return found


def patch_grid(height: int, width: int, patch_size: int, stride: int) -> Tuple[int, int]:
    """(rows, cols) of the patches whose top-left corners are at 0, stride, 2 * stride, ... and that
    fit entirely inside a ``height`` x ``width`` raster (the partial border is dropped)."""
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


def window_means(mask: np.ndarray, patch_size: int, stride: int, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) mean of ``mask`` over the ``patch_size`` windows of the stride grid (windows may
    overlap or leave gaps), from a summed-area table: exact integer counts / patch_size**2."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
    top = np.arange(rows) * stride
    left = np.arange(cols) * stride
    y0, y1 = top[:, None], top[:, None] + patch_size
    x0, x1 = left[None, :], left[None, :] + patch_size
    counts = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return counts / float(patch_size * patch_size)


def cloud_fractions(
    folder: Path, grid, patch_size: int, rows: int, cols: int, stride: Optional[int] = None
) -> np.ndarray:
    """(rows, cols) fraction of flagged pixels per patch of the stride grid (default stride:
    ``patch_size``, non-overlapping); any non-zero mask value counts as cloud (the mask's
    classes - thick/thin cloud, shadow - are all unusable for pretraining)."""
    path = folder / CLOUD_MASK
    with open_geotiff(path) as ds:
        check_aligned(ds, path, grid)
        if (ds.height, ds.width) != (grid.height, grid.width):
            raise DataError(f"{path}: size: {ds.height}x{ds.width} px, expected {grid.height}x{grid.width} like B02")
        flagged = ds.read(1) != 0
    return window_means(flagged, patch_size, patch_size if stride is None else stride, rows, cols)


def plan_major_tom(
    src: Path, *, patch_size: int = 128, max_cloud: float = 1.0, stride: Optional[int] = None
) -> ConversionPlan:
    """What :func:`convert_major_tom` writes: the patches of each product folder (sorted); an
    item's sample count is its number of patches before the cloud filter."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
        raise ConfigError(f"major-tom: patch_size must be a positive number of pixels, got {patch_size!r}")
    if stride is None:
        stride = patch_size
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ConfigError(f"major-tom: stride must be a positive whole number of pixels, got {stride!r}")
    patch_size, stride = int(patch_size), int(stride)
    if not 0.0 <= max_cloud <= 1.0:
        raise ConfigError(f"major-tom: max_cloud must be a fraction in [0, 1], got {max_cloud}")
    products = find_products(src)
    layouts = []  # per product: (rows, cols) of whole patches in the stride grid
    for folder, cell, _ in products:
        reference = band_files(folder, ["B02"], BAND_PATTERN)["B02"]
        with open_geotiff(reference) as ds:
            if min(ds.height, ds.width) < patch_size:
                raise ConfigError(
                    f"major-tom: patch_size {patch_size} is larger than {reference} ({ds.height}x{ds.width} px)"
                )
            layouts.append(patch_grid(ds.height, ds.width, patch_size, stride))
    cells = [cell for _, cell, _ in products]
    return ConversionPlan(
        name="major-tom",
        items=[(folder, cell, day, rows, cols) for (folder, cell, day), (rows, cols) in zip(products, layouts)],
        read=read_major_tom,
        writer=dict(
            bands=S2_BANDS_L2A,
            size=(patch_size, patch_size),
            gsd=GSD,
            source=f"Major-TOM Core-S2L2A (Francis & Czerkawski, 2024), converted from {src}",
            attrs={"product": "L2A", "tiles": cells, "patch_size": patch_size, "stride": stride,
                   "max_cloud": max_cloud},
        ),
        context={"patch_size": patch_size, "stride": stride, "max_cloud": max_cloud},
        samples=[rows * cols for rows, cols in layouts],
        unit="patch",
    )


def read_major_tom(item: Tuple[Path, str, str, int, int], context: Dict[str, Any]) -> Iterator[Tuple[np.ndarray, Dict]]:
    """The patches of one product whose cloud fraction is at most ``max_cloud``, row by row."""
    folder, cell, day, rows, cols = item
    patch_size, stride, max_cloud = context["patch_size"], context["stride"], context["max_cloud"]
    files = band_files(folder, S2_BANDS_L2A, BAND_PATTERN)
    image, grid = stack_bands(files, S2_BANDS_L2A, reference="B02")
    clouds = cloud_fractions(folder, grid, patch_size, rows, cols, stride) if max_cloud < 1.0 else None
    # patch (r, c) covers rows r*stride .. r*stride + ps and cols c*stride .. c*stride + ps;
    # its centre is at the fractional pixel position (r * stride + ps / 2, c * stride + ps / 2)
    r_idx, c_idx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    lat, lon = grid.latlon(r_idx * stride + patch_size / 2.0, c_idx * stride + patch_size / 2.0)
    for r in range(rows):
        for c in range(cols):
            if clouds is not None and clouds[r, c] > max_cloud:
                continue
            y, x = r * stride, c * stride
            patch = image[:, y : y + patch_size, x : x + patch_size]
            yield patch, dict(lat=float(lat[r, c]), lon=float(lon[r, c]), time=day, name=f"{cell}_{r}_{c}")


def convert_major_tom(
    src: Path,
    out: Path,
    *,
    patch_size: int = 128,
    max_cloud: float = 1.0,
    stride: Optional[int] = None,
    progress: bool = True,
) -> Path:
    """Convert Major-TOM Core-S2L2A to the ssl-rs layout: each cell is cut into ``patch_size``
    patches whose top-left corners are ``stride`` px apart (default ``stride = patch_size``:
    non-overlapping; smaller: overlapping neighbours, larger: gaps; the partial border is dropped),
    12 bands on the 10 m grid (bilinear), each patch with its own centre lat/lon, ``time`` from the
    product id, ``name`` = ``<cell>_<row>_<col>`` (the patch's index in the stride grid). Patches
    whose cloud fraction exceeds ``max_cloud`` are skipped. No ``group``: patches of one cell are
    neighbouring places, not dates; the cells are listed in the ``tiles`` attribute."""
    plan = plan_major_tom(src, patch_size=patch_size, max_cloud=max_cloud, stride=stride)
    return write_file(plan, out, progress=progress)


CONVERTERS.register(Converter(
    "major-tom",
    "Major-TOM Core-S2L2A: 1068x1068 grid cells cut into patches, 12 L2A bands",
    convert_major_tom,
    (
        Option("patch_size", int, 128, "side of the patches cut from each cell (px)"),
        Option("max_cloud", float, 1.0, "skip patches with a larger cloud fraction (0..1; 1 keeps all)"),
        Option("stride", int, None, "px between patch corners: < patch_size overlaps; default patch_size"),
    ),
    plan=plan_major_tom,
))
