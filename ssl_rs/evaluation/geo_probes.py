"""Geo probes: what geography-aware pretraining claims to learn, measured on frozen features.

Two numbers no label-based protocol gives:

- :func:`similarity_distance_correlation`: Spearman's rank correlation between the cosine
  similarity of two samples' features and their great-circle distance, over held-out pairs,
  overall and within distance bands. A feature space that "separates softly by geolocation"
  (the GeoRank paper's t-SNE figure) has a clearly negative correlation: nearer places, more
  similar features. Within a band the correlation says whether the ordering also holds at that
  scale (e.g. among pairs 50-200 km apart).
- :func:`location_probe`: a small regressor from frozen features to the place's unit vector on
  the sphere (x, y, z), trained on the train split, scored on the held-out split by the
  great-circle error of its prediction: median and mean km, and the share within 100, 500 and
  2,500 km. Regressing the unit vector, not (lat, lon), has no seam at the antimeridian and no
  singularity at the poles.

Both are deterministic for a given ``seed`` (private generators; the global RNG is untouched).
Correlations are in [-1, 1]; the location probe reports km and percent.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..geodesy import EARTH_RADIUS_KM, haversine_km, unit_vectors

Device = Union[str, torch.device, None]

#: edges (km) of the distance bands the correlation is also reported in; the last band is open
DISTANCE_BANDS_KM = (0.0, 50.0, 200.0, 1000.0, 5000.0)
#: the location probe's "within" thresholds (km)
WITHIN_KM = (100.0, 500.0, 2500.0)
#: below this many pairs a band's correlation is not reported (too noisy to compare runs)
MIN_BAND_PAIRS = 30


def _check(features, lat, lon, name: str):
    x = torch.as_tensor(features)
    if x.ndim != 2 or x.shape[0] < 2 or not x.is_floating_point():
        raise ConfigError(f"{name}: expected (N >= 2, D) floating-point features, got {tuple(x.shape)} {x.dtype}")
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    if lat.shape[0] != x.shape[0] or lon.shape[0] != x.shape[0]:
        raise ConfigError(f"{name}: {x.shape[0]} feature rows but {lat.shape[0]} lat and {lon.shape[0]} lon values")
    if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
        raise ConfigError(f"{name}: lat/lon: not finite")
    return x, lat, lon


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank (Spearman's convention)."""
    from scipy.stats import rankdata

    return rankdata(values, method="average")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks (NaN when either is constant)."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def sample_pairs(n: int, max_pairs: int, seed: int) -> np.ndarray:
    """(P, 2) index pairs i < j: every pair when there are at most ``max_pairs``, else
    ``max_pairs`` pairs drawn uniformly among them (with replacement: at that many pairs a
    repeat changes nothing measurable, and drawing stays O(P))."""
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], axis=1)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = (i + rng.integers(1, n, size=max_pairs)) % n  # any other sample, uniformly
    return np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)


def similarity_distance_correlation(
    features, lat, lon, *, max_pairs: int = 200_000, bands_km: Sequence[float] = DISTANCE_BANDS_KM, seed: int = 0,
) -> Dict[str, float]:
    """Spearman's rho between cosine similarity and great-circle distance over pairs of samples.

    Returns ``spearman`` (all pairs), ``spearman_<lo>-<hi>km`` for each distance band with at
    least :data:`MIN_BAND_PAIRS` pairs (``spearman_<lo>km+`` for the last, open band), ``pairs``
    and the median pair distance ``median_pair_km``."""
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise ConfigError(f"max_pairs: must be a positive integer, got {max_pairs!r}")
    edges = [float(b) for b in bands_km]
    if any(b < 0 for b in edges) or edges != sorted(edges) or len(set(edges)) != len(edges):
        raise ConfigError(f"bands_km: must be increasing distances >= 0, got {list(bands_km)}")
    x, lat, lon = _check(features, lat, lon, "similarity_distance_correlation")
    pairs = sample_pairs(x.shape[0], max_pairs, seed)
    z = F.normalize(x.detach().double().cpu(), dim=1)  # features may come from a GPU
    i, j = torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])
    similarity = (z[i] * z[j]).sum(dim=1).numpy()
    distance = haversine_km(lat[pairs[:, 0]], lon[pairs[:, 0]], lat[pairs[:, 1]], lon[pairs[:, 1]]).numpy()
    out = {"spearman": spearman(similarity, distance), "pairs": float(len(pairs)),
           "median_pair_km": float(np.median(distance))}
    for k, lo in enumerate(edges):
        hi = edges[k + 1] if k + 1 < len(edges) else math.inf
        inside = (distance >= lo) & (distance < hi)
        if inside.sum() >= MIN_BAND_PAIRS:
            name = f"spearman_{lo:g}-{hi:g}km" if math.isfinite(hi) else f"spearman_{lo:g}km+"
            out[name] = spearman(similarity[inside], distance[inside])
    return out


