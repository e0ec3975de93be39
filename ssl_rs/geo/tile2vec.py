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
With ``gather`` (``geo.gather``), under DDP, the neighbour and the distant sample are drawn from
every device's samples (see :mod:`ssl_rs.geo.base`).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..registry import REGULARIZERS
from .base import GeoRegularizer, batch_columns, global_sum
from ..geodesy import haversine_km

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
        gather: under DDP, draw neighbours and distant samples from every device's samples.
    """

    needs = frozenset({"lat", "lon"})

    def __init__(self, neighbor_km: float = 15.0, distant_km: float = 50.0, margin: float = 1.0, l2_weight: float = 0.0,
                 gather: bool = False):
        super().__init__(gather=gather)
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
        zf = z.float()
        columns = batch_columns(zf, lat, lon, self.gather)
        dist = haversine_km(lat[:, None], lon[:, None], columns.lat[None, :], columns.lon[None, :])
        own = torch.arange(len(z), device=z.device) + columns.offset
        not_self = torch.arange(dist.shape[1], device=z.device)[None, :] != own[:, None]
        near = (dist <= self.neighbor_km) & not_self
        far = dist > self.distant_km
        neighbor = _random_member(near)
        distant = _random_member(far)
        valid = near.any(dim=1) & far.any(dim=1)
        weight = valid.float()

        # vector_norm has a zero (not NaN) gradient at a zero difference, which matters for
        # the arbitrary picks of anchors without a triplet (they are masked out below)
        d_near = torch.linalg.vector_norm(zf - columns.z[neighbor], dim=1)
        d_far = torch.linalg.vector_norm(zf - columns.z[distant], dim=1)
        per_anchor = F.relu(d_near - d_far + self.margin)
        # dividing by at least 1 keeps the loss 0, and still a function of z, without triplets;
        # gathered: this device's share of the global mean, times the number of devices
        count = global_sum(weight.sum(), columns).clamp(min=1.0)
        loss = (per_anchor * weight).sum() / count * columns.world
        if self.l2_weight:
            loss = loss + self.l2_weight * self._norm_penalty(zf, columns, weight, neighbor, distant)
        self.metrics = {"triplet_fraction": weight.detach().mean()}
        return loss

    @staticmethod
    def _norm_penalty(zf: Tensor, columns, weight: Tensor, neighbor: Tensor, distant: Tensor) -> Tensor:
        """``||Z_a|| + ||Z_n|| + ||Z_d||`` (Frobenius norms of the anchors', neighbours' and distant
        samples' embeddings, anchors without a triplet zeroed). Gathered, the global batch's: the
        squared norms are summed over the devices (a differentiable gather), so every device adds
        the same value, which DDP's averaging keeps."""
        w = weight[:, None]
        parts = (zf * w, columns.z[neighbor] * w, columns.z[distant] * w)
        if columns.world == 1:
            return sum(torch.linalg.vector_norm(p) for p in parts)
        from lightly.utils import dist

        squares = torch.stack([p.square().sum() for p in parts])
        total = torch.cat(dist.gather(squares[None])).sum(dim=0)
        # the square root's gradient at 0 is infinite; vector_norm's is 0 there, as here
        positive = total > 0
        return torch.where(positive, torch.where(positive, total, 1.0).sqrt(), 0.0).sum()
