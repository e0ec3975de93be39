"""Random and spatially blocked train/val/test splits.

A random split scatters neighbouring places over train and test, so a model that merely
memorises location scores well; a spatial-block split sends whole geographic cells to one
side (the GeoRank paper's So2Sat-rand vs So2Sat-block, S4A-rand vs S4A-tiles). Samples that
share a ``group`` (several dates of one place) always land on the same side.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import h5py
import numpy as np

from ..errors import ConfigError, DataError
from ..geodesy import EARTH_RADIUS_KM
from .columns import SPLIT_CODES
from .reader import check_open, open_h5
from .writer import write_split

log = logging.getLogger(__name__)

KM_PER_DEGREE = EARTH_RADIUS_KM * np.pi / 180.0
SCHEMES = ("random", "spatial-block")


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    fr = np.asarray(fractions, np.float64)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    return fr


def check_block_km(block_km) -> float:
    """``block_km`` as a float if it is a positive, finite number of kilometres, else ConfigError."""
    try:
        value = float(block_km)
    except (TypeError, ValueError):
        raise ConfigError(f"--block-km must be positive and finite (a cell size in km), got {block_km!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--block-km must be positive and finite (a cell size in km), got {block_km}")
    return value


def _assign_units(unit_sizes: np.ndarray, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shuffle units (groups or cells) and give each to the split its cumulative midpoint falls in,
    so the sample fractions are met as closely as whole units allow."""
    order = rng.permutation(len(unit_sizes))
    cumulative = np.cumsum(unit_sizes[order]) - unit_sizes[order] / 2.0
    position = cumulative / unit_sizes.sum()
    bounds = np.cumsum(fractions)[:-1]
    codes = np.empty(len(unit_sizes), np.uint8)
    codes[order] = np.searchsorted(bounds, position, side="right").astype(np.uint8)
    return codes


def _units(groups: Optional[np.ndarray], n: int):
    if groups is None:
        return np.arange(n), np.ones(n)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return inverse, counts.astype(np.float64)


def random_split(n: int, fractions=(0.7, 0.1, 0.2), seed: int = 0, groups: Optional[np.ndarray] = None) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) for ``n`` samples, keeping groups together."""
    fr = _check_fractions(fractions)
    unit_of_sample, sizes = _units(groups, n)
    return _assign_units(sizes, fr, np.random.default_rng(seed))[unit_of_sample]


def block_ids(lat: np.ndarray, lon: np.ndarray, block_km: float) -> np.ndarray:
    """Id of the roughly square ``block_km`` cell each (lat, lon) falls in.

    Latitude bands are ``block_km`` tall; each band is cut into cells ``block_km`` wide at the
    band's centre latitude, so cells keep their size from the equator to the poles.
    """
    block_km = check_block_km(block_km)
    dlat = block_km / KM_PER_DEGREE
    band = np.floor((np.asarray(lat) + 90.0) / dlat).astype(np.int64)
    centre = np.clip(-90.0 + (band + 0.5) * dlat, -89.9, 89.9)
    dlon = np.minimum(dlat / np.cos(np.radians(centre)), 360.0)
    column = np.floor((np.asarray(lon) + 180.0) / dlon).astype(np.int64)
    return band * 1_000_000 + column


def spatial_block_split(
    lat: np.ndarray,
    lon: np.ndarray,
    block_km: float = 100.0,
    fractions=(0.7, 0.1, 0.2),
    seed: int = 0,
    groups: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Split codes where every ``block_km`` cell goes wholly to train, val or test."""
    fr = _check_fractions(fractions)
    cells = block_ids(lat, lon, block_km)
    if groups is not None:  # a place with several dates follows the cell of its first sample
        _, first = np.unique(groups, return_index=True)
        cell_of_group = dict(zip(groups[first], cells[first]))
        cells = np.array([cell_of_group[g] for g in groups])
    _, unit_of_sample, sizes = np.unique(cells, return_inverse=True, return_counts=True)
    return _assign_units(sizes.astype(np.float64), fr, np.random.default_rng(seed))[unit_of_sample]


def add_split(
    path: str | os.PathLike,
    scheme: str,
    *,
    name: Optional[str] = None,
    fractions=(0.7, 0.1, 0.2),
    seed: int = 0,
    block_km: float = 100.0,
    make_default: bool = False,
) -> Dict[str, int]:
    """Compute a split scheme and store it in the file as ``splits/<name or scheme>``, in place
    (a scheme of that name is replaced, and the log says so). ``path`` may be the folder of a
    sharded dataset: the split is computed over all shards (a spatial block or a group never
    straddles two sides), each shard stores its rows' codes, and the index lists the scheme
    last, so an interrupted split is not seen by readers."""
    _check_arguments(scheme, fractions, block_km)
    if Path(path).is_dir():
        return _add_split_sharded(Path(path), scheme, name=name, fractions=fractions, seed=seed, block_km=block_km,
                                  make_default=make_default)
    with open_h5(path, "r+") as f:
        check_open(f, Path(path))
        return store_split(f, path, scheme, name=name, fractions=fractions, seed=seed, block_km=block_km,
                           make_default=make_default)


