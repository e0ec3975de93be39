"""Geodesy on a spherical Earth: great-circle (haversine) distances in km, and points as 3-D unit
vectors (so longitude wraps around and the poles are not special).

Coordinates are in degrees and always passed latitude first, as keyword-friendly ``lat``/``lon``
arguments, so that the two cannot be swapped silently. The radius is the IUGG mean Earth radius,
the default of the ``haversine`` package that the GeoRank authors use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError

if TYPE_CHECKING:
    from torch import Tensor

# torch is imported where it is used: the data splits and conversion workers need only the radius
# and numpy, and importing torch costs a spawned conversion worker ~3 s and 0.7 GB

EARTH_RADIUS_KM = 6371.0088


def _as_float(x) -> Tensor:
    """Floating tensors keep their dtype; Python numbers, arrays and integers become float64."""
    import torch

    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.double()
    return torch.as_tensor(x, dtype=torch.float64)


def haversine_km(lat1, lon1, lat2, lon2, radius_km: float = EARTH_RADIUS_KM) -> Tensor:
    """Distance in km between (lat1, lon1) and (lat2, lon2), in degrees; broadcasts.

    Computed in the inputs' floating dtype (float64 for Python numbers, arrays and integer
    tensors). Not meant to be differentiated: the gradient is infinite at zero distance and at
    antipodes.
    """
    import torch

    lat1, lon1, lat2, lon2 = (torch.deg2rad(_as_float(v)) for v in (lat1, lon1, lat2, lon2))
    a = torch.sin((lat2 - lat1) / 2) ** 2 + torch.cos(lat1) * torch.cos(lat2) * torch.sin((lon2 - lon1) / 2) ** 2
    # rounding can push a a hair outside [0, 1] near antipodes
    return 2.0 * radius_km * torch.asin(torch.sqrt(a.clamp(0.0, 1.0)))


def pairwise_haversine_km(lat: Tensor, lon: Tensor, radius_km: float = EARTH_RADIUS_KM) -> Tensor:
    """(B, B) distances in km between all pairs of points given by (B,) ``lat``, ``lon`` in degrees."""
    lat, lon = _as_float(lat), _as_float(lon)
    if lat.dim() != 1 or lat.shape != lon.shape:
        raise DataError(f"lat and lon must be 1-d and of equal length, got {tuple(lat.shape)} and {tuple(lon.shape)}")
    return haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :], radius_km)


def unit_vectors(lat, lon) -> np.ndarray:
    """(..., 3) float64 points (x, y, z) on the unit sphere for latitudes and longitudes in degrees
    (numpy); z points to the North Pole, x to (0, 0)."""
    la, lo = np.radians(np.asarray(lat, np.float64)), np.radians(np.asarray(lon, np.float64))
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def unit_vectors_torch(lat: Tensor, lon: Tensor) -> Tensor:
    """:func:`unit_vectors` of tensors, computed in their dtype and on their device (for batches:
    e.g. the geo-cluster of each sample on the GPU)."""
    import torch

    la, lo = torch.deg2rad(lat), torch.deg2rad(lon)
    return torch.stack([torch.cos(la) * torch.cos(lo), torch.cos(la) * torch.sin(lo), torch.sin(la)], dim=-1)
