"""Location encoders for CSP: a fixed multi-scale position encoding of (lat, lon) followed by a
learned MLP.

Position encodings (latitude phi, longitude lambda in radians; S scales with radii
``r_s = min_radius * (max_radius / min_radius) ** (s / (S - 1))`` in radians and angles
``phi_s = phi / r_s``, ``lambda_s = lambda / r_s``):

* ``grid`` (Space2Vec ``gridcell``, the encoding of CSP's released models):
  ``[sin lambda_s, cos lambda_s]`` for every scale, then ``[sin phi_s, cos phi_s]``: 4S features,
  in the authors' order. Their ``min_radius`` / ``max_radius`` are in degrees (0.1 and 360 in
  CSP's scripts), i.e. ``pi / 1800`` and ``2 pi`` here.
* ``theory`` (Space2Vec, Mai et al. 2020): on the (lambda, phi) plane, projections on three unit
  vectors 120 degrees apart, ``[cos(<x, a_j> / r_s), sin(<x, a_j> / r_s)]``: 6S features.
* ``sphereC`` (Sphere2Vec): ``[sin phi_s, cos phi_s cos lambda_s, cos phi_s sin lambda_s]``,
  3S features; at ``r_s = 1`` this is the 3-D unit vector of the point.
* ``sphereM`` (Sphere2Vec): ``[sin phi_s, cos phi_s cos lambda, cos phi cos lambda_s,
  cos phi_s sin lambda, cos phi sin lambda_s]``, 5S features (one angle scaled at a time).
* ``sphereC+`` / ``sphereM+``: the above plus ``[sin phi_s, cos phi_s, sin lambda_s,
  cos lambda_s]`` per scale (the "grid" terms), 7S / 9S features.
* ``rff``: random Fourier features of the 3-D unit vector u, ``[cos(W u), sin(W u)]`` with
  ``W ~ N(0, rff_sigma^-2)`` fixed at construction (Rahimi & Recht; the usual baseline).
"""

from __future__ import annotations

import math
from typing import Dict, Type

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class PositionEncoding(nn.Module):
    """(lat, lon) in degrees (any float dtype, shape (B,)) -> (B, num_features) float32."""

    num_features: int

    def forward(self, lat: Tensor, lon: Tensor) -> Tensor:
        phi = torch.deg2rad(lat.to(torch.float64))
        lam = torch.deg2rad(lon.to(torch.float64))
        # float64 for the fine scales: 1 / r_s multiplies the angles by up to 1 / min_radius
        return self.encode(phi, lam).to(torch.float32)

    def encode(self, phi: Tensor, lam: Tensor) -> Tensor:
        raise NotImplementedError


class MultiScaleEncoding(PositionEncoding):
    """Shared scale ladder of the sinusoidal families."""

    features_per_scale = 0

    def __init__(self, num_scales: int = 16, min_radius: float = 1e-3, max_radius: float = 1.0):
        super().__init__()
        if num_scales < 1:
            raise ConfigError(f"location encoder: num_scales must be >= 1, got {num_scales}")
        if not 0 < min_radius <= max_radius:
            raise ConfigError(f"location encoder: need 0 < min_radius <= max_radius, got {min_radius}, {max_radius}")
        steps = torch.arange(num_scales, dtype=torch.float64) / max(1, num_scales - 1)
        radii = min_radius * (max_radius / min_radius) ** steps
        self.register_buffer("inv_radius", 1.0 / radii, persistent=False)
        self.num_features = self.features_per_scale * num_scales

    def scaled(self, angle: Tensor) -> Tensor:
        return angle.unsqueeze(-1) * self.inv_radius.to(angle.device)  # (B, S)


class Grid(MultiScaleEncoding):
    features_per_scale = 4

    def encode(self, phi, lam):
        parts = []
        for angle in (self.scaled(lam), self.scaled(phi)):
            parts.append(torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2))  # sin, cos per scale
        return torch.cat(parts, dim=-1)


class Theory(MultiScaleEncoding):
    features_per_scale = 6

    def encode(self, phi, lam):
        directions = [(1.0, 0.0), (-0.5, math.sqrt(3) / 2), (-0.5, -math.sqrt(3) / 2)]
        parts = []
        for ax, ay in directions:
            angle = self.scaled(ax * lam + ay * phi)
            parts += [angle.cos(), angle.sin()]
        return torch.cat(parts, dim=-1)


def _grid_terms(phi_s: Tensor, lam_s: Tensor) -> list:
    return [phi_s.sin(), phi_s.cos(), lam_s.sin(), lam_s.cos()]


class SphereC(MultiScaleEncoding):
    features_per_scale = 3
    with_grid = False

    def encode(self, phi, lam):
        phi_s, lam_s = self.scaled(phi), self.scaled(lam)
        parts = [phi_s.sin(), phi_s.cos() * lam_s.cos(), phi_s.cos() * lam_s.sin()]
        return torch.cat(parts + (_grid_terms(phi_s, lam_s) if self.with_grid else []), dim=-1)


class SphereCPlus(SphereC):
    features_per_scale = 7
    with_grid = True


