"""BigEarthNet v2.0 / reBEN (Clasen et al., "reBEN: Refined BigEarthNet Dataset for Remote Sensing
Image Analysis", IGARSS 2025, arXiv:2407.03653): 120x120 px multi-label Sentinel-2 L2A patches over
the 19-class nomenclature, with an official geographical train/validation/test split.

The layout read here (``SRC`` is the folder holding both)::

    SRC/metadata.parquet
    SRC/metadata_for_patches_with_snow_cloud_or_shadow.parquet     (optional, see below)
    SRC/BigEarthNet-S2/<tile>/<patch_id>/<patch_id>_B01.tif ... _B12.tif, _B8A.tif
    SRC/Reference_Maps/<tile>/<patch_id>/<patch_id>_reference_map.tif   (not read)

``<tile>`` is the patch id less its last two ``_`` fields (the patch's row and column in the tile):
``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57`` lies in
``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP``. The 12 bands are uint16 GeoTIFFs of 120 (10 m),
60 (20 m) or 20 (60 m) px in the patch's UTM zone, stacked on the 10 m grid as for v1.0
(:func:`~ssl_rs.data.converters.bigearthnet.read_patch_bands`). The metadata columns read are
``patch_id``, ``labels`` (the 19-class names of the patch), ``split`` (``train``, ``validation``,
``test``) and the booleans ``contains_seasonal_snow`` and ``contains_cloud_or_shadow``; ``country``,
``s1_name`` and ``s2v1_name`` are not used. The release's ``metadata.parquet`` lists the patches
with neither flag; the flagged ones are listed, with the same columns, in
``metadata_for_patches_with_snow_cloud_or_shadow.parquet``, which is read too when present (unless
``snow_cloud="drop"``).

Layout sources: torchgeo ``BigEarthNetV2`` (microsoft/torchgeo commit
7ea0616ded0cc27a8feb8b2aafefd7c14155f6fb, ``torchgeo/datasets/bigearthnet.py`` and its fixture
``tests/data/bigearthnet/v2/data.py``: folder nesting, file names, ``validation`` split name, the
19 class names in the v1.0 19-class order) and the reBEN build pipeline (kai-tub/bigearthnet-pipeline
commit 5c9a3c8f73ff86c932071323b43b5c2a57437435, ``nu-scripts/ben-metadata-finalizer.sql``: the
metadata columns and types, and the split of the flagged patches into the second parquet file).
Dataset home: https://bigearth.net.

Reading parquet needs pyarrow, an optional dependency: ``pip install 'ssl-rs[parquet]'``.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set, Tuple

import numpy as np

from ...errors import ConfigError, DataError
from ..bands import S2_BANDS_L2A
from .base import CONVERTERS, Converter, Option
from .bigearthnet import CLASSES_19, GSD, PATCH_SIZE, read_patch_bands
from .parallel import ConversionPlan, write_file

METADATA = "metadata.parquet"
FLAGGED_METADATA = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
S2_FOLDER = "BigEarthNet-S2"
FLAGS = ("contains_seasonal_snow", "contains_cloud_or_shadow")
SPLITS = {"train": "train", "validation": "val", "test": "test"}  # the release's names -> ours
SNOW_CLOUD = ("keep", "drop")
# <tile>_<row>_<col>, tile = S2{A,B}_MSIL2A_<sensing start>_N<baseline>_R<orbit>_T<MGRS tile>
PATCH_ID = re.compile(r"(S2[AB]_MSIL2A_(\d{8})T\d{6}_N\d{4}_R\d{3}_T\d{2}[A-Z]{3})_\d+_\d+")


def parquet_module():
    """``pyarrow.parquet``, or a one-line error naming the extra that installs it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            f"bigearthnet-v2: reading {METADATA} needs pyarrow, which is not installed "
            "(pip install 'ssl-rs[parquet]')"
        ) from None
    return pq


