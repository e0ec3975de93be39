"""Ayush et al. geo-clusters: k-means of locations, its cache, the geo-classification loss."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from ssl_rs.data.dataset import GeoDataset
from ssl_rs.errors import ConfigError
from ssl_rs.geo import clusters
from ssl_rs.geo.ayush import AyushGeoClusters
from ssl_rs.registry import REGULARIZERS


def test_kmeans_centroids_are_fixed_points_of_nearest_centroid_assignment(tiny_world):
    ds = GeoDataset(tiny_world, split="train")
    centroids = clusters.fit_geo_clusters(ds.lat, ds.lon, num_clusters=6, seed=0)
    assert centroids.shape == (6, 3)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0)
    units = clusters.unit_vectors(ds.lat, ds.lon)
    ids = clusters.assign_clusters(units, centroids)
    assert set(ids.tolist()) == set(range(6))  # no empty cluster
    # the id a point gets by nearest centroid is the k-means cluster whose (normalised) mean it
    # belongs to: each centroid is the normalised mean of the points assigned to it
    for k in range(6):
        mean = units[ids == k].mean(axis=0)
        np.testing.assert_allclose(centroids[k], mean / np.linalg.norm(mean), atol=1e-9)


def test_num_clusters_clipped_to_distinct_locations(tiny_world, caplog):
    ds = GeoDataset(tiny_world, split=None, indices=[0, 1, 2])
    with caplog.at_level(logging.WARNING, logger="ssl_rs.geo.clusters"):
        centroids = clusters.load_or_fit_clusters(ds, num_clusters=100, seed=0, cache=False)
    assert centroids.shape == (3, 3)
    assert "K=100" in caplog.text and "K=3" in caplog.text
    # each of the 3 places is its own cluster
    assert sorted(clusters.assign_clusters(clusters.unit_vectors(ds.lat, ds.lon), centroids)) == [0, 1, 2]


def test_setup_builds_head_and_buffer(tiny_world):
    reg = AyushGeoClusters(num_clusters=5, cache=False)
    reg.setup(GeoDataset(tiny_world, split="train"), embed_dim=16)
    linear = reg.head[1]
    assert isinstance(reg.head[0], nn.ReLU)  # as in Ayush et al.'s geo classifier
    assert linear.weight.shape == (5, 16)
    assert reg.centroids.shape == (5, 3) and reg.centroids.dtype == torch.float64
    assert "centroids" in dict(reg.named_buffers())


def test_cache_is_written_once_and_reused(world_copy, monkeypatch):
    ds = GeoDataset(world_copy, split="train")
    first = AyushGeoClusters(num_clusters=5, seed=0)
    first.setup(ds, embed_dim=8)
    cached = list(world_copy.parent.glob(world_copy.name + ".geoclusters-K5-seed0-*.npz"))
    assert len(cached) == 1
    assert not list(world_copy.parent.glob("*.tmp"))
    mtime = cached[0].stat().st_mtime_ns

    def no_refit(*args, **kwargs):
        raise AssertionError("the clusters were refitted despite the cache")

    monkeypatch.setattr(clusters, "fit_geo_clusters", no_refit)
    second = AyushGeoClusters(num_clusters=5, seed=0)
    second.setup(GeoDataset(world_copy, split="train"), embed_dim=8)
    assert cached[0].stat().st_mtime_ns == mtime
    torch.testing.assert_close(second.centroids, first.centroids)
    monkeypatch.undo()

    # other training samples get their own cache file
    AyushGeoClusters(num_clusters=5, seed=0).setup(GeoDataset(world_copy, split="val"), embed_dim=8)
    assert len(list(world_copy.parent.glob(world_copy.name + ".geoclusters-K5-seed0-*.npz"))) == 2


def _unit(lat, lon):
    la, lo = math.radians(lat), math.radians(lon)
    return [math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)]


def test_exact_small_case():
    reg = AyushGeoClusters(num_clusters=3, cache=False)
    # centroids on the x, y and z axes: (0, 0), (0, 90), the north pole
    reg.centroids = torch.tensor([_unit(0, 0), _unit(0, 90), _unit(90, 0)], dtype=torch.float64)
    reg.head = nn.Sequential(nn.ReLU(), nn.Linear(2, 3))
    with torch.no_grad():
        reg.head[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        reg.head[1].bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
    batch = {"lat": torch.tensor([5.0, -3.0, 80.0], dtype=torch.float64),
             "lon": torch.tensor([10.0, 85.0, -120.0], dtype=torch.float64)}
    z = torch.tensor([[2.0, -1.0], [0.5, 1.5], [1.0, 3.0]])
    assert reg.cluster_ids(batch["lat"], batch["lon"]).tolist() == [0, 1, 2]
    loss = reg(z, batch)

    def ce(logits, target):
        return math.log(sum(math.exp(v) for v in logits)) - logits[target]

    relu = [[max(v, 0.0) for v in row] for row in z.tolist()]  # [[2, 0], [0.5, 1.5], [1, 3]]
    logits = [[r[0], r[1] + 0.5, r[0] - r[1] - 0.5] for r in relu]
    expected = sum(ce(lg, t) for lg, t in zip(logits, [0, 1, 2])) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # predictions: [2, 0.5, 1.5] -> 0 (right), [0.5, 2, -1.5] -> 1 (right), [1, 3.5, -2.5] -> 1 (wrong)
    assert reg.metrics["geo_acc"].item() == pytest.approx(2 / 3)


def test_loss_decreases_when_training(tiny_world):
    torch.manual_seed(0)
    ds = GeoDataset(tiny_world, split="train")
    reg = AyushGeoClusters(num_clusters=4, cache=False)
    reg.setup(ds, embed_dim=8)
    batch = {"lat": torch.from_numpy(ds.lat), "lon": torch.from_numpy(ds.lon)}
    z = torch.randn(len(ds), 8, requires_grad=True)
    opt = torch.optim.Adam([z, *reg.parameters()], lr=0.05)
    losses = []
    for _ in range(60):
        loss = reg(z, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert reg.metrics["geo_acc"].item() > 0.85


def test_registered_and_validated():
    assert isinstance(REGULARIZERS.create("ayush", num_clusters=7), AyushGeoClusters)
    assert AyushGeoClusters.needs == {"lat", "lon"}
    with pytest.raises(ConfigError):
        AyushGeoClusters(num_clusters=1)
    with pytest.raises(RuntimeError, match="setup"):
        AyushGeoClusters()(torch.zeros(2, 4), {"lat": torch.zeros(2), "lon": torch.zeros(2)})
