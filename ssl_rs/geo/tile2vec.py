"""Tile2Vec (Jean et al., AAAI 2019) triplets drawn inside the batch.

Tile2Vec samples, for each anchor tile, a neighbour tile near it and a distant tile far away,
and trains ``max(0, ||z_a - z_n|| - ||z_a - z_d|| + margin)`` (L2 distances, not squared),
optionally plus ``l2_weight * (||Z_a|| + ||Z_n|| + ||Z_d||)`` with Frobenius norms of the
batch's anchor, neighbour and distant embeddings (their ``triplet_loss``; ``l2=0`` by default
there, their example notebook uses ``margin=10, l2=0.01``).

Here the neighbour and the distant sample are other samples of the same batch, chosen at
random by great-circle distance: a neighbour within ``neighbor_km``, a distant sample beyond
``distant_km``. Random batches rarely contain neighbours; use
:class:`ssl_rs.data.samplers.GeoNeighborBatchSampler` (``data.sampler: geo_neighbors``) so
that every anchor brings one. Samples at the same place (other dates) count as neighbours.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..registry import REGULARIZERS
from .base import GeoRegularizer
from ..geodesy import pairwise_haversine_km

def _random_member(mask: Tensor) -> Tensor:
    """For each row, a uniformly random column where ``mask`` is True (arbitrary where none is):
    uniform scores, masked to -1, argmax. Uses the global torch generator of the device."""
    scores = torch.rand(mask.shape, device=mask.device)
    return torch.where(mask, scores, torch.full_like(scores, -1.0)).argmax(dim=1)


@REGULARIZERS.register("tile2vec", summary="Tile2Vec triplets in the batch: near (< neighbor_km) vs far (> distant_km)")
class Tile2VecTriplets(GeoRegularizer):
    """In-batch Tile2Vec triplet loss.

    Args:
        neighbor_km: a neighbour lies within this great-circle distance of the anchor.
        distant_km: a distant sample lies beyond this distance (must exceed ``neighbor_km``).
        margin: triplet margin (the default of Tile2Vec's ``train_triplet_epoch``).
        l2_weight: weight of the penalty on embedding norms (0 = off, Tile2Vec's default).
    """

    needs = frozenset({"lat", "lon"})

    def __init__(self, neighbor_km: float = 15.0, distant_km: float = 50.0, margin: float = 1.0, l2_weight: float = 0.0):
        super().__init__()
        if not 0.0 < neighbor_km < distant_km:
            raise ConfigError(f"tile2vec needs 0 < neighbor_km < distant_km, got {neighbor_km} and {distant_km}")
        if margin < 0.0:
            raise ConfigError(f"tile2vec margin must be >= 0, got {margin}")
        if l2_weight < 0.0:
            raise ConfigError(f"tile2vec l2_weight must be >= 0, got {l2_weight}")
        self.neighbor_km = float(neighbor_km)
        self.distant_km = float(distant_km)
        self.margin = float(margin)
        self.l2_weight = float(l2_weight)

    def forward(self, z: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        lat = batch["lat"].to(z.device)
        lon = batch["lon"].to(z.device)
        dist = pairwise_haversine_km(lat, lon)
        not_self = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
        near = (dist <= self.neighbor_km) & not_self
        far = dist > self.distant_km
        neighbor = _random_member(near)
        distant = _random_member(far)
        valid = near.any(dim=1) & far.any(dim=1)
        weight = valid.float()

        zf = z.float()
        # vector_norm has a zero (not NaN) gradient at a zero difference, which matters for
        # the arbitrary picks of anchors without a triplet (they are masked out below)
        d_near = torch.linalg.vector_norm(zf - zf[neighbor], dim=1)
        d_far = torch.linalg.vector_norm(zf - zf[distant], dim=1)
        per_anchor = F.relu(d_near - d_far + self.margin)
        # dividing by at least 1 keeps the loss 0, and still a function of z, without triplets
        count = weight.sum().clamp(min=1.0)
        loss = (per_anchor * weight).sum() / count
        if self.l2_weight:
            w = weight[:, None]
            penalty = sum(torch.linalg.vector_norm(zf[idx] * w) for idx in (slice(None), neighbor, distant))
            loss = loss + self.l2_weight * penalty
        self.metrics = {"triplet_fraction": weight.detach().mean()}
        return loss
