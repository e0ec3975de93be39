"""Ayush et al. (ICCV 2021) geo-classification: predict the geo-cluster of each image from z.

As in their MoCo-v2-Geo code, the head is a ReLU followed by one linear layer on the
(un-normalised) projection, trained with cross-entropy against the k-means cluster of the
image's location (see :mod:`ssl_rs.geo.clusters`). Cluster ids are computed in ``forward``
from ``lat``/``lon`` (largest dot product with the unit-norm centroids), on the device, so
nothing is looked up by sample index and nothing waits for the host.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..geodesy import unit_vectors_torch
from ..registry import REGULARIZERS
from .base import GeoRegularizer
from .clusters import load_or_fit_clusters


@REGULARIZERS.register("ayush", summary="Ayush et al. geo-classification: cross-entropy on k-means geo-clusters")
class AyushGeoClusters(GeoRegularizer):
    """Geo-cluster classification head on ``z``.

    Args:
        num_clusters: K of the k-means of training locations (clipped to the number of
            distinct locations). Ayush et al. use 100.
        seed: k-means seed.
        cache: keep the fitted centroids in a file beside the data and reuse them.
        gather: accepted for ``geo.gather`` and changes nothing: the loss is a mean of per-sample
            terms, so under DDP (equal batches per device) the average of the devices' losses and
            gradients already is the global batch's.
    """

    needs = frozenset({"lat", "lon"})

    def __init__(self, num_clusters: int = 100, seed: int = 0, cache: bool = True, gather: bool = False):
        super().__init__(gather=gather)
        if num_clusters < 2:
            raise ConfigError(f"geo.args.num_clusters must be at least 2, got {num_clusters}")
        self.num_clusters = num_clusters
        self.seed = seed
        self.cache = cache
        self.head: nn.Module | None = None
        # float64 so that the cluster of a place near a boundary is the one k-means gave it
        self.register_buffer("centroids", torch.empty(0, 3, dtype=torch.float64))

    def setup(self, dataset, embed_dim: int) -> None:
        centroids = load_or_fit_clusters(dataset, self.num_clusters, self.seed, self.cache)
        self.centroids = torch.as_tensor(centroids, dtype=torch.float64)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(embed_dim, len(centroids)))

    def cluster_ids(self, lat: Tensor, lon: Tensor) -> Tensor:
        units = unit_vectors_torch(lat.to(self.centroids.dtype), lon.to(self.centroids.dtype))
        return (units @ self.centroids.T).argmax(dim=1)

    def forward(self, z: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        if self.head is None:
            raise RuntimeError("AyushGeoClusters.setup(dataset, embed_dim) must run before the first forward")
        target = self.cluster_ids(batch["lat"].to(z.device), batch["lon"].to(z.device))
        logits = self.head(z)
        loss = F.cross_entropy(logits.float(), target)
        self.metrics = {"geo_acc": (logits.detach().argmax(dim=1) == target).float().mean()}
        return loss
