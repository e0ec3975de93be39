"""Tile2Vec in-batch triplets: exact values, masks, gradients, and triplets with the geo sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_rs.errors import ConfigError
from ssl_rs.geodesy import pairwise_haversine_km
from ssl_rs.geo.tile2vec import Tile2VecTriplets
from ssl_rs.registry import REGULARIZERS

# P0 (0, 0); P1 ~10 km east of P0; P2 ~33 km east of P0 and ~23 km of P1 (neither near nor far
# from anyone); P3 ~1100 km north. P0 and P1 have exactly one neighbour (each other) and exactly
# one distant sample (P3); P2 and P3 have no neighbour.
LAT = [0.0, 0.0, 0.0, 10.0]
LON = [0.0, 0.09, 0.3, 0.0]
Z = [[0.0, 0.0], [3.0, 0.0], [7.0, 7.0], [1.0, 0.0]]


def _batch(lat, lon):
    return {"lat": torch.tensor(lat, dtype=torch.float64), "lon": torch.tensor(lon, dtype=torch.float64)}


def test_haversine_matrix():
    d = pairwise_haversine_km(*_batch(LAT, LON).values())
    assert d[0, 1].item() == pytest.approx(10.008, abs=0.01)  # 0.09 deg of the equator
    assert d[0, 2].item() == pytest.approx(33.36, abs=0.01)
    assert d[0, 3].item() == pytest.approx(1111.95, abs=0.1)
    torch.testing.assert_close(d, d.T)
    assert torch.all(d.diagonal() == 0)


def test_exact_small_case():
    reg = Tile2VecTriplets(neighbor_km=15.0, distant_km=50.0, margin=1.0)
    z = torch.tensor(Z, requires_grad=True)
    loss = reg(z, _batch(LAT, LON))
    # P0: ||z0-z1|| = 3, ||z0-z3|| = 1 -> 3 - 1 + 1 = 3; P1: 3, ||z1-z3|| = 2 -> 2
    assert loss.item() == pytest.approx((3.0 + 2.0) / 2)
    assert reg.metrics["triplet_fraction"].item() == pytest.approx(0.5)
    loss.backward()
    assert torch.all(z.grad[2] == 0)  # P2 takes part in no triplet


def test_exact_small_case_with_l2_penalty():
    reg = Tile2VecTriplets(margin=1.0, l2_weight=0.1)
    loss = reg(torch.tensor(Z), _batch(LAT, LON))
    # Frobenius norms over the two triplets: anchors (z0, z1) -> 3, neighbours (z1, z0) -> 3,
    # distants (z3, z3) -> sqrt(2)
    assert loss.item() == pytest.approx(2.5 + 0.1 * (3 + 3 + math.sqrt(2)), rel=1e-6)


def test_margin_satisfied_gives_zero():
    reg = Tile2VecTriplets(margin=0.5)
    z = torch.tensor([[0.0, 0.0], [0.1, 0.0], [7.0, 7.0], [5.0, 0.0]])
    assert reg(z, _batch(LAT, LON)).item() == 0.0


def test_no_triplet_gives_zero_loss_connected_to_z():
    reg = Tile2VecTriplets()
    z = torch.randn(3, 4, requires_grad=True)
    loss = reg(z, _batch([0.0, 20.0, 40.0], [0.0, 0.0, 0.0]))  # nobody has a neighbour
    assert loss.item() == 0.0
    assert reg.metrics["triplet_fraction"].item() == 0.0
    loss.backward()
    assert z.grad is not None and torch.all(z.grad == 0)


def test_identical_points_and_embeddings_keep_gradients_finite():
    # two dates of one place with the same embedding: zero distances must not give NaN
    reg = Tile2VecTriplets()
    z = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 2.0]], requires_grad=True)
    loss = reg(z, _batch([0.0, 0.0, 30.0], [0.0, 0.0, 0.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(z.grad))
    assert reg.metrics["triplet_fraction"].item() == pytest.approx(2 / 3)


def test_invariant_to_permuting_the_batch():
    reg = Tile2VecTriplets()
    z = torch.tensor(Z)
    batch = _batch(LAT, LON)
    reference = reg(z, batch).item()
    for perm in ([3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]):
        p = torch.tensor(perm)
        assert reg(z[p], {k: v[p] for k, v in batch.items()}).item() == pytest.approx(reference)
        assert reg.metrics["triplet_fraction"].item() == pytest.approx(0.5)


def test_random_choices_reproducible_under_manual_seed():
    # a cluster of 6 points within a few km and 6 far away: many valid choices per anchor
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.uniform(0, 0.05, 6), rng.uniform(20, 60, 6)])
    lon = np.concatenate([rng.uniform(0, 0.05, 6), rng.uniform(20, 60, 6)])
    batch = _batch(lat.tolist(), lon.tolist())
    z = torch.randn(12, 8, generator=torch.Generator().manual_seed(1))
    reg = Tile2VecTriplets(margin=5.0)
    values = []
    for seed in (3, 3, 4, 5, 6):
        torch.manual_seed(seed)
        values.append(reg(z, batch).item())
    assert values[0] == values[1]
    assert len(set(values[1:])) > 1  # the choices are random
    assert reg.metrics["triplet_fraction"].item() == pytest.approx(0.5)


def test_validation_and_registry():
    with pytest.raises(ConfigError, match="neighbor_km < distant_km"):
        Tile2VecTriplets(neighbor_km=50.0, distant_km=50.0)
    with pytest.raises(ConfigError):
        Tile2VecTriplets(margin=-1.0)
    reg = REGULARIZERS.create("tile2vec", neighbor_km=5.0, distant_km=20.0)
    assert isinstance(reg, Tile2VecTriplets)
    assert reg.needs == {"lat", "lon"}


def test_with_geo_sampler_most_samples_find_triplets(tmp_path):
    from ssl_rs.data.dataset import GeoDataset
    from ssl_rs.data.synth import synthesize
    from ssl_rs.data.samplers import GeoNeighborBatchSampler

    path = synthesize(tmp_path / "world.h5", n=400, size=8, seed=2, num_classes=4, progress=False)
    ds = GeoDataset(path)
    lat, lon = torch.from_numpy(ds.lat), torch.from_numpy(ds.lon)
    sampler = GeoNeighborBatchSampler(ds.lat, ds.lon, batch_size=32, neighbor_km=15.0, seed=0)
    reg = Tile2VecTriplets(neighbor_km=15.0)
    torch.manual_seed(0)

    def fraction(batches):
        found = []
        for b in batches:
            b = torch.as_tensor(b)
            reg(torch.randn(len(b), 8), {"lat": lat[b], "lon": lon[b]})
            found.append(reg.metrics["triplet_fraction"].item())
        return float(np.mean(found))

    with_sampler = fraction(sampler)
    random_batches = fraction(torch.randperm(len(ds)).split(32))
    assert with_sampler > 0.5
    assert with_sampler >= 0.9 * sampler.neighbor_fraction  # nearly every anchor with a neighbour gets one
    assert with_sampler > 3 * random_batches
