"""GeoBasic: the GeoRank paper's MSE ablation (the authors' ``GeographyMSELoss``).

Embedding dissimilarity is regressed on scaled distance: with ``S = z z^T / T`` (z L2-normalised,
diagonal removed) and D the haversine distances in km,

    err = ((1/T - S) - spacing/T - D / scale_km / T)^2

on the pairs with ``D / scale_km <= max_distance``; errors up to ``margin / T^2`` are zeroed and
the loss is the mean over those pairs (zeroed ones included), as in the reference.

One deliberate difference: the reference feeds (lon, lat) to the haversine, which expects
(lat, lon); here latitude and longitude go in their correct order. With ``gather`` (``geo.gather``)
each device's rows are compared with every device's samples under DDP (see :mod:`ssl_rs.geo.base`).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..registry import REGULARIZERS
from .base import GeoRegularizer, batch_columns, drop_self, global_sum
from .georank import batch_coordinates, column_distances, pair_fractions


@REGULARIZERS.register("geobasic", summary="GeoBasic: embedding dissimilarity regressed on distance (MSE ablation)")
class GeoBasic(GeoRegularizer):
    """Squared error between embedding dissimilarity and scaled geographic distance.

    Args:
        temperature: T in ``S = z z^T / T``.
        spacing: offset subtracted from the dissimilarity ``1 - cos`` (before dividing by T).
        max_distance: largest pair distance used, in units of ``scale_km``.
        margin: squared errors up to ``margin / T^2`` cost nothing.
        scale_km: distance that maps to a dissimilarity of 1 (8000 km in the reference).
        gather: under DDP, compare with every device's samples (``geo.gather``).
    """

    needs = frozenset({"lat", "lon"})

    def __init__(
        self,
        temperature: float = 0.04,
        spacing: float = 0.1,
        max_distance: float = 1.0,
        margin: float = 0.01,
        scale_km: float = 8000.0,
        gather: bool = False,
    ):
        super().__init__(gather=gather)
        if not temperature > 0:
            raise ConfigError(f"geobasic temperature must be > 0, got {temperature}")
        if not scale_km > 0:
            raise ConfigError(f"geobasic scale_km must be > 0, got {scale_km}")
        if max_distance < 0:
            raise ConfigError(f"geobasic max_distance must be >= 0, got {max_distance}")
        if margin < 0:
            raise ConfigError(f"geobasic margin must be >= 0, got {margin}")
        self.temperature = float(temperature)
        self.spacing = float(spacing)
        self.max_distance = float(max_distance)
        self.margin = float(margin)
        self.scale_km = float(scale_km)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, spacing={self.spacing}, max_distance={self.max_distance}, "
            f"margin={self.margin}, scale_km={self.scale_km}, gather={self.gather}"
        )

    def forward(self, z: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        t = self.temperature
        with torch.autocast(device_type=z.device.type, enabled=False):
            lat, lon = batch_coordinates(batch, z.device)
            zn = F.normalize(z.double(), dim=1)
            columns = batch_columns(zn, lat, lon, self.gather)
            if columns.z.shape[0] < 2:
                return self.no_pair_loss(z)
            sim = drop_self((zn / t) @ columns.z.T, columns.offset)
            target = column_distances(lat, lon, columns) / self.scale_km / t
            pred = (1.0 / t - sim) - self.spacing / t
            err = (pred - target) ** 2
            in_range = target <= self.max_distance / t
            penalised = in_range & (err > self.margin / t**2)
            # gathered: this device's share of the global mean, times the number of devices
            count = global_sum(in_range.sum(), columns).clamp(min=1)
            loss = torch.where(penalised, err, 0.0).sum() / count * columns.world
        self.metrics = pair_fractions(in_range, penalised)
        return loss.to(self.loss_dtype(z))