def read_metadata(path: Path, flags: bool) -> List[Dict[str, Any]]:
    """The rows of a reBEN metadata parquet file, checked: ``patch_id``, ``labels``, ``split`` and,
    with ``flags``, the snow and cloud/shadow flags."""
    pq = parquet_module()
    import pyarrow as pa

    wanted = ["patch_id", "labels", "split"] + (list(FLAGS) if flags else [])
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: parquet: cannot be read as a parquet file ({detail})") from None
    missing = [c for c in wanted if c not in names]
    if missing:
        why = " (needed to drop flagged patches)" if set(missing) <= set(FLAGS) else ""
        raise DataError(f"{path}: columns: missing {', '.join(missing)}{why}; found {', '.join(names)}")
    try:
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowException, OSError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: parquet: cannot be read, the file is truncated or corrupt ({detail})") from None
    columns = {c: table.column(c).to_pylist() for c in wanted}
    rows = [dict(zip(wanted, values)) for values in zip(*(columns[c] for c in wanted))]
    for row in rows:
        check_row(row, path, flags)
    return rows


def check_row(row: Dict[str, Any], path: Path, flags: bool) -> None:
    patch = row["patch_id"]
    if not isinstance(patch, str) or not PATCH_ID.fullmatch(patch):
        raise DataError(f"{path}: patch_id: {patch!r} is not a BigEarthNet v2.0 Sentinel-2 patch id "
                        "(S2A_MSIL2A_<YYYYMMDD>T<hhmmss>_N<nnnn>_R<nnn>_T<tile>_<row>_<col>)")
    labels = row["labels"]
    if not isinstance(labels, list) or not all(isinstance(name, str) for name in labels):
        raise DataError(f"{path}: labels: patch {patch} has {labels!r}, expected a list of class names")
    for name in labels:
        if name not in CLASSES_19:
            raise DataError(f"{path}: labels: unknown BigEarthNet 19-class name {name!r} (patch {patch})")
    if row["split"] not in SPLITS:
        raise DataError(f"{path}: split: patch {patch} has {row['split']!r}, expected one of {', '.join(SPLITS)}")
    for flag in FLAGS if flags else ():
        if not isinstance(row[flag], bool):
            raise DataError(f"{path}: {flag}: patch {patch} has {row[flag]!r}, expected true or false")


def acquisition_day(patch: str, path: Path) -> str:
    """The sensing date in the patch id (``S2A_MSIL2A_20170613T101031_...`` -> ``2017-06-13``)."""
    digits = PATCH_ID.fullmatch(patch).group(2)
    try:
        return datetime.strptime(digits, "%Y%m%d").date().isoformat()
    except ValueError:
        raise DataError(f"{path}: patch_id: {patch} holds no valid date ({digits})") from None


def tile_of(patch: str) -> str:
    return PATCH_ID.fullmatch(patch).group(1)


def metadata_files(src: Path, snow_cloud: str) -> List[Path]:
    """The metadata files to read: ``metadata.parquet`` and, when present and kept, the flagged
    patches' file."""
    path = src / METADATA
    if not path.is_file():
        hint = ""
        if src.name == S2_FOLDER and (src.parent / METADATA).is_file():
            hint = f"; give the folder above it, {src.parent}"
        raise DataError(
            f"{path}: files: not found (a BigEarthNet v2.0 source folder holds {METADATA} and "
            f"{S2_FOLDER}/<tile>/<patch_id>/<patch_id>_B02.tif ...){hint}"
        )
    flagged = src / FLAGGED_METADATA
    return [path, flagged] if snow_cloud == "keep" and flagged.is_file() else [path]


def patches_on_disk(s2: Path) -> Set[Tuple[str, str]]:
    """(tile, patch) of every patch folder under ``BigEarthNet-S2`` (one listing per tile folder)."""
    found = set()
    with os.scandir(s2) as tiles:
        for tile in tiles:
            if tile.is_dir():
                with os.scandir(tile.path) as patches:
                    found.update((tile.name, p.name) for p in patches if p.is_dir())
    return found