def latlon_of_vectors(vectors: Tensor) -> tuple:
    """(lat, lon) in degrees of (N, 3) vectors (normalised first)."""
    v = F.normalize(vectors.double(), dim=1)
    lat = torch.rad2deg(torch.asin(v[:, 2].clamp(-1.0, 1.0)))
    lon = torch.rad2deg(torch.atan2(v[:, 1], v[:, 0]))
    return lat, lon


def location_probe(
    x_train, lat_train, lon_train, x_test, lat_test, lon_test, *, hidden_dim: int = 256, epochs: int = 100,
    lr: float = 1e-3, weight_decay: float = 1e-2, batch_size: int = 256, seed: int = 0, device: Device = None,
) -> Dict[str, float]:
    """Train a one-hidden-layer MLP (standardised features -> the place's unit 3-D vector,
    standardised per component; mean squared error; AdamW with a cosine schedule) on the train
    samples and score the test samples by the great-circle error of the predicted direction.

    Returns ``median_km``, ``mean_km`` and ``within_<d>km`` (percent) for d in :data:`WITHIN_KM`."""
    for name, value, low in (("hidden_dim", hidden_dim, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"location_probe: {name} must be an integer >= {low}, got {value!r}")
    xtr, lat_tr, lon_tr = _check(x_train, lat_train, lon_train, "location_probe: train")
    xte, lat_te, lon_te = _check(x_test, lat_test, lon_test, "location_probe: test")
    if xtr.shape[1] != xte.shape[1]:
        raise ConfigError(f"location_probe: train features have {xtr.shape[1]} dims, test {xte.shape[1]}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    mean, std = xtr.float().mean(0), xtr.float().std(0).clamp_min(1e-6)
    xtr = ((xtr.float() - mean) / std).to(dev)
    xte = ((xte.float() - mean) / std).to(dev)
    target = torch.from_numpy(unit_vectors(lat_tr, lon_tr)).float().to(dev)
    # standardised targets: the places of a regional dataset differ by little on the sphere, and
    # unscaled they would leave the regressor's error dominated by its bias
    t_mean, t_std = target.mean(0), target.std(0).clamp_min(1e-6)
    target = (target - t_mean) / t_std

    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(xtr.shape[1], hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 3))
    with torch.no_grad():  # initialised from the private generator, not the global RNG
        for p in model.parameters():
            bound = 1.0 / math.sqrt(p.shape[-1]) if p.ndim > 1 else 0.01
            p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=g))
    model = model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = xtr.shape[0]
    steps = epochs * max(1, math.ceil(n / batch_size))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).to(dev)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            loss = F.mse_loss(model(xtr[rows]), target[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        pred_lat, pred_lon = latlon_of_vectors((model(xte) * t_std + t_mean).cpu())
    error = haversine_km(pred_lat, pred_lon, torch.from_numpy(lat_te), torch.from_numpy(lon_te)).numpy()
    out = {"median_km": float(np.median(error)), "mean_km": float(error.mean())}
    for d in WITHIN_KM:
        out[f"within_{d:g}km"] = 100.0 * float((error <= d).mean())
    return out


def geo_probes(x_train, lat_train, lon_train, x_test, lat_test, lon_test, *, seed: int = 0,
               device: Device = None, max_pairs: int = 200_000) -> Dict[str, float]:
    """Both probes: the correlation over held-out pairs (``corr_*``) and the location probe
    (``loc_*``), one flat metric dict as the harness reports it."""
    corr = similarity_distance_correlation(x_test, lat_test, lon_test, max_pairs=max_pairs, seed=seed)
    loc = location_probe(x_train, lat_train, lon_train, x_test, lat_test, lon_test, seed=seed, device=device)
    return {**{f"corr_{k}": v for k, v in corr.items()}, **{f"loc_{k}": v for k, v in loc.items()}}


#: the largest possible great-circle distance, for sanity checks of probe errors
HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM
