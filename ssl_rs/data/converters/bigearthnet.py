"""BigEarthNet-S2 v1.0 (Sumbul et al., 2019): 120x120 px multi-label patches, one folder per
patch with one GeoTIFF per band (``<patch>_B01.tif`` ...) and ``<patch>_labels_metadata.json``."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

from ...errors import ConfigError, DataError
from ..bands import S2_BANDS_L2A
from .base import CONVERTERS, Converter, Option
from .parallel import ConversionPlan, write_file
from .geotiff import band_files, stack_bands

PATCH_SIZE = 120  # px on the 10 m grid
GSD = 10.0

# The 43 CORINE Land Cover level-3 classes of BigEarthNet v1.0, in the official index order
# ("original_labels" of label_indices.json in the BigEarthNet-S2 19-class models repository).
CLASSES_43: List[str] = [
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
]

# The 19-class nomenclature (Sumbul et al., "BigEarthNet Deep Learning Models with a New
# Class-Nomenclature", 2020): "BigEarthNet-19_labels" and "label_conversion" of label_indices.json.
CLASSES_19: List[str] = [
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
]
# 19-class index -> the 43-class indices merged into it. 43-class indices 3-10 (roads, ports,
# airports, mines, dumps, construction, green urban, sport), 30 (bare rock), 32 (burnt areas)
# and 37 (intertidal flats) have no 19-class counterpart and are dropped.
CONVERSION_43_TO_19: List[List[int]] = [
    [0, 1], [2], [11, 12, 13], [14, 15, 16, 18], [17], [19], [20], [21], [22], [23], [24],
    [25, 31], [26, 27], [28], [29], [33, 34], [35, 36], [38, 39], [40, 41, 42],
]
MAP_43_TO_19: Dict[int, int] = {old: new for new, olds in enumerate(CONVERSION_43_TO_19) for old in olds}
NOMENCLATURES = ("43", "19")


def find_patches(src: Path) -> List[Path]:
    """Patch folders: sub-folders of ``src`` holding a GeoTIFF or a labels_metadata.json."""
    patches = sorted(
        p for p in src.iterdir() if p.is_dir() and (any(p.glob("*.tif")) or any(p.glob("*_labels_metadata.json")))
    )
    if not patches:
        raise DataError(
            f"{src}: files: no patch folders with GeoTIFF files found (expected {src}/<patch>/<patch>_B02.tif)"
        )
    return patches


def read_metadata(patch: Path) -> dict:
    path = patch / f"{patch.name}_labels_metadata.json"
    if not path.is_file():
        raise DataError(f"{path}: labels: metadata file is missing for patch {patch.name}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: json: not valid JSON ({e.msg} at line {e.lineno})") from None
    for key in ("labels", "acquisition_date"):
        if key not in meta:
            raise DataError(f"{path}: {key}: field is missing")
    return meta


def label_indices(names: List[str], nomenclature: str, path: Path) -> List[int]:
    """Class indices of a patch's CORINE label names in the chosen nomenclature."""
    indices = []
    for name in names:
        if name not in CLASSES_43:
            raise DataError(f"{path}: labels: unknown BigEarthNet CORINE class {name!r}")
        indices.append(CLASSES_43.index(name))
    if nomenclature == "19":
        indices = [MAP_43_TO_19[i] for i in indices if i in MAP_43_TO_19]
    return sorted(set(indices))


def acquisition_day(value: str, path: Path) -> str:
    try:
        return datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S").date().isoformat()
    except ValueError:
        raise DataError(f"{path}: acquisition_date: {value!r} is not 'YYYY-MM-DD hh:mm:ss'") from None


def plan_bigearthnet(src: Path, *, labels: str = "43") -> ConversionPlan:
    """What :func:`convert_bigearthnet` writes: one sample per patch folder, sorted."""
    nomenclature = str(labels)
    if nomenclature not in NOMENCLATURES:
        raise ConfigError(f"bigearthnet: labels must be one of {NOMENCLATURES}, got {labels!r}")
    class_names = CLASSES_43 if nomenclature == "43" else CLASSES_19
    return ConversionPlan(
        name="bigearthnet",
        items=find_patches(src),
        read=read_bigearthnet,
        writer=dict(
            bands=S2_BANDS_L2A,
            size=(PATCH_SIZE, PATCH_SIZE),
            gsd=GSD,
            source=f"BigEarthNet-S2 v1.0 (Sumbul et al., 2019), converted from {src}",
            class_names=class_names,
            multi_label=True,
            attrs={"product": "L2A", "nomenclature": nomenclature},
        ),
        context={"nomenclature": nomenclature},
    )


def read_patch_bands(patch: Path) -> Tuple[np.ndarray, float, float]:
    """A patch folder's 12 band files ``<patch>_<band>.tif`` (the layout of v1.0 and v2.0) stacked
    on its 10 m grid (120x120, the 20 m / 60 m bands upsampled) and the (lat, lon) of its centre."""
    files = band_files(patch, S2_BANDS_L2A, f"{patch.name}_{{band}}.tif")
    image, grid = stack_bands(files, S2_BANDS_L2A, reference="B02")
    if (grid.height, grid.width) != (PATCH_SIZE, PATCH_SIZE):
        size = f"{grid.height}x{grid.width} px, expected {PATCH_SIZE}x{PATCH_SIZE}"
        raise DataError(f"{files['B02']}: size: {size}")
    lat, lon = grid.center_latlon()
    return image, lat, lon


def read_bigearthnet(patch: Path, context: Dict[str, Any]) -> Iterator[Tuple[np.ndarray, Dict[str, Any]]]:
    """The one sample of a patch folder: its 12 bands on the 10 m grid, labels and date."""
    nomenclature = context["nomenclature"]
    meta = read_metadata(patch)
    meta_path = patch / f"{patch.name}_labels_metadata.json"
    image, lat, lon = read_patch_bands(patch)
    yield image, dict(
        lat=lat,
        lon=lon,
        labels=label_indices(meta["labels"], nomenclature, meta_path),
        time=acquisition_day(meta["acquisition_date"], meta_path),
        name=patch.name,
    )


def convert_bigearthnet(src: Path, out: Path, *, labels: str = "43", progress: bool = True) -> Path:
    """Convert BigEarthNet-S2 v1.0 to the ssl-rs layout: 12 L2A bands on the 10 m grid
    (120x120, bilinear), multi-label over the 43 (or, with ``labels="19"``, the 19) classes.

    With the 19-class nomenclature a patch whose labels are all dropped keeps an all-zero
    label row (the official recommendation removes such patches; filter them if you follow it).
    """
    return write_file(plan_bigearthnet(src, labels=labels), out, progress=progress)


CONVERTERS.register(Converter(
    "bigearthnet",
    "BigEarthNet-S2 v1.0: 12-band 120x120 L2A patches, multi-label CORINE (43 or 19 classes)",
    convert_bigearthnet,
    (Option("labels", str, "43", "CORINE nomenclature: 43 original classes or 19 classes", NOMENCLATURES),),
    plan=plan_bigearthnet,
))
