"""GeoRank (Burgert et al., WACV 2026): rank embedding similarities like geographic distances.

For a batch of B embeddings and their locations, each sample ranks the B - 1 others twice: by
embedding similarity (a differentiable soft rank, most similar = 1) and by great-circle
distance (hard rank, nearest = 1). Both rank rows are scaled to unit L2 norm and the loss is
the squared (or absolute) difference on the pairs within ``[min_km, max_km]``; differences of
up to ``margin`` ranks are not penalised. The value and gradient follow the authors'
``SoftRankLoss`` (see ``docs/methods.md`` for the two places where we pin down what their code
leaves to rounding).

Speed: what depends on the locations only (distances, their hard ranks, the band) is computed
once per batch, outside the autograd graph, and reused when the regularizer is called again on
the same batch (DINO's teacher and student); the loss from the similarities on is one autograd
function with a hand-written backward (one matrix product, sparse soft-rank gradient).

On a GPU nothing here waits for the host: shapes depend on the batch size only (the fixed-shape
soft rank, torch's stable sort for the distance ranks, the self column dropped by a view or a
``gather``), counts stay tensors, and no value is read back with ``.item()``; the cache check
compares Python objects and version counters only. The CPU-only paths (numpy) are taken for CPU
tensors alone.
"""

from __future__ import annotations

import math
import weakref
from typing import Mapping, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..geodesy import haversine_km, pairwise_haversine_km
from ..registry import REGULARIZERS
from .base import BatchColumns, GeoRegularizer, batch_columns, drop_self, global_sum
from .soft_rank import BACKENDS, soft_rank

ERRORS = ("squared", "absolute")


def off_diagonal(m: Tensor) -> Tensor:
    """(B, B) -> (B, B - 1): each row without its diagonal entry, other entries in order.

    A view-and-slice, not boolean indexing, so that it never waits for the GPU.
    """
    return drop_self(m, 0)


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


def column_distances(lat: Tensor, lon: Tensor, columns: BatchColumns) -> Tensor:
    """(b, B - 1) haversine distances in km from each row to the other columns."""
    if columns.world == 1:
        return off_diagonal(pairwise_haversine_km(lat, lon))
    d = haversine_km(lat[:, None], lon[:, None], columns.lat[None, :], columns.lon[None, :])
    return drop_self(d, columns.offset)


def pair_fractions(in_range: Tensor, penalised: Tensor) -> dict:
    """The logged fractions of the B (B - 1) pairs that are in range and that are penalised."""
    return {
        "pairs_in_range": in_range.float().mean().detach(),
        "pairs_penalised": penalised.float().mean().detach(),
    }


def rank_order(d: Tensor) -> Tensor:
    """``argsort`` of each row of ``d``, ties in order of position (a stable sort's order).

    On the CPU, numpy's vectorised sort is several times faster than torch's; it is not stable,
    so the rows with equal values (samples at one place) are sorted again, stably. Elsewhere
    torch's stable sort, which keeps shapes fixed.
    """
    if d.device.type != "cpu":
        return torch.argsort(d, dim=1, stable=True)
    values = d.numpy()
    order = np.argsort(values, axis=1)
    ordered = np.take_along_axis(values, order, axis=1)
    tied = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    if tied.any():
        order[tied] = np.argsort(values[tied], axis=1, kind="stable")
    return torch.from_numpy(order)


class _Geometry(NamedTuple):
    """What GeoRank needs of the locations, for (b, B - 1) row/column pairs."""

    in_range: Tensor  # bool: distance within [min_km, max_km]
    target: Tensor  # float64: hard distance ranks (nearest = 1), divided by their norm


class _SimilarityRows(torch.autograd.Function):
    """``off_diagonal(zn zn^T) / T`` with a backward of one matrix product, ``(G + G^T) zn / T``
    (autograd would make two)."""

    @staticmethod
    def forward(ctx, zn: Tensor, temperature: float) -> Tensor:
        ctx.save_for_backward(zn)
        ctx.temperature = temperature
        # (zn zn^T) / T: the reference's order of operations
        return off_diagonal(zn @ zn.T).div_(temperature)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (zn,) = ctx.saved_tensors
        b = zn.shape[0]
        full = grad.new_zeros(b * b)
        full[1:].view(b - 1, b + 1)[:, :-1] = grad.reshape(b - 1, b)  # off_diagonal's inverse
        full = full.view(b, b)
        return (full + full.T).div_(ctx.temperature) @ zn, None