def plan_bigearthnet_v2(src: Path, *, snow_cloud: str = "keep") -> ConversionPlan:
    """What :func:`convert_bigearthnet_v2` writes: one sample per metadata row (after dropping the
    flagged patches with ``snow_cloud="drop"``), sorted by patch id."""
    if snow_cloud not in SNOW_CLOUD:
        raise ConfigError(f"bigearthnet-v2: snow_cloud must be one of {SNOW_CLOUD}, got {snow_cloud!r}")
    drop = snow_cloud == "drop"
    files = metadata_files(src, snow_cloud)
    s2 = src / S2_FOLDER
    if not s2.is_dir():
        raise DataError(f"{s2}: files: not found (the patches are expected at {s2}/<tile>/<patch_id>/, "
                        f"next to {files[0].name})")
    rows: Dict[str, Tuple[Dict[str, Any], Path]] = {}
    dropped = 0
    for path in files:
        for row in read_metadata(path, flags=drop):
            patch = row["patch_id"]
            if patch in rows:
                raise DataError(f"{path}: patch_id: {patch} is listed twice (also in {rows[patch][1].name})")
            rows[patch] = (row, path)
    if drop:
        flagged = [p for p, (row, _) in rows.items() if any(row[f] for f in FLAGS)]
        dropped = len(flagged)
        for patch in flagged:
            del rows[patch]
    if not rows:
        kept = " after dropping the patches flagged with snow or cloud/shadow" if drop else ""
        raise DataError(f"{files[0]}: patch_id: no patches listed{kept}")
    on_disk = patches_on_disk(s2)
    items = []
    missing: List[str] = []
    for patch in sorted(rows):
        row, path = rows[patch]
        tile = tile_of(patch)
        if (tile, patch) not in on_disk:
            missing.append(patch)
            continue
        labels = tuple(sorted({CLASSES_19.index(name) for name in row["labels"]}))
        # plain strings: a few hundred thousand items stay small in memory and in the workers' tasks
        items.append((str(s2 / tile / patch), labels, SPLITS[row["split"]], acquisition_day(patch, path)))
    if missing:
        first = missing[0]
        listed = " and ".join(p.name for p in files)
        raise DataError(f"{s2}: patches: {len(missing)} of the {len(rows)} patches listed in {listed} are missing "
                        f"(first: {s2 / tile_of(first) / first})")
    return ConversionPlan(
        name="bigearthnet-v2",
        items=items,
        read=read_bigearthnet_v2,
        writer=dict(
            bands=S2_BANDS_L2A,
            size=(PATCH_SIZE, PATCH_SIZE),
            gsd=GSD,
            source=f"BigEarthNet v2.0 / reBEN (Clasen et al., 2024), converted from {src}",
            class_names=CLASSES_19,
            multi_label=True,
            attrs={"product": "L2A", "nomenclature": "19", "snow_cloud": snow_cloud,
                   "metadata": [p.name for p in files], "dropped_snow_cloud": dropped},
        ),
    )


def read_bigearthnet_v2(item: Tuple[str, Tuple[int, ...], str, str],
                        context: Dict[str, Any]) -> Iterator[Tuple[np.ndarray, Dict[str, Any]]]:
    """The one sample of a patch folder: its 12 bands on the 10 m grid, with the metadata's
    labels and split and the date of the patch id."""
    folder, labels, split, day = item
    folder = Path(folder)
    image, lat, lon = read_patch_bands(folder)
    yield image, dict(lat=lat, lon=lon, labels=list(labels), split=split, time=day, name=folder.name)


def convert_bigearthnet_v2(src: Path, out: Path, *, snow_cloud: str = "keep", progress: bool = True) -> Path:
    """Convert BigEarthNet v2.0 (reBEN) to the ssl-rs layout: 12 L2A bands on the 10 m grid
    (120x120, bilinear), multi-label over the 19 classes, the official split (``validation`` is
    stored as ``val``), ``name`` = patch id, ``time`` = the date in the patch id.

    ``snow_cloud="drop"`` leaves out the patches flagged ``contains_seasonal_snow`` or
    ``contains_cloud_or_shadow`` (and does not read the flagged patches' metadata file)."""
    return write_file(plan_bigearthnet_v2(src, snow_cloud=snow_cloud), out, progress=progress)


CONVERTERS.register(Converter(
    "bigearthnet-v2",
    "BigEarthNet v2.0 (reBEN): 12-band 120x120 L2A patches, multi-label 19 classes, official split",
    convert_bigearthnet_v2,
    (Option("snow_cloud", str, "keep",
            "patches flagged with seasonal snow or cloud/shadow in the metadata: keep or drop", SNOW_CLOUD),),
    plan=plan_bigearthnet_v2,
))
