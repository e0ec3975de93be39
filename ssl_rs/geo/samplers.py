"""Batches that contain geographic neighbours, so in-batch Tile2Vec triplets exist.

Random batches from a world-wide dataset almost never hold two samples within ~15 km of each
other. :class:`GeoNeighborBatchSampler` builds each batch from random anchors, each bringing
some of its neighbours (found once with a haversine ``BallTree``), then tops the batch up with
random samples, which serve as distant samples.
"""

from __future__ import annotations

import logging
from typing import Iterator, List

import numpy as np
from torch.utils.data import Sampler

from ..errors import ConfigError

log = logging.getLogger(__name__)

EARTH_RADIUS_KM = 6371.0088


class AnchorOrder(Sampler[int]):
    """A random order of ``0..n-1`` that depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class GeoNeighborBatchSampler(Sampler[List[int]]):
    """Batches of ``batch_size // (1 + neighbors_per_anchor)`` random anchors, each followed by
    up to ``neighbors_per_anchor`` random neighbours within ``neighbor_km`` (not already in the
    batch), topped up to ``batch_size`` with random samples.

    Every sample is an anchor exactly once per epoch (it may also appear as a neighbour or a
    filler in other batches); no sample appears twice in a batch. The order and the choices
    depend only on (seed, epoch): call :meth:`set_epoch` (Lightning does, through
    ``self.sampler``, the anchor order). Positions are dataset positions, so pass the
    ``lat``/``lon`` of the dataset the DataLoader reads (``GeoDataset.lat``/``.lon``). Single
    process only: it is not split across distributed ranks.

    Args:
        lat, lon: degrees, one per dataset position.
        batch_size: samples per batch.
        neighbor_km: great-circle radius within which a sample is a neighbour.
        neighbors_per_anchor: neighbours each anchor brings at most.
        drop_last: drop the last batch when the anchors left do not fill it; otherwise it
            holds the remaining anchors and their neighbours, without filler.
        seed: base seed of the anchor order and of the choices.
    """

    def __init__(
        self,
        lat,
        lon,
        batch_size: int,
        neighbor_km: float = 15.0,
        neighbors_per_anchor: int = 1,
        drop_last: bool = True,
        seed: int = 0,
    ):
        lat = np.asarray(lat, np.float64)
        lon = np.asarray(lon, np.float64)
        if lat.ndim != 1 or lat.shape != lon.shape:
            raise ConfigError(f"geo_neighbors sampler: lat and lon must be 1-D of one length, got {lat.shape} and {lon.shape}")
        if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon)) and np.all(np.abs(lat) <= 90.0)):
            raise ConfigError("geo_neighbors sampler: lat/lon must be finite degrees with |lat| <= 90")
        if neighbors_per_anchor < 1:
            raise ConfigError(f"geo_neighbors sampler: neighbors_per_anchor must be >= 1, got {neighbors_per_anchor}")
        if batch_size < 1 + neighbors_per_anchor:
            raise ConfigError(
                f"geo_neighbors sampler: batch_size ({batch_size}) must hold an anchor and its "
                f"{neighbors_per_anchor} neighbour(s)"
            )
        if neighbor_km <= 0:
            raise ConfigError(f"geo_neighbors sampler: neighbor_km must be > 0, got {neighbor_km}")
        if len(lat) < batch_size:  # a full batch holds distinct samples
            raise ConfigError(f"geo_neighbors sampler: {len(lat)} samples do not fill one batch of {batch_size}")
        self.n = len(lat)
        self.batch_size = batch_size
        self.neighbor_km = float(neighbor_km)
        self.neighbors_per_anchor = neighbors_per_anchor
        self.anchors_per_batch = batch_size // (1 + neighbors_per_anchor)
        self.drop_last = drop_last
        self.seed = seed
        self.sampler = AnchorOrder(self.n, seed)
        self.neighbor_offsets, self.neighbor_positions = _neighbor_lists(lat, lon, self.neighbor_km)
        counts = np.diff(self.neighbor_offsets)
        #: fraction of samples with at least one neighbour within neighbor_km
        self.neighbor_fraction = float(np.mean(counts > 0)) if self.n else 0.0
        log.info("geo_neighbors sampler: %.1f%% of %d samples have a neighbour within %g km",
                 100 * self.neighbor_fraction, self.n, self.neighbor_km)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def neighbors(self, position: int) -> np.ndarray:
        """Dataset positions within ``neighbor_km`` of ``position`` (itself excluded)."""
        return self.neighbor_positions[self.neighbor_offsets[position]:self.neighbor_offsets[position + 1]]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.anchors_per_batch)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[List[int]]:
        rng = np.random.default_rng([self.seed, self.sampler.epoch, 1])  # choices; the order has its own stream
        order = list(iter(self.sampler))
        for start in range(0, self.n, self.anchors_per_batch):
            anchors = order[start:start + self.anchors_per_batch]
            full = len(anchors) == self.anchors_per_batch
            if not full and self.drop_last:
                return
            yield self._batch(anchors, rng, top_up=full)

    def _batch(self, anchors: List[int], rng: np.random.Generator, top_up: bool) -> List[int]:
        in_batch = set(anchors)
        batch: List[int] = []
        for a in anchors:
            batch.append(a)
            candidates = [c for c in self.neighbors(a).tolist() if c not in in_batch]
            if len(candidates) > self.neighbors_per_anchor:
                picks = rng.choice(len(candidates), self.neighbors_per_anchor, replace=False)
                candidates = [candidates[i] for i in picks]
            batch.extend(candidates)
            in_batch.update(candidates)
        while top_up and len(batch) < self.batch_size:
            # rejection sampling: the batch is small next to the dataset, so few draws are wasted
            for c in rng.integers(0, self.n, size=2 * (self.batch_size - len(batch)) + 8).tolist():
                if c not in in_batch and len(batch) < self.batch_size:
                    batch.append(c)
                    in_batch.add(c)
        return batch


def _neighbor_lists(lat: np.ndarray, lon: np.ndarray, radius_km: float):
    """CSR neighbour lists (offsets, positions) within ``radius_km``, each point itself excluded."""
    from sklearn.neighbors import BallTree

    points = np.radians(np.stack([lat, lon], axis=1))
    tree = BallTree(points, metric="haversine")
    found = tree.query_radius(points, r=radius_km / EARTH_RADIUS_KM)
    lists = [np.sort(f[f != i]) for i, f in enumerate(found)]
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in lists])
    positions = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64)
    return offsets, positions