def _check_arguments(scheme: str, fractions, block_km) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown split scheme {scheme!r} (use one of {', '.join(SCHEMES)})")
    _check_fractions(fractions)
    if scheme == "spatial-block":
        check_block_km(block_km)


def store_split(
    f: h5py.File,
    path: str | os.PathLike,
    scheme: str,
    *,
    name: Optional[str] = None,
    fractions=(0.7, 0.1, 0.2),
    seed: int = 0,
    block_km: float = 100.0,
    make_default: bool = False,
) -> Dict[str, int]:
    """:func:`add_split` on a file that is already open for writing (``path`` names it in messages),
    e.g. one :class:`~ssl_rs.data.writer.H5Writer` is about to commit."""
    _check_arguments(scheme, fractions, block_km)
    groups = f["group"][:] if "group" in f else None
    lat, lon = _locations(f, path, scheme)
    codes = _codes(scheme, f["images"].shape[0], lat, lon, groups, fractions, seed, block_km)
    key = name or scheme
    replaced = "splits" in f and key in f["splits"]
    _store(f, key, codes, scheme, fractions, seed, block_km, make_default or "default_split" not in f.attrs)
    if replaced:
        log.info("replaced splits/%s in %s", key, path)
    return {s: int((codes == i).sum()) for i, s in enumerate(SPLIT_CODES)}


def _locations(f: h5py.File, path, scheme: str):
    """``(lat, lon)`` of an open file; (None, None) for a scheme that does not use them, and a
    one-line DataError for one that does on a file without locations (evaluation-only data)."""
    if scheme == "random":
        return None, None
    if "lat" not in f or "lon" not in f:
        raise DataError(f"{path}: lat/lon: the file has no locations (evaluation-only data); the {scheme} split "
                        "needs them (--scheme random does not)")
    return f["lat"][:], f["lon"][:]


def _codes(scheme: str, n: int, lat, lon, groups, fractions, seed: int, block_km: float) -> np.ndarray:
    if scheme == "random":
        return random_split(n, fractions, seed, groups)
    return spatial_block_split(lat, lon, block_km, fractions, seed, groups)


def _store(f: h5py.File, key: str, codes: np.ndarray, scheme: str, fractions, seed: int, block_km: float,
           make_default: bool) -> None:
    write_split(f, key, codes)
    f["splits"][key].attrs.update({"scheme": scheme, "seed": seed, "fractions": list(fractions)})
    if scheme == "spatial-block":
        f["splits"][key].attrs["block_km"] = block_km
    if make_default:
        f.attrs["default_split"] = key


def _add_split_sharded(folder: Path, scheme: str, *, name, fractions, seed, block_km, make_default) -> Dict[str, int]:
    from .shards import read_index, shard_paths

    index = read_index(folder)
    paths = shard_paths(folder)
    lat, lon, groups = [], [], []
    for path in paths:
        with open_h5(path) as f:
            check_open(f, path)
            here = _locations(f, path, scheme)
            lat.append(here[0] if here[0] is not None else np.zeros(f["images"].shape[0]))
            lon.append(here[1] if here[1] is not None else np.zeros(f["images"].shape[0]))
            groups.append(f["group"][:] if "group" in f else None)
    if any(g is None for g in groups) and not all(g is None for g in groups):
        raise DataError(f"{paths[[g is None for g in groups].index(True)]}: group: missing in this shard but "
                        "present in others")
    group = None if groups[0] is None else np.concatenate(groups)
    codes = _codes(scheme, index.n, np.concatenate(lat), np.concatenate(lon), group, fractions, seed, block_km)
    key = name or scheme
    default = key if make_default or index.default_split is None else index.default_split
    offsets = index.offsets
    for i, path in enumerate(paths):  # in place, like a file; the index below makes it visible
        with open_h5(path, "r+") as f:
            _store(f, key, codes[offsets[i]:offsets[i + 1]], scheme, fractions, seed, block_km, True)
            f.attrs["default_split"] = default  # each shard stays a valid file that agrees with the index
    counts = {s: int((codes == i).sum()) for i, s in enumerate(SPLIT_CODES)}
    replaced = key in index.splits
    index.splits[key] = counts
    index.default_split = default
    index.write()
    if replaced:
        log.info("replaced splits/%s in %s", key, folder)
    return counts
