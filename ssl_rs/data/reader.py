"""Reading the ssl-rs HDF5 layout: opening, validation and the summary of ``ssl-rs data info``.

What is checked per sample, and what the summary says about it, comes from
:data:`ssl_rs.data.columns.COLUMNS`. Every problem is a :class:`~ssl_rs.errors.DataError` of one
line naming the file and the field.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import h5py
import numpy as np

from ..errors import DataError
from .columns import COLUMNS, IMAGES, MASK, Column, list_attr, mask_attrs, shown

log = logging.getLogger(__name__)

COORDINATES = ("lat", "lon")  # the columns check_open(coordinates=False) does not range-check
NO_LOCATIONS = "none (evaluation-only)"  # ``locations`` of the summary of a file without lat/lon


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """Open an ssl-rs HDF5 file; missing or non-HDF5 files raise :class:`DataError`."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected an HDF5 file")
    if not h5py.is_hdf5(p):
        raise DataError(f"{p}: not an HDF5 file")
    try:
        return h5py.File(p, mode)
    except OSError as e:  # pragma: no cover - corrupt file after a valid signature
        raise DataError(f"{p}: cannot be opened as HDF5 ({e})") from None


def check_file(path: str | os.PathLike, *, coordinates: bool = True) -> Dict[str, Any]:
    """Validate the layout and return :func:`describe`'s summary; log (warning) what is valid
    but probably a mistake. A folder is a sharded dataset (:func:`ssl_rs.data.shards.check_sharded`:
    every shard checked, one summary of them all)."""
    if Path(path).is_dir():
        from .shards import check_sharded

        return check_sharded(path, coordinates=coordinates)
    with open_h5(path) as f:
        check_open(f, Path(path), coordinates=coordinates)
        warn_contents(f, Path(path))
        return describe(f)


def stored(f: h5py.File, column: Column) -> List[Tuple[str, Any]]:
    """``(name, dataset)`` of each dataset of ``column`` in ``f`` (several for ``splits/<scheme>``,
    none when absent). The objects are not checked: see :func:`check_open`."""
    if column.key not in f:
        return []
    if column.per_scheme and isinstance(f[column.key], h5py.Group):
        return [(f"{column.key}/{scheme}", ds) for scheme, ds in f[column.key].items()]
    return [(column.key, f[column.key])]


def check_open(f: h5py.File, path: Path, coordinates: bool = True) -> None:
    """Validate an open file: every column of the table that is present (and each required one)
    is a dataset of the declared rank and dtype with one row per image; values pass the column's
    check (``coordinates=False`` skips the range check of lat and lon); lat and lon are both
    present or both absent (evaluation-only data); a mask has the images' height and width and
    the attributes ``mask_classes`` and ``mask_nodata`` are sound; attributes ``gsd``,
    ``format_version`` and ``bands`` are sound."""
    present = []
    for column in COLUMNS:
        if column.key not in f:
            if column.required:
                raise DataError(f"{path}: {column.name}: required dataset is missing")
            continue
        if column.per_scheme and not isinstance(f[column.key], h5py.Group):
            raise DataError(f"{path}: {column.key}: expected a group of split schemes ({column.name}), "
                            "found a dataset")
        for name, ds in stored(f, column):
            _check_dataset(ds, f"{path}: {name}", column)
            present.append((name, ds, column))
    n = f[IMAGES.name].shape[0]
    if n == 0:
        raise DataError(f"{path}: {IMAGES.name}: the file has no samples")
    if ("lat" in f) != ("lon" in f):
        has, lacks = ("lat", "lon") if "lat" in f else ("lon", "lat")
        raise DataError(f"{path}: {lacks}: required dataset is missing, as the file has {has} (a file has both, "
                        "or neither for evaluation-only data)")
    if MASK.name in f:
        mask_hw, image_hw = tuple(f[MASK.name].shape[1:]), tuple(f[IMAGES.name].shape[2:])
        if mask_hw != image_hw:
            raise DataError(f"{path}: {MASK.name}: is {mask_hw[0]}x{mask_hw[1]} px per sample but {IMAGES.name} "
                            f"are {image_hw[0]}x{image_hw[1]}")
        mask_attrs(f.attrs, path)
    elif "mask_classes" in f.attrs or "mask_nodata" in f.attrs:
        key = "mask_classes" if "mask_classes" in f.attrs else "mask_nodata"
        raise DataError(f"{path}: {key}: attribute present but the file has no {MASK.name} dataset")
    for name, ds, column in present:
        if ds.shape[0] != n:
            raise DataError(f"{path}: {name}: has {ds.shape[0]} rows but {IMAGES.name} has {n}")
    for key in ("gsd", "format_version"):
        _check_number_attr(f, path, key)
    bands = attr_list(f, "bands")
    if bands is None:
        raise DataError(f"{path}: bands: required attribute is missing")
    if len(bands) != f[IMAGES.name].shape[1]:
        raise DataError(f"{path}: bands: {len(bands)} names for {f[IMAGES.name].shape[1]} image bands")
    for name, ds, column in present:
        if column.validate is not None and (coordinates or column.name not in COORDINATES):
            column.check_values(ds[()], f"{path}: {name}")




