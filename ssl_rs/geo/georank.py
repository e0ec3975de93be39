"""GeoRank (Burgert et al., WACV 2026): rank embedding similarities like geographic distances.

For a batch of B embeddings and their locations, each sample ranks the B - 1 others twice: by
embedding similarity (a differentiable soft rank, most similar = 1) and by great-circle
distance (hard rank, nearest = 1). Both rank rows are scaled to unit L2 norm and the loss is
the squared (or absolute) difference on the pairs within ``[min_km, max_km]``; differences of
up to ``margin`` ranks are not penalised. The value and gradient follow the authors'
``SoftRankLoss`` (see ``docs/methods_georank.md`` for the two places where we pin down what
their code leaves to rounding).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..registry import REGULARIZERS
from .base import GeoRegularizer
from ..geodesy import pairwise_haversine_km
from .soft_rank import soft_rank

ERRORS = ("squared", "absolute")


def off_diagonal(m: Tensor) -> Tensor:
    """(B, B) -> (B, B - 1): each row without its diagonal entry, other entries in order.

    A view-and-slice, not boolean indexing, so that it never waits for the GPU.
    """
    b = m.shape[0]
    return m.reshape(-1)[1:].view(b - 1, b + 1)[:, :-1].reshape(b, b - 1)


def unit_rank_norm(b: int) -> float:
    """||(1, 2, ..., b - 1)||_2: the norm of every hard-rank row, the loss's scale ``s``."""
    return math.sqrt((b - 1) * b * (2 * b - 1) / 6.0)


def batch_coordinates(batch: Mapping[str, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """The batch's ``lat`` and ``lon`` (degrees) as float64 tensors on ``device``."""
    lat, lon = (torch.as_tensor(batch[k]).to(device=device, dtype=torch.float64).reshape(-1) for k in ("lat", "lon"))
    return lat, lon


def similarity_and_distance(z: Tensor, batch: Mapping[str, Tensor], temperature: float) -> tuple[Tensor, Tensor]:
    """(B, B - 1) similarities ``z_n z_n^T / T`` of the L2-normalised embeddings and haversine
    distances in km, diagonal removed, both float64 (call it with autocast disabled)."""
    lat, lon = batch_coordinates(batch, z.device)
    zn = F.normalize(z.double(), dim=1)
    return off_diagonal((zn / temperature) @ zn.T), off_diagonal(pairwise_haversine_km(lat, lon))


def pair_fractions(in_range: Tensor, penalised: Tensor) -> dict:
    """The logged fractions of the B (B - 1) pairs that are in range and that are penalised."""
    return {
        "pairs_in_range": in_range.float().mean().detach(),
        "pairs_penalised": penalised.float().mean().detach(),
    }


@REGULARIZERS.register("georank", summary="GeoRank: soft ranks of embedding similarity follow distance ranks")
class GeoRank(GeoRegularizer):
    """GeoRank loss on the batch.

    Args:
        temperature: T in ``S = z z^T / T`` (z L2-normalised). Only ``T * regularization_strength``
            matters for the soft ranks.
        regularization_strength: eps of the L2 soft rank; at the default the soft ranks equal
            the hard ranks except for similarities within about ``eps * T`` of each other.
        min_km, max_km: only pairs whose distance lies in ``[min_km, max_km]`` enter the loss.
        margin: rank differences of up to ``margin`` ranks cost nothing (the authors' soft margin).
        error: "squared" (the paper) or "absolute".
        margin_rtol: relative tolerance on the margin test. With ``margin = 1`` an error of
            exactly one rank sits on the threshold, where rounding decides; the tolerance makes
            such pairs count as within the margin, as intended by ``<=`` in the reference.
    """

    needs = frozenset({"lat", "lon"})

    def __init__(
        self,
        temperature: float = 0.04,
        regularization_strength: float = 0.001,
        min_km: float = 0.0,
        max_km: float = 3000.0,
        margin: float = 1.0,
        error: str = "squared",
        margin_rtol: float = 1e-6,
    ):
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"georank temperature must be > 0, got {temperature}")
        if not regularization_strength > 0:
            raise ConfigError(f"georank regularization_strength must be > 0, got {regularization_strength}")
        if not 0.0 <= min_km <= max_km:
            raise ConfigError(f"georank needs 0 <= min_km <= max_km, got {min_km} and {max_km}")
        if margin < 0:
            raise ConfigError(f"georank margin must be >= 0, got {margin}")
        if error not in ERRORS:
            raise ConfigError(f"georank error must be one of {', '.join(ERRORS)}, got {error!r}")
        if margin_rtol < 0:
            raise ConfigError(f"georank margin_rtol must be >= 0, got {margin_rtol}")
        self.temperature = float(temperature)
        self.regularization_strength = float(regularization_strength)
        self.min_km = float(min_km)
        self.max_km = float(max_km)
        self.margin = float(margin)
        self.error = error
        self.margin_rtol = float(margin_rtol)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, regularization_strength={self.regularization_strength}, "
            f"min_km={self.min_km}, max_km={self.max_km}, margin={self.margin}, error={self.error!r}"
        )

    def forward(self, z: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        b = z.shape[0]
        if b < 2:
            return self.no_pair_loss(z)
        # float64 throughout, as the reference computes its loss: at the default strength the
        # soft ranks resolve similarity differences of ~eps * T = 4e-5
        with torch.autocast(device_type=z.device.type, enabled=False):
            sim, dist = similarity_and_distance(z, batch, self.temperature)
            in_range = (dist >= self.min_km) & (dist <= self.max_km)
            scale = unit_rank_norm(b)

            # rank 1 = most similar, from the ascending soft rank as the reference does
            x = b - soft_rank(sim, self.regularization_strength, "ascending")
            x = x / x.norm(dim=1, keepdim=True)
            # hard ranks 1..b-1 (ties in batch order), already divided by their norm ``scale``
            order = torch.argsort(dist, dim=1, stable=True)
            unit_ranks = torch.arange(1, b, dtype=torch.float64, device=z.device) / scale
            y = torch.empty_like(dist).scatter_(1, order, unit_ranks.expand(b, b - 1))

            if self.error == "squared":
                err = (x - y) ** 2
                margin = (self.margin / scale) ** 2
            else:
                err = (x - y).abs()
                margin = self.margin / scale
            penalised = in_range & (err > margin * (1.0 + self.margin_rtol))
            # mean over the in-range pairs (zeroed ones included), 0 when there are none
            loss = torch.where(penalised, err, 0.0).sum() / in_range.sum().clamp(min=1) * scale
        self.metrics = pair_fractions(in_range, penalised)
        return loss.to(self.loss_dtype(z))
