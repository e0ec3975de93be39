"""Haversine distances: known values, antipodes, argument order, pairwise matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_rs.errors import DataError
from ssl_rs.geodesy import EARTH_RADIUS_KM, haversine_km, pairwise_haversine_km

PARIS = (48.8566, 2.3522)
LONDON = (51.5074, -0.1278)


def test_paris_london():
    d = haversine_km(lat1=PARIS[0], lon1=PARIS[1], lat2=LONDON[0], lon2=LONDON[1])
    assert d.dtype == torch.float64
    assert d.item() == pytest.approx(343.5565, abs=1e-3)  # the haversine package gives 343.5565


def test_quarter_meridian_and_equator():
    quarter = math.pi / 2 * EARTH_RADIUS_KM
    assert haversine_km(0.0, 0.0, 90.0, 0.0).item() == pytest.approx(quarter, rel=1e-12)
    assert haversine_km(0.0, 0.0, 0.0, 90.0).item() == pytest.approx(quarter, rel=1e-12)
    assert haversine_km(-45.0, 10.0, 45.0, 10.0).item() == pytest.approx(quarter, rel=1e-12)


@pytest.mark.parametrize("a, b", [
    ((0.0, 0.0), (0.0, 180.0)), ((10.0, 20.0), (-10.0, -160.0)), ((90.0, 0.0), (-90.0, 0.0))
])
def test_antipodes(a, b):
    d = haversine_km(a[0], a[1], b[0], b[1])
    assert torch.isfinite(d)
    # asin is ill-conditioned at 1: the haversine formula is good to ~0.2 m at antipodes
    assert d.item() == pytest.approx(math.pi * EARTH_RADIUS_KM, rel=1e-7)


def test_argument_order_matters():
    # 60 N 0 E to 60 N 10 E is not 0 N 60 E to 10 N 60 E
    along_parallel = haversine_km(lat1=60.0, lon1=0.0, lat2=60.0, lon2=10.0).item()
    along_meridian = haversine_km(lat1=0.0, lon1=60.0, lat2=10.0, lon2=60.0).item()
    half_chord = math.cos(math.radians(60)) * math.sin(math.radians(5))
    assert along_parallel == pytest.approx(2 * EARTH_RADIUS_KM * math.asin(half_chord))
    assert along_meridian == pytest.approx(math.radians(10) * EARTH_RADIUS_KM)
    assert along_parallel < 0.6 * along_meridian


def test_pairwise_matrix():
    rng = np.random.default_rng(0)
    lat = torch.tensor(rng.uniform(-80, 80, 7))
    lon = torch.tensor(rng.uniform(-180, 180, 7))
    d = pairwise_haversine_km(lat, lon)
    assert d.shape == (7, 7)
    assert torch.equal(d, d.T)
    assert torch.all(d.diagonal() == 0)
    for i in range(7):
        for j in range(7):
            single = haversine_km(lat[i], lon[i], lat[j], lon[j]).item()
            assert d[i, j].item() == pytest.approx(single, rel=1e-12, abs=1e-9)
    assert d.max() <= math.pi * EARTH_RADIUS_KM + 1e-6


def test_dtypes():
    lat = torch.tensor([0.0, 1.0], dtype=torch.float32)
    assert pairwise_haversine_km(lat, lat).dtype == torch.float32
    assert pairwise_haversine_km(torch.tensor([0, 1]), torch.tensor([0, 1])).dtype == torch.float64


def test_matches_haversine_package():
    haversine = pytest.importorskip("haversine")
    rng = np.random.default_rng(1)
    pts = np.stack([rng.uniform(-85, 85, 20), rng.uniform(-180, 180, 20)], 1)
    ref = haversine.haversine_vector(pts, pts, comb=True)
    ours = pairwise_haversine_km(torch.tensor(pts[:, 0]), torch.tensor(pts[:, 1])).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-9)


def test_shape_errors():
    with pytest.raises(DataError):
        pairwise_haversine_km(torch.zeros(3), torch.zeros(4))
    with pytest.raises(DataError):
        pairwise_haversine_km(torch.zeros(3, 1), torch.zeros(3, 1))