def _check_dataset(ds, where: str, column: Column) -> None:
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{where}: expected a dataset, found a group")
    if ds.ndim != column.rank:
        raise DataError(f"{where}: has rank {ds.ndim} {ds.shape}, expected rank {column.rank} {column.shape_text}")
    if not column.accepts_dtype(ds.dtype):
        raise DataError(f"{where}: has dtype {ds.dtype}, expected {column.expected_dtype}")


def _check_number_attr(f: h5py.File, path: Path, key: str) -> None:
    """``gsd`` (metres, > 0) and ``format_version`` (integer), when present, must be numbers."""
    if key not in f.attrs:
        return
    value = f.attrs[key]
    try:
        number = float(np.asarray(value).item())
    except (TypeError, ValueError):
        number = None
    if key == "gsd":
        if number is None or not np.isfinite(number) or number <= 0:
            raise DataError(f"{path}: gsd: attribute is {shown(value)}, expected a positive number of metres")
    elif number is None or not float(number).is_integer():
        raise DataError(f"{path}: {key}: attribute is {shown(value)}, expected an integer")


def warn_contents(f: h5py.File, path: Path) -> None:
    """Log (warning) what is valid HDF5 but probably a mistake, by the columns' ``warn`` checks:
    labels beyond the class names, split codes other than 0, 1, 2 (train, val, test) and 255
    (in no split)."""
    classes = attr_list(f, "class_names")
    for column in COLUMNS:
        if column.warn is not None and column.key in f:
            column.warn(column, f[column.key], f"{path}: {column.key}", classes)




def attr_list(f: h5py.File, key: str) -> Optional[List[str]]:
    """A list-of-strings attribute of ``f`` (see :func:`ssl_rs.data.columns.list_attr`)."""
    return list_attr(f.attrs, key)


def read_split(f: h5py.File, scheme: Optional[str] = None) -> np.ndarray:
    """Split codes (uint8, see ``SPLIT_CODES``) of ``scheme`` or of the file's default scheme."""
    schemes = list(f.get("splits", {}).keys())
    if scheme is None:
        scheme = f.attrs.get("default_split")
        if isinstance(scheme, bytes):
            scheme = scheme.decode()
        if scheme is None:
            if len(schemes) == 1:
                scheme = schemes[0]
            else:
                raise DataError(
                    f"{f.filename}: splits: no split scheme chosen; "
                    + (f"pick one of {schemes}" if schemes else "run `ssl-rs data split` first")
                )
    if scheme not in schemes:
        raise DataError(
            f"{f.filename}: splits/{scheme}: split scheme not found"
            + (f" (have {schemes})" if schemes else "; run `ssl-rs data split` first")
        )
    return f["splits"][scheme][:]


def describe(f: h5py.File) -> Dict[str, Any]:
    """Summary used by ``ssl-rs data info``: the file's attributes, each column's summary
    (``lat_range``, ``lon_range``, ``task`` and ``class_counts``, ``mask_classes``,
    ``mask_nodata``, ``mask_pixel_counts`` and ``mask_pixels_sampled``, ``time_range``,
    ``groups``, ``splits``), ``locations`` (``"lat/lon"``, or ``"none (evaluation-only)"``) and
    ``columns``, the table's columns present, each with its dtype and shape."""
    n, c, h, w = f[IMAGES.name].shape
    out: Dict[str, Any] = {
        "file": str(f.filename),
        "n": int(n),
        "bands": attr_list(f, "bands"),
        "size": [int(h), int(w)],
        "gsd": float(f.attrs["gsd"]) if "gsd" in f.attrs else None,
        "source": _as_str(f.attrs.get("source")),
        "format_version": int(float(np.asarray(f.attrs.get("format_version", 0)).item())),
        "classes": attr_list(f, "class_names") or [],
    }
    found: Dict[str, Any] = {}
    for column in COLUMNS:
        if column.summary is not None and column.key in f:
            for key, value in column.summary(column, f[column.key], out["classes"]).items():
                found.setdefault(key, value)  # the first column wins: label before labels
    out.update(found)
    out.setdefault("task", None)  # no label column
    out["locations"] = "lat/lon" if "lat" in f else NO_LOCATIONS
    out.setdefault("splits", {})
    out["default_split"] = _as_str(f.attrs.get("default_split"))
    out["columns"] = {
        name: {"dtype": _dtype_text(ds.dtype), "shape": [int(s) for s in ds.shape]}
        for column in COLUMNS
        for name, ds in stored(f, column)
    }
    return out


def _dtype_text(dtype: np.dtype) -> str:
    info = h5py.check_string_dtype(dtype)
    return f"{info.encoding} string" if info is not None else str(dtype)


def _as_str(value) -> Optional[str]:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