class SphereM(MultiScaleEncoding):
    features_per_scale = 5
    with_grid = False

    def encode(self, phi, lam):
        phi_s, lam_s = self.scaled(phi), self.scaled(lam)
        phi1, lam1 = phi.unsqueeze(-1), lam.unsqueeze(-1)
        parts = [phi_s.sin(), phi_s.cos() * lam1.cos(), phi1.cos() * lam_s.cos(),
                 phi_s.cos() * lam1.sin(), phi1.cos() * lam_s.sin()]
        return torch.cat(parts + (_grid_terms(phi_s, lam_s) if self.with_grid else []), dim=-1)


class SphereMPlus(SphereM):
    features_per_scale = 9
    with_grid = True


class RandomFourierFeatures(PositionEncoding):
    """``[cos(W u), sin(W u)]`` of the unit vector u; ``num_scales`` frequencies (2x features)."""

    def __init__(self, num_scales: int = 16, rff_sigma: float = 0.01, seed: int = 0, **_ignored):
        super().__init__()
        if num_scales < 1 or rff_sigma <= 0:
            raise ConfigError(f"location encoder 'rff': need num_scales >= 1 and rff_sigma > 0, "
                              f"got {num_scales}, {rff_sigma}")
        g = torch.Generator().manual_seed(seed)
        # fixed, and saved with the model so a reloaded encoder computes the same features
        self.register_buffer("weight", torch.randn(num_scales, 3, generator=g, dtype=torch.float64) / rff_sigma)
        self.num_features = 2 * num_scales

    def encode(self, phi, lam):
        unit = torch.stack([phi.cos() * lam.cos(), phi.cos() * lam.sin(), phi.sin()], dim=-1)
        proj = unit @ self.weight.to(unit.device).T
        return torch.cat([proj.cos(), proj.sin()], dim=-1)


POSITION_ENCODINGS: Dict[str, Type[PositionEncoding]] = {
    "grid": Grid,
    "theory": Theory,
    "sphereC": SphereC,
    "sphereC+": SphereCPlus,
    "sphereM": SphereM,
    "sphereM+": SphereMPlus,
    "rff": RandomFourierFeatures,
}


def create_position_encoding(name: str, num_scales: int = 16, min_radius: float = 1e-3, max_radius: float = 1.0,
                             rff_sigma: float = 0.01) -> PositionEncoding:
    if name not in POSITION_ENCODINGS:
        raise ConfigError(f"location encoder: unknown position encoding {name!r}; "
                          f"use one of {sorted(POSITION_ENCODINGS)}")
    if name == "rff":
        return RandomFourierFeatures(num_scales, rff_sigma)
    return POSITION_ENCODINGS[name](num_scales, min_radius, max_radius)


ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leakyrelu": lambda: nn.LeakyReLU(negative_slope=0.2),  # the slope of the Space2Vec/CSP code
    "gelu": nn.GELU,
}
MLP_STYLES = ("plain", "space2vec")


class Space2VecLayer(nn.Module):
    """One layer of the Space2Vec/CSP feed-forward network: Linear (Xavier-uniform weight) ->
    activation -> dropout -> (+ input when the widths agree and ``skip``) -> (LayerNorm)."""

    def __init__(self, in_dim: int, out_dim: int, activation: str, dropout: float, layer_norm: bool, skip: bool):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        nn.init.xavier_uniform_(self.linear.weight)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.skip = skip and in_dim == out_dim
        self.layernorm = nn.LayerNorm(out_dim) if layer_norm else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.dropout(self.act(self.linear(x)))
        if self.skip:
            out = out + x
        return self.layernorm(out) if self.layernorm is not None else out


class LocationEncoder(nn.Module):
    """Position encoding -> MLP -> ``out_dim``.

    ``style="plain"`` (default): ``num_layers`` hidden layers Linear -> activation -> dropout, then
    a plain Linear output. ``style="space2vec"``: the feed-forward network of the Space2Vec/CSP
    code: ``num_layers`` hidden layers Linear -> activation -> dropout -> (+ input when the widths
    agree) -> LayerNorm, and an output layer Linear -> activation -> dropout (no LayerNorm), all
    weights Xavier-uniform. ``activation``: ``relu``, ``leakyrelu`` (slope 0.2) or ``gelu``.
    """

    def __init__(self, encoding: PositionEncoding, out_dim: int = 256, hidden_dim: int = 512, num_layers: int = 2,
                 dropout: float = 0.0, activation: str = "relu", style: str = "plain"):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"location encoder: num_layers must be >= 1, got {num_layers}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"location encoder: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if style not in MLP_STYLES:
            raise ConfigError(f"location encoder: style must be one of {list(MLP_STYLES)}, got {style!r}")
        self.encoding = encoding
        width = encoding.num_features
        if style == "plain":
            layers = []
            for _ in range(num_layers):
                layers += [nn.Linear(width, hidden_dim), ACTIVATIONS[activation](), nn.Dropout(dropout)]
                width = hidden_dim
            layers.append(nn.Linear(width, out_dim))
        else:
            layers = [Space2VecLayer(width, hidden_dim, activation, dropout, layer_norm=True, skip=True)]
            layers += [Space2VecLayer(hidden_dim, hidden_dim, activation, dropout, layer_norm=True, skip=True)
                       for _ in range(num_layers - 1)]
            layers.append(Space2VecLayer(hidden_dim, out_dim, activation, dropout, layer_norm=False, skip=False))
        self.mlp = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, lat: Tensor, lon: Tensor) -> Tensor:
        """(lat, lon) in degrees, shape (B,) -> (B, out_dim)."""
        return self.mlp(self.encoding(lat, lon))
