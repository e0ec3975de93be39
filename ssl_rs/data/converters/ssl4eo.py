"""SSL4EO-S12 (Wang et al., 2022): per location several seasonal acquisitions, one GeoTIFF per
band at native resolution: ``SRC/s2c/<location>/<timestamp>/B1.tif`` (L1C, 13 bands) and
``SRC/s2a/<location>/<timestamp>/B1.tif`` (L2A, 12 bands)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ...errors import ConfigError, DataError
from ..bands import S2_BANDS, S2_BANDS_L2A
from .base import CONVERTERS, Converter, Option
from .parallel import ConversionPlan, write_file
from .geotiff import band_files, open_geotiff, stack_bands

# product -> (folder in the distribution, bands it has)
PRODUCTS = {"L1C": ("s2c", S2_BANDS), "L2A": ("s2a", S2_BANDS_L2A)}
GSD = 10.0
BAND_PATTERN = "{short}.tif"  # SSL4EO names files B1.tif ... B8A.tif ... B12.tif
TIMESTAMP = re.compile(r"^(\d{4})(\d{2})(\d{2})T\d{6}")  # e.g. 20200604T054639_20200604T054831_T43RCP


def product_root(src: Path, product: str) -> Path:
    """``SRC/s2c`` for L1C, ``SRC/s2a`` for L2A; ``SRC`` may also be that folder itself."""
    folder = PRODUCTS[product][0]
    root = src if src.name == folder else src / folder
    if not root.is_dir():
        expected = f"{src}/{folder}/<location>/<timestamp>/"
        raise DataError(f"{root}: product: folder for {product} not found (expected {expected})")
    return root


def find_acquisitions(root: Path) -> List[Tuple[Path, int, str]]:
    """(acquisition folder, integer location id, ISO date) for every acquisition, sorted."""
    found = []
    for location in sorted(p for p in root.iterdir() if p.is_dir()):
        if not location.name.isdigit():
            raise DataError(f"{location}: group: location folder name is not an integer id")
        for acquisition in sorted(p for p in location.iterdir() if p.is_dir()):
            m = TIMESTAMP.match(acquisition.name)
            if m is None:
                raise DataError(f"{acquisition}: time: folder name does not start with a YYYYMMDDThhmmss timestamp")
            found.append((acquisition, int(location.name), f"{m[1]}-{m[2]}-{m[3]}"))
    if not found:
        raise DataError(f"{root}: files: no acquisitions found (expected {root}/<location>/<timestamp>/B2.tif)")
    return found


def plan_ssl4eo(src: Path, *, product: str = "L1C", size: Optional[int] = None) -> ConversionPlan:
    """What :func:`convert_ssl4eo` writes: one sample per acquisition folder, sorted."""
    if product not in PRODUCTS:
        raise ConfigError(f"ssl4eo-s12: product must be one of {tuple(PRODUCTS)}, got {product!r}")
    bands = PRODUCTS[product][1]
    acquisitions = find_acquisitions(product_root(src, product))
    first = band_files(acquisitions[0][0], ["B02"], BAND_PATTERN)["B02"]
    with open_geotiff(first) as ds:
        native = (ds.height, ds.width)
    if size is not None and not 0 < size <= min(native):
        raise ConfigError(
            f"ssl4eo-s12: size {size} must be in 1..{min(native)} ({first} is {native[0]}x{native[1]} px)"
        )
    out_size = native if size is None else (size, size)
    return ConversionPlan(
        name="ssl4eo-s12",
        items=acquisitions,
        read=read_ssl4eo,
        writer=dict(
            bands=bands,
            size=out_size,
            gsd=GSD,
            source=f"SSL4EO-S12 Sentinel-2 {product} (Wang et al., 2022), converted from {src}",
            attrs={"product": product},
        ),
        context={"bands": bands, "native": native, "size": out_size, "first": first},
    )


def read_ssl4eo(item: Tuple[Path, int, str], context: Dict[str, Any]) -> Iterator[Tuple[np.ndarray, Dict[str, Any]]]:
    """The one sample of an acquisition: bands stacked on the 10 m grid, centre-cropped."""
    folder, location, day = item
    bands, native, out_size = context["bands"], context["native"], context["size"]
    files = band_files(folder, bands, BAND_PATTERN)
    image, grid = stack_bands(files, bands, reference="B02")
    if (grid.height, grid.width) != native:
        expected = f"expected {native[0]}x{native[1]} like {context['first']}"
        raise DataError(f"{files['B02']}: size: {grid.height}x{grid.width} px, {expected}")
    top, left = (native[0] - out_size[0]) // 2, (native[1] - out_size[1]) // 2
    image = image[:, top : top + out_size[0], left : left + out_size[1]]
    lat, lon = grid.center_latlon(top, left, out_size[0], out_size[1])
    yield image, dict(lat=lat, lon=lon, time=day, group=location, name=f"{folder.parent.name}/{folder.name}")


def convert_ssl4eo(
    src: Path, out: Path, *, product: str = "L1C", size: Optional[int] = None, progress: bool = True
) -> Path:
    """Convert SSL4EO-S12 Sentinel-2 to the ssl-rs layout: one sample per acquisition, bands
    resampled (bilinear) onto the 10 m grid (264x264), ``group`` = location id shared by its
    dates, ``time`` = acquisition date; ``size`` centre-crops (e.g. 256), lat/lon follow the crop."""
    return write_file(plan_ssl4eo(src, product=product, size=size), out, progress=progress)


CONVERTERS.register(Converter(
    "ssl4eo-s12",
    "SSL4EO-S12: 264x264 patches, several dates per location (group), L1C or L2A",
    convert_ssl4eo,
    (
        Option("product", str, "L1C", "L1C (s2c, 13 bands) or L2A (s2a, 12 bands)", tuple(PRODUCTS)),
        Option("size", int, None, "centre crop to this many pixels (e.g. 256); default: full 264"),
    ),
    plan=plan_ssl4eo,
))
