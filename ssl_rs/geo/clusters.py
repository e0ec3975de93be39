"""Geo-clusters for Ayush et al.'s geo-classification pretext task.

Training locations are mapped to 3-D unit vectors (so longitude wraps around and the poles are
not special) and clustered with scikit-learn's k-means. The centroids are projected back onto
the unit sphere, and a place's cluster is the centroid with the largest dot product, which is
the nearest centroid on the sphere; the regularizer recomputes it from ``lat``/``lon`` in every
batch with the same rule.

The fit happens once per (data file, training samples, K, seed) and is cached beside the data
file as ``<data>.geoclusters-K<K>-seed<seed>-<hash>.npz``; the hash covers the training indices,
their coordinates and the k-means settings, so another split or a regenerated file gets its
own cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ConfigError, DataError
from ..geodesy import unit_vectors

log = logging.getLogger(__name__)

#: k-means++ restarts; the fit runs once per dataset and is cached, so a few restarts that
#: guard against a poor initialisation cost little
KMEANS_N_INIT = 4
CACHE_FORMAT = 1


def assign_clusters(units: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cluster id of each unit vector: the centroid (unit norm) with the largest dot product."""
    return np.argmax(units @ centroids.T, axis=1)


def fit_geo_clusters(lat: np.ndarray, lon: np.ndarray, num_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means of the locations on the unit sphere: (K, 3) unit-norm centroids.

    K is clipped to the number of distinct locations (with a warning): more clusters than
    places would leave clusters that no sample can ever be assigned to.
    """
    from sklearn.cluster import KMeans

    units = unit_vectors(lat, lon)
    k = effective_num_clusters(lat, lon, num_clusters)
    kmeans = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed).fit(units)
    centroids = kmeans.cluster_centers_.astype(np.float64)
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True)


def effective_num_clusters(lat: np.ndarray, lon: np.ndarray, num_clusters: int) -> int:
    if num_clusters < 2:
        raise ConfigError(f"geo.args.num_clusters must be at least 2, got {num_clusters}")
    distinct = len(np.unique(np.stack([np.asarray(lat, np.float64), np.asarray(lon, np.float64)], 1), axis=0))
    if distinct < 2:
        raise ConfigError(f"geo-clusters need at least 2 distinct training locations, got {distinct}")
    if num_clusters > distinct:
        log.warning("geo-clusters: K=%d is more than the %d distinct training locations; using K=%d",
                    num_clusters, distinct, distinct)
        return distinct
    return num_clusters


def training_digest(indices: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> str:
    """Hash of what the clusters depend on besides K and the seed."""
    h = hashlib.sha1()
    for part in (np.asarray(indices, np.int64), np.asarray(lat, np.float64), np.asarray(lon, np.float64)):
        h.update(np.ascontiguousarray(part).tobytes())
    h.update(f"n_init={KMEANS_N_INIT};format={CACHE_FORMAT}".encode())
    return h.hexdigest()[:16]


def cache_path(data_path: str | os.PathLike, num_clusters: int, seed: int, digest: str) -> Path:
    data_path = Path(data_path)
    return data_path.with_name(f"{data_path.name}.geoclusters-K{num_clusters}-seed{seed}-{digest}.npz")


def load_or_fit_clusters(dataset, num_clusters: int, seed: int = 0, cache: bool = True) -> np.ndarray:
    """Centroids (K, 3) for the training ``dataset`` (``.lat``, ``.lon``, ``.indices``, ``.path``),
    read from the cache beside the data file when present, else fitted (and cached)."""
    lat, lon = np.asarray(dataset.lat, np.float64), np.asarray(dataset.lon, np.float64)
    k = effective_num_clusters(lat, lon, num_clusters)
    path: Optional[Path] = None
    if cache:
        path = cache_path(dataset.path, k, seed, training_digest(dataset.indices, lat, lon))
        if path.is_file():
            return _read_cache(path, k)
    centroids = fit_geo_clusters(lat, lon, k, seed)
    if path is not None:
        _write_cache(path, centroids, seed)
    return centroids


def _read_cache(path: Path, k: int) -> np.ndarray:
    try:
        with np.load(path) as data:
            centroids = np.asarray(data["centroids"], np.float64)
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: unreadable geo-cluster cache ({e}); delete it to refit") from None
    if centroids.shape != (k, 3) or not np.all(np.isfinite(centroids)):
        raise DataError(f"{path}: centroids: expected a finite ({k}, 3) array, got {centroids.shape}; delete it to refit")
    return centroids


def _write_cache(path: Path, centroids: np.ndarray, seed: int) -> None:
    """Write atomically (:mod:`ssl_rs.files`: ``.NAME.part`` beside it, renamed into place), so a
    reader never sees half a cache. A data directory that is not writable, a full disk or another
    process writing the same cache only costs a refit next time, so it is logged, not raised."""
    from ..files import atomic_output

    try:
        with atomic_output(path, announce=False) as out:
            np.savez(out.file, centroids=centroids, seed=np.int64(seed), format=np.int64(CACHE_FORMAT))
    except DataError as e:
        log.warning("geo-clusters: cannot write the cache (%s); the clusters will be refitted next time", e)
