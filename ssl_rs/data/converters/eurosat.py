"""EuroSAT-MS (Helber et al., 2019): 13-band 64x64 L1C GeoTIFFs in one folder per class.

Accepted layouts: ``SRC/{train,val,test}/<Class>/*.tif`` (the folders give the official
split) or the distribution's own ``SRC/<Class>/*.tif`` (no split stored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ...errors import DataError
from ..bands import S2_BANDS, band_indices
from .base import CONVERTERS, Converter
from .parallel import ConversionPlan, write_file
from .geotiff import open_geotiff, raster_center_latlon

# Band order inside EuroSAT-MS files: B8A is stored LAST (after B12), not after B08.
EUROSAT_FILE_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
SPLIT_FOLDERS = ("train", "val", "test")
GSD = 10.0
TIF_SUFFIXES = (".tif", ".tiff")


def find_eurosat_files(src: Path) -> List[Tuple[Path, str, Optional[str]]]:
    """(file, class name, split or None) for every GeoTIFF, in a deterministic order."""
    split_roots = [(src / s, s) for s in SPLIT_FOLDERS if (src / s).is_dir()]
    roots = split_roots or [(src, None)]
    found = []
    for root, split in roots:
        for entry in sorted(root.iterdir()):
            if entry.is_file() and entry.suffix.lower() in TIF_SUFFIXES:
                raise DataError(f"{entry}: label: GeoTIFF is not inside a class folder (expected {root}/<Class>/)")
            if entry.is_dir():
                for tif in sorted(p for p in entry.iterdir() if p.suffix.lower() in TIF_SUFFIXES):
                    found.append((tif, entry.name, split))
    if not found:
        raise DataError(
            f"{src}: files: no GeoTIFF files found (expected {src}/train/<Class>/*.tif and "
            f"{src}/test/<Class>/*.tif, or {src}/<Class>/*.tif)"
        )
    return found


def plan_eurosat(src: Path) -> ConversionPlan:
    """What :func:`convert_eurosat` writes: one sample per GeoTIFF, in the order of
    :func:`find_eurosat_files`."""
    files = find_eurosat_files(src)
    class_names = sorted({cls for _, cls, _ in files})
    with open_geotiff(files[0][0]) as first:
        size = (first.height, first.width)
    return ConversionPlan(
        name="eurosat-ms",
        items=files,
        read=read_eurosat,
        writer=dict(
            bands=S2_BANDS,
            size=size,
            gsd=GSD,
            source=f"EuroSAT-MS (Helber et al., 2019), converted from {src}",
            class_names=class_names,
            attrs={"product": "L1C"},
        ),
        context={"class_names": class_names, "size": size, "first": files[0][0].name,
                 "positions": band_indices(EUROSAT_FILE_BANDS, S2_BANDS)},  # file position of each S2 band
    )


def read_eurosat(item: Tuple[Path, str, Optional[str]], context: Dict[str, Any]) -> Iterator[Tuple[np.ndarray, Dict]]:
    """The one sample of a EuroSAT GeoTIFF: bands reordered by name (B8A moves from last to after B08)."""
    path, cls, split = item
    size = context["size"]
    with open_geotiff(path) as ds:
        if ds.count != len(EUROSAT_FILE_BANDS):
            raise DataError(f"{path}: bands: expected {len(EUROSAT_FILE_BANDS)} bands, found {ds.count}")
        if (ds.height, ds.width) != size:
            expected = f"expected {size[0]}x{size[1]} like {context['first']}"
            raise DataError(f"{path}: size: {ds.height}x{ds.width} px, {expected}")
        image = ds.read()[context["positions"]]
        lat, lon = raster_center_latlon(ds)
    yield image, dict(lat=lat, lon=lon, label=context["class_names"].index(cls), name=path.stem, split=split)


def convert_eurosat(src: Path, out: Path, *, progress: bool = True) -> Path:
    """Convert EuroSAT-MS to the ssl-rs layout: 13 bands in canonical order, single-label,
    classes = sorted class folder names, ``split`` from train/val/test folders, ``name`` = file stem."""
    return write_file(plan_eurosat(src), out, progress=progress)


CONVERTERS.register(Converter(
    "eurosat-ms",
    "EuroSAT-MS: 13-band 64x64 L1C patches, 10 classes, split from train/test folders",
    convert_eurosat,
    plan=plan_eurosat,
))
