"""The samplers a pretraining's loaders draw with.

- :class:`SeededRandomSampler`: the training order, from (seed, epoch) only, so a resumed run
  visits the samples in the order an uninterrupted one would.
- :class:`GeoNeighborBatchSampler` (``data.sampler: geo_neighbors``): batches that contain
  geographic neighbours, so in-batch Tile2Vec triplets exist. Random batches from a world-wide
  dataset almost never hold two samples within ~15 km of each other; this sampler builds each
  batch from random anchors, each bringing some of its neighbours (found once with a haversine
  ``BallTree``), then tops the batch up with random samples, which serve as distant samples.
  It shards itself across DDP processes.
- :class:`PlaceSampler` (``data.sampler: places``): one random date per place and epoch, so a
  batch never holds two dates of one place (the GeoRank authors' SSL4EO-S12 pretraining).
- :class:`RankShardSampler`: the monitoring loaders' share of a process, for runs whose
  training loader shards itself (Lightning must then inject no samplers).
"""

from __future__ import annotations

import logging
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..errors import ConfigError
from ..geodesy import EARTH_RADIUS_KM

log = logging.getLogger(__name__)


def process_shard() -> Tuple[int, int]:
    """(world size, rank) of this process: ``torch.distributed``'s once initialised, else (1, 0).
    Samplers read it when they are iterated, because Lightning initialises ``torch.distributed``
    after the DataLoaders are built."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class SeededRandomSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on (seed, epoch), so a resumed run
    visits the samples in the same order as an uninterrupted one (Lightning calls set_epoch)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class RankShardSampler(Sampler[int]):
    """This process's share of ``0..n-1`` in order, padded to equal shares like
    ``DistributedSampler(shuffle=False)``; the rank is read when iterating (after Lightning has
    initialised ``torch.distributed``). For the monitoring loaders of runs whose training loader
    shards itself (the ``geo_neighbors`` batch sampler), where Lightning must not inject samplers."""

    def __init__(self, n: int):
        self.n = n

    @staticmethod
    def shard() -> Tuple[int, int]:
        return process_shard()

    def __iter__(self) -> Iterator[int]:
        world, rank = self.shard()
        padded = [i % self.n for i in range(len(self) * world)]
        return iter(padded[rank::world])

    def __len__(self) -> int:
        return -(-self.n // self.shard()[0])


class PlaceSampler(Sampler[int]):
    """One sample per place and epoch (``data.sampler: places``): the places (``group`` ids, one
    per position; a position without a group is a place of its own) in a random order, each
    represented by one of its dates drawn at random; both depend only on (seed, epoch).

    The GeoRank authors pretrain on SSL4EO-S12 this way: their temporal dataset has one item per
    location and draws its dates, and without temporal views they train on one date per
    location. No batch then holds two dates of one place, pairs at distance 0 whose GeoRank
    target ranks tie. An epoch is one pass over the places, ``len`` the number of places."""

    def __init__(self, groups: Optional[np.ndarray], n: int, seed: int = 0):
        if groups is None:
            groups = np.arange(n)
        groups = np.asarray(groups).reshape(-1)
        if len(groups) != n:
            raise ConfigError(f"data.sampler: places: {len(groups)} group ids for {n} samples")
        order = np.argsort(groups, kind="stable")
        starts = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1]])
        self._members, self._starts = order.astype(np.int64), starts.astype(np.int64)
        self._counts = np.diff(np.r_[starts, n]).astype(np.int64)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        date = (rng.random(len(self._starts)) * self._counts).astype(np.int64)
        chosen = self._members[self._starts + date]
        return iter(chosen[rng.permutation(len(chosen))].tolist())

    def __len__(self) -> int:
        return len(self._starts)


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
    ``lat``/``lon`` of the dataset the DataLoader reads (``GeoDataset.lat``/``.lon``).

    Under DDP every process draws the same sequence of batches and keeps every ``world``-th one
    (batch ``i`` goes to rank ``i % world``), so the processes see disjoint anchors and the same
    number of batches (the last ``total % world`` batches are dropped). The rank and world size
    are read from ``torch.distributed`` when the batches are drawn (Lightning initialises it after
    the DataLoader is built), unless given.

    Args:
        lat, lon: degrees, one per dataset position.
        batch_size: samples per batch.
        neighbor_km: great-circle radius within which a sample is a neighbour.
        neighbors_per_anchor: neighbours each anchor brings at most.
        drop_last: drop the last batch when the anchors left do not fill it; otherwise it
            holds the remaining anchors and their neighbours, without filler.
        seed: base seed of the anchor order and of the choices.
        num_replicas, rank: the DDP world size and this process's rank (default: from
            ``torch.distributed`` if initialised, else a single process).
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
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
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
        if (num_replicas is None) != (rank is None) or (num_replicas is not None and not 0 <= rank < num_replicas):
            raise ConfigError(f"geo_neighbors sampler: need 0 <= rank < num_replicas (or neither), "
                              f"got rank={rank}, num_replicas={num_replicas}")
        self.num_replicas, self.rank = num_replicas, rank
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

    def shard(self) -> Tuple[int, int]:
        """(world size, rank) this sampler draws for."""
        if self.num_replicas is not None:
            return self.num_replicas, self.rank
        return process_shard()

    def total_batches(self) -> int:
        """Batches of one epoch over all processes."""
        full, rest = divmod(self.n, self.anchors_per_batch)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        world, _ = self.shard()
        return self.total_batches() // world

    def __iter__(self) -> Iterator[List[int]]:
        world, rank = self.shard()
        rng = np.random.default_rng([self.seed, self.sampler.epoch, 1])  # choices; the order has its own stream
        order = list(iter(self.sampler))
        for i in range(len(self) * world):
            start = i * self.anchors_per_batch
            anchors = order[start:start + self.anchors_per_batch]
            batch = self._batch(anchors, rng, top_up=len(anchors) == self.anchors_per_batch)
            if i % world == rank:  # every process draws every batch, so the rng streams agree
                yield batch

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
