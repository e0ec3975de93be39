"""Points on the sphere as 3-D unit vectors: one implementation (ssl_rs.geodesy), used by the
synthetic world, the geo-clusters and the Ayush regularizer, numpy and torch alike."""

from __future__ import annotations

import numpy as np
import torch

from ssl_rs import geodesy
from ssl_rs.data import synth
from ssl_rs.geo import ayush, clusters


def test_known_points_and_unit_norm():
    lat = np.array([0.0, 0.0, 90.0, -90.0, 0.0, 45.0])
    lon = np.array([0.0, 90.0, 0.0, 10.0, 180.0, -135.0])
    u = geodesy.unit_vectors(lat, lon)
    assert u.shape == (6, 3) and u.dtype == np.float64
    np.testing.assert_allclose(u[:5], [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1], [-1, 0, 0]], atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(u[5], [-0.5, -0.5, np.sqrt(0.5)], atol=1e-15)


def test_numpy_and_torch_agree_and_torch_keeps_its_dtype():
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-90, 90, 100), rng.uniform(-180, 180, 100)
    u = geodesy.unit_vectors(lat, lon)
    t = geodesy.unit_vectors_torch(torch.from_numpy(lat), torch.from_numpy(lon))
    assert t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), u, rtol=0, atol=1e-15)
    t32 = geodesy.unit_vectors_torch(torch.from_numpy(lat).float(), torch.from_numpy(lon).float())
    assert t32.dtype == torch.float32
    np.testing.assert_allclose(t32.numpy(), u, atol=1e-6)


def test_one_implementation():
    assert synth.unit_vectors is geodesy.unit_vectors
    assert clusters.unit_vectors is geodesy.unit_vectors
    assert ayush.unit_vectors_torch is geodesy.unit_vectors_torch
    assert not hasattr(synth, "_unit_vectors")