class _RankLoss(torch.autograd.Function):
    """GeoRank's loss from the similarity rows on, with the backward written out: the gradient
    enters at the penalised pairs and goes back through the row normalisation and the soft rank
    (whose own backward is zero outside its pooled blocks)."""

    @staticmethod
    def forward(ctx, sim: Tensor, geometry: _Geometry, count: Tensor, n: int, strength: float, squared: bool,
                threshold: float, scale: float, backend: str):
        with torch.enable_grad():
            leaf = sim.detach().requires_grad_(True)
            ranks = soft_rank(leaf, strength, "ascending", backend)
        # rank 1 = most similar, from the ascending soft rank as the reference does
        x = n - ranks.detach()
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        x.div_(norm)
        diff = x - geometry.target
        err = diff.square() if squared else diff.abs()
        penalised = geometry.in_range & (err > threshold)
        # mean over the in-range pairs (zeroed ones included), 0 when there are none
        loss = err.masked_fill_(~penalised, 0.0).sum() / count * scale
        ctx.mark_non_differentiable(penalised)
        ctx.graph = (leaf, ranks)
        ctx.saved = (x, diff, norm, penalised, count)
        ctx.squared, ctx.scale = squared, scale
        return loss, penalised

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _):
        leaf, ranks = ctx.graph
        x, diff, norm, penalised, count = ctx.saved
        coef = grad_loss * ctx.scale / count
        grad_x = torch.where(penalised, diff if ctx.squared else diff.sign(), 0.0)
        grad_x.mul_(2.0 * coef if ctx.squared else coef)
        # through x = x_raw / ||x_raw|| and x_raw = n - ranks
        grad_ranks = x * (grad_x * x).sum(dim=1, keepdim=True)
        grad_ranks.sub_(grad_x).div_(norm)
        # the graph is kept: autograd may call this backward again (gradcheck does)
        (grad_sim,) = torch.autograd.grad(ranks, leaf, grad_ranks, retain_graph=True)
        return grad_sim, None, None, None, None, None, None, None, None


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
        soft_rank_backend: :func:`ssl_rs.geo.soft_rank.soft_rank`'s backend ("auto": torchsort
            where installed, else the built-in solver; "torch": always the built-in one).
        gather: under DDP, rank every device's samples (``geo.gather``; see the module
            :mod:`ssl_rs.geo.base`).
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
        soft_rank_backend: str = "auto",
        gather: bool = False,
    ):
        super().__init__(gather=gather)
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
        if soft_rank_backend not in BACKENDS:
            raise ConfigError(
                f"georank soft_rank_backend must be one of {', '.join(BACKENDS)}, got {soft_rank_backend!r}"
            )
        self.temperature = float(temperature)
        self.regularization_strength = float(regularization_strength)
        self.min_km = float(min_km)
        self.max_km = float(max_km)
        self.margin = float(margin)
        self.error = error
        self.margin_rtol = float(margin_rtol)
        self.soft_rank_backend = soft_rank_backend
        self._geometry_cache: Optional[tuple] = None

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, regularization_strength={self.regularization_strength}, "
            f"min_km={self.min_km}, max_km={self.max_km}, margin={self.margin}, error={self.error!r}, "
            f"gather={self.gather}"
        )

    def __getstate__(self):
        # the cache holds weak references, which do not pickle; it is rebuilt on the next batch
        state = self.__dict__.copy()
        state["_geometry_cache"] = None
        return state

    def geometry(self, batch: Mapping[str, Tensor], lat: Tensor, lon: Tensor, columns: BatchColumns) -> _Geometry:
        """The band mask and the unit-norm hard distance ranks of the (row, column) pairs.

        Computed once per batch: a second call with the same (unmodified) ``lat`` and ``lon``
        tensors reuses them. Float64 throughout, as the equality with the reference needs (its
        float32 distances aside; see docs/methods.md): ranking float32 distances would not be
        faster on the CPU, and would reorder near-ties.
        """
        n = columns.lat.shape[0]
        key = self._cache_key(batch, lat.device, columns)
        cached = self._geometry_cache
        if key is not None and cached is not None and self._same_key(cached[0], key):
            return cached[1]
        dist = column_distances(lat, lon, columns)
        in_range = (dist >= self.min_km) & (dist <= self.max_km)
        # hard ranks 1..n-1 (ties in column order), already divided by their norm
        unit_ranks = torch.arange(1, n, dtype=torch.float64, device=dist.device) / unit_rank_norm(n)
        target = torch.empty_like(dist).scatter_(1, rank_order(dist), unit_ranks.expand_as(dist))
        result = _Geometry(in_range, target)
        self._geometry_cache = (key, result) if key is not None else None
        return result

    @staticmethod
    def _cache_key(batch, device, columns: BatchColumns):
        lat, lon = batch.get("lat"), batch.get("lon")
        if not (isinstance(lat, Tensor) and isinstance(lon, Tensor)):
            return None
        return (weakref.ref(lat), lat._version, weakref.ref(lon), lon._version, device, columns.offset,
                columns.lat.shape[0])

    @staticmethod
    def _same_key(old, new) -> bool:
        return (old[0]() is new[0]() and old[2]() is new[2]() and old[1] == new[1] and old[3] == new[3]
                and old[4:] == new[4:])

    def forward(self, z: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        # float64 throughout, as the reference computes its loss: at the default strength the
        # soft ranks resolve similarity differences of ~eps * T = 4e-5
        with torch.autocast(device_type=z.device.type, enabled=False):
            lat, lon = batch_coordinates(batch, z.device)
            zn = F.normalize(z.double(), dim=1)
            columns = batch_columns(zn, lat, lon, self.gather)
            n = columns.z.shape[0]
            if n < 2:
                return self.no_pair_loss(z)
            geometry = self.geometry(batch, lat, lon, columns)
            if columns.world == 1:
                sim = _SimilarityRows.apply(zn, self.temperature)
            else:
                sim = drop_self(zn @ columns.z.T, columns.offset).div_(self.temperature)
            scale = unit_rank_norm(n)
            if self.error == "squared":
                threshold = (self.margin / scale) ** 2
            else:
                threshold = self.margin / scale
            count = global_sum(geometry.in_range.sum(), columns).clamp(min=1).to(torch.float64)
            # gathered: this device's share of the global loss, times the number of devices, so
            # that their average (and DDP's average of the gradients) is the global batch's
            loss, penalised = _RankLoss.apply(
                sim, geometry, count, n, self.regularization_strength, self.error == "squared",
                threshold * (1.0 + self.margin_rtol), scale * columns.world, self.soft_rank_backend,
            )
        self.metrics = pair_fractions(geometry.in_range, penalised)
        return loss.to(self.loss_dtype(z))
