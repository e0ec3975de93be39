"""Tiny Sen4AgriNet patch files written with h5py in the netCDF4 (HDF5) layout of the real ones.

Follows the published structure (Orion-AI-Lab/S4A README: root attributes, one group per band
with the variable of the group's name over ``time, y, x`` and the coordinate variables ``time``,
``y``, ``x``; groups ``labels`` and ``parcels``) and the attributes xarray's ``open_rasterio``
writes (``crs``, ``transform``, ``res``, ``is_tiled``, ``nodatavals``, ``scales``, ``offsets``,
``AREA_OR_POINT``, ``coordinates``), with netCDF-4 dimension scales so that netCDF readers see
the same variables. Strings are fixed-length ASCII attributes (netCDF ``NC_CHAR``).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import h5py
import numpy as np

from ssl_rs.data.bands import S2_BANDS, S2_GSD


def _char(value: str) -> np.bytes_:
    return np.bytes_(value.encode("ascii"))


def _scale(group: h5py.Group, name: str, values: np.ndarray, dimid: int, attrs: Optional[Dict] = None):
    ds = group.create_dataset(name, data=values)
    ds.make_scale(name)
    ds.attrs["_Netcdf4Dimid"] = np.int32(dimid)
    for key, value in (attrs or {}).items():
        ds.attrs[key] = value
    return ds


def _raster_attrs(ds: h5py.Dataset, epsg: int, gsd: float, x0: float, y0: float, pixel_attrs: bool = True) -> None:
    ds.attrs["coordinates"] = _char("band")
    ds.attrs["transform"] = np.array([gsd, 0.0, x0, 0.0, -gsd, y0], np.float64)
    ds.attrs["crs"] = _char(f"+init=epsg:{epsg}")
    ds.attrs["res"] = np.array([gsd, gsd], np.float64)
    if pixel_attrs:
        ds.attrs["is_tiled"] = np.int64(0)
        ds.attrs["scales"] = np.array([1.0])
        ds.attrs["offsets"] = np.array([0.0])
        ds.attrs["AREA_OR_POINT"] = _char("Area")
    ds.attrs["nodatavals"] = np.array([np.nan])


def _grid_group(f: h5py.File, name: str, data: np.ndarray, *, epsg: int, gsd: float, x0: float, y0: float,
                days: Optional[Sequence[int]], centres: bool, time_units: str) -> None:
    g = f.create_group(name)
    band = g.create_dataset("band", data=np.int64(1))
    band.attrs["_Netcdf4Coordinate"] = _char("true")
    n = data.shape[-1]
    half = gsd / 2 if centres else 0.0
    dims = []
    if days is not None:
        dims.append(_scale(g, "time", np.asarray(days, np.float64), 0,
                           {"units": _char(time_units), "calendar": _char("proleptic_gregorian")}))
    dims.append(_scale(g, "y", y0 - half - gsd * np.arange(n), len(dims)))
    dims.append(_scale(g, "x", x0 + half + gsd * np.arange(n), len(dims)))
    ds = g.create_dataset(name, data=data, compression="gzip")
    for i, scale in enumerate(dims):
        ds.dims[i].attach_scale(scale)
    _raster_attrs(ds, epsg, gsd, x0, y0, pixel_attrs=days is not None)


def write_patch(
    path: Path,
    *,
    tile: str = "31TCG",
    year: int = 2020,
    row: int = 14,
    col: int = 14,
    size: int = 36,
    dates: Sequence[date] = (date(2020, 3, 4), date(2020, 7, 12)),
    labels: Optional[np.ndarray] = None,
    epsg: int = 32631,
    x0: float = 360000.0,
    y0: float = 4600020.0,
    bands: Iterable[str] = S2_BANDS,
    centres: bool = True,
    time_units: str = "days since 1970-01-01 00:00:00",
    seed: int = 0,
    skip_root: Sequence[str] = (),
) -> Path:
    """One patch file of ``size`` px at 10 m (366 for the real geometry) and returns its path.

    Pixel values encode what they are: band ``b`` (index in S2_BANDS) of date ``t`` holds
    ``1000 * (b + 1) + 100 * t`` plus a small per-pixel ramp, so tests can tell bands and dates apart.
    """
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = f"{year}_{tile}_patch_{row:02d}_{col:02d}"
    if labels is None:
        labels = np.zeros((size, size), np.uint32)
    unit, since = time_units.split(" since ")
    epoch = date.fromisoformat(since.split()[0])
    per_day = {"days": 1, "hours": 24, "seconds": 86400}.get(unit, 1)
    days = [(d - epoch).days * per_day for d in dates]
    with h5py.File(path, "w") as f:
        root = {
            "title": "S4A Patch Dataset", "authors": "Papoutsis I., Sykas D., Zografakis D., Sdraka M.",
            "patch_full_name": name, "patch_year": str(year), "patch_name": f"patch_{row:02d}_{col:02d}",
            "patch_country_code": "ES", "patch_tile": tile, "creation_date": "27 Apr 2021",
            "references": "Documentation available at .", "institution": "National Observatory of Athens.",
            "version": "21.03",
        }
        for key, value in root.items():
            if key not in skip_root:
                f.attrs[key] = _char(value)
        f.attrs["_NCProperties"] = _char("version=2,netcdf=4.7.4,hdf5=1.10.6")
        for band in bands:
            gsd = S2_GSD[band]
            n = size * 10 // gsd
            b = S2_BANDS.index(band)
            base = 1000 * (b + 1) + 100 * np.arange(len(days))[:, None, None]
            ramp = rng.integers(0, 50, (len(days), n, n))
            _grid_group(f, band, (base + ramp).astype(np.uint16), epsg=epsg, gsd=gsd, x0=x0, y0=y0, days=days,
                        centres=centres, time_units=time_units)
        _grid_group(f, "labels", labels.astype(np.uint32), epsg=epsg, gsd=10, x0=x0, y0=y0, days=None,
                    centres=centres, time_units=time_units)
        _grid_group(f, "parcels", (labels > 0).astype(np.uint32) * 7, epsg=epsg, gsd=10, x0=x0, y0=y0, days=None,
                    centres=centres, time_units=time_units)
    return path
