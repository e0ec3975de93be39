"""Neighbour pairs (NeighborMAE, Zeng et al., CVPR 2026): each item comes with a sample whose
ground footprint overlaps or touches its own, or the same place on another date.

:class:`NeighborPairs` wraps a :class:`~ssl_rs.data.dataset.GeoDataset` whose file has the
``gsd`` attribute and square images, and adds to every item:

* ``image_neighbor``: the raw uint16 image (C, H, W) of a neighbour chosen at random; the
  item's own image when it has no neighbour in this dataset;
* ``neighbor_offset``: float32 tensor (2,), the (east, north) offset of the neighbour's
  footprint centre from the item's, in footprint sides; (0, 0) when the neighbour is the item
  itself or the same place on another date;
* ``has_neighbor``: bool tensor, False where ``image_neighbor`` is the item's own image;
* ``index_neighbor``: int64 file index of the neighbour (equal to ``index`` when there is none).

Footprints and offsets: a sample's footprint is the north-up square of side ``W * gsd`` metres
(W: image width in pixels, gsd: the file's metres per pixel) centred at its ``lat``/``lon``.
Offsets are taken in a local equirectangular frame around the item:
``north = R * dlat``, ``east = R * cos(lat_item) * dlon`` (radians, ``dlon`` wrapped to
[-180, 180) degrees, R = the mean Earth radius), divided by the side. Another sample of the
dataset is a neighbour when ``max(|east|, |north|) <= max_offset``; the default 1.1 means
"overlapping or touching", with 10% slack because tiles cut from a projected grid (UTM for
Major-TOM) are not exactly one side apart in this frame. Samples at the same lat/lon (other
dates of one place) are neighbours with offset (0, 0). The approximation is meant for
footprints of up to tens of kilometres away from the poles.

Neighbours are taken only from the wrapped dataset (its split), so training never sees a
validation or test image. The choice is a function of (seed, epoch, position); call
:meth:`set_epoch` at the start of every epoch (see :class:`~ssl_rs.data.pairs.PairedSamples`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..geodesy import EARTH_RADIUS_KM
from .dataset import GeoDataset
from .pairs import PairedSamples

EARTH_RADIUS_M = EARTH_RADIUS_KM * 1000.0
# The ball-tree prefilter measures great-circle distance; the exact test uses the item's
# equirectangular frame, whose east scale (cos of the item's latitude, not the pair's mean)
# can make a pair look closer than it is. 25% extra radius keeps every exact match for
# footprints of tens of km up to ~85 degrees latitude, at the cost of a few more pairs to test.
_SEARCH_MARGIN = 1.25
# "touching" tiles placed exactly max_offset apart must not fall out on a rounding error
_EDGE_TOLERANCE = 1e-9
_QUERY_CHUNK = 65536  # bounds the memory of one ball-tree query


def footprint_offsets(lat0, lon0, lat, lon, side_m: float) -> Tuple[np.ndarray, np.ndarray]:
    """(east, north) of (lat, lon) relative to (lat0, lon0), in footprint sides of ``side_m``
    metres, in the local equirectangular frame at (lat0, lon0); degrees in, broadcasts."""
    lat0, lon0 = np.asarray(lat0, np.float64), np.asarray(lon0, np.float64)
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    dlon = (lon - lon0 + 180.0) % 360.0 - 180.0
    north = EARTH_RADIUS_M * np.radians(lat - lat0)
    east = EARTH_RADIUS_M * np.cos(np.radians(lat0)) * np.radians(dlon)
    return east / side_m, north / side_m


class NeighborPairs(PairedSamples):
    """Adds ``image_neighbor`` (an overlapping or touching sample) to each item of ``dataset``.

    Args:
        dataset: the training split; neighbours are looked for among its samples only.
        max_offset: largest offset, in footprint sides along east and along north, at which
            another sample counts as a neighbour (1.1: overlapping or touching).
        seed: with the epoch and the position, decides which neighbour an item gets.
    """

    added_keys = frozenset({"image_neighbor", "neighbor_offset", "has_neighbor", "index_neighbor"})

    def __init__(self, dataset: GeoDataset, max_offset: float = 1.1, seed: int = 0):
        if isinstance(max_offset, bool) or not (math.isfinite(max_offset) and max_offset > 0):
            raise ConfigError(
                f"{dataset.path}: max_offset: must be a positive number of footprint sides, got {max_offset!r}"
            )
        if dataset.gsd is None:
            raise DataError(
                f"{dataset.path}: gsd: neighbour pairs need the file attribute 'gsd' (metres per pixel) "
                "to know each sample's ground footprint; this file has none"
            )
        if not (math.isfinite(dataset.gsd) and dataset.gsd > 0):
            raise DataError(f"{dataset.path}: gsd: must be a positive number of metres per pixel, got {dataset.gsd}")
        height, width = dataset.size
        if height != width:
            raise DataError(
                f"{dataset.path}: images: neighbour pairs need square images (a footprint is a north-up "
                f"square of side width x gsd); these are {height} x {width} px (H x W)"
            )
        super().__init__(dataset, seed)
        self.max_offset = float(max_offset)
        self.side_m = width * dataset.gsd
        self._lat = np.asarray(dataset.lat, np.float64)
        self._lon = np.asarray(dataset.lon, np.float64)
        self._start, self._neighbors = self._find_neighbors()

    def _find_neighbors(self) -> Tuple[np.ndarray, np.ndarray]:
        """CSR table of every position's neighbours: ``neighbors[start[p]:start[p + 1]]``, sorted."""
        from sklearn.neighbors import BallTree

        n = len(self._lat)
        if n == 0:
            return np.zeros(1, np.int64), np.zeros(0, np.int64)
        points = np.radians(np.stack([self._lat, self._lon], axis=1))
        tree = BallTree(points, metric="haversine")
        radius = _SEARCH_MARGIN * self.max_offset * math.sqrt(2.0) * self.side_m / EARTH_RADIUS_M
        limit = self.max_offset * (1.0 + _EDGE_TOLERANCE)
        sources, targets = [], []
        for first in range(0, n, _QUERY_CHUNK):
            found = tree.query_radius(points[first:first + _QUERY_CHUNK], r=radius)
            counts = np.fromiter((len(f) for f in found), np.int64, count=len(found))
            src = np.repeat(np.arange(first, first + len(found), dtype=np.int64), counts)
            dst = np.concatenate(found).astype(np.int64)
            east, north = footprint_offsets(self._lat[src], self._lon[src], self._lat[dst], self._lon[dst],
                                            self.side_m)
            keep = (src != dst) & (np.maximum(np.abs(east), np.abs(north)) <= limit)
            sources.append(src[keep])
            targets.append(dst[keep])
        src, dst = np.concatenate(sources), np.concatenate(targets)
        order = np.lexsort((dst, src))  # by source, then by neighbour: independent of the tree
        src, dst = src[order], dst[order]
        start = np.searchsorted(src, np.arange(n + 1)).astype(np.int64)
        return start, dst

    def candidates(self, position: int) -> np.ndarray:
        """Dataset positions of the neighbours of ``position`` (sorted; itself excluded)."""
        return self._neighbors[self._start[position]:self._start[position + 1]]

    def candidate_offsets(self, position: int) -> np.ndarray:
        """(k, 2) float64 (east, north) offsets of :meth:`candidates`, in footprint sides."""
        others = self.candidates(position)
        east, north = footprint_offsets(self._lat[position], self._lon[position], self._lat[others],
                                        self._lon[others], self.side_m)
        return np.stack([east, north], axis=1)

    def neighbor_position(self, position: int) -> int:
        """The position whose image is the neighbour of ``position`` this epoch (itself if none)."""
        return self.partner_position(position)

    @property
    def neighbor_fraction(self) -> float:
        """Share of positions with at least one neighbour (the rest are paired with themselves)."""
        n = len(self._lat)
        return float(np.count_nonzero(np.diff(self._start))) / n if n else 0.0

    def add_partner(self, item: Dict[str, Any], position: int, partner: int) -> None:
        east, north = footprint_offsets(self._lat[position], self._lon[position], self._lat[partner],
                                        self._lon[partner], self.side_m)
        item["image_neighbor"] = self.partner_image(item, position, partner)
        item["neighbor_offset"] = torch.tensor([float(east), float(north)], dtype=torch.float32)
        item["has_neighbor"] = torch.tensor(partner != position)
        item["index_neighbor"] = torch.tensor(int(self.dataset.indices[partner]), dtype=torch.int64)

    def add_partners(self, batch: Dict[str, Any], positions: np.ndarray, partners: np.ndarray,
                     images: torch.Tensor) -> None:
        east, north = footprint_offsets(self._lat[positions], self._lon[positions], self._lat[partners],
                                        self._lon[partners], self.side_m)
        batch["image_neighbor"] = images
        batch["neighbor_offset"] = torch.from_numpy(np.stack([east, north], axis=1).astype(np.float32))
        batch["has_neighbor"] = torch.from_numpy(partners != positions)
        batch["index_neighbor"] = torch.from_numpy(self.dataset.indices[partners].astype(np.int64))
