"""GeoBasic: exact small cases, latitude/longitude order, masks, the authors' reference values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_rs.errors import ConfigError
from ssl_rs.geodesy import EARTH_RADIUS_KM
from ssl_rs.geo.geobasic import GeoBasic
from ssl_rs.registry import REGULARIZERS

FIXTURE = Path(__file__).parent / "fixtures" / "georank_reference.npz"


def haversine_np(lat1, lon1, lat2, lon2):
    p1, l1, p2, l2 = map(np.radians, (lat1, lon1, lat2, lon2))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(a))


def geobasic_np(z, lat, lon, t=0.04, spacing=0.1, max_distance=1.0, margin=0.01, scale_km=8000.0):
    """Straight from the definition, pair by pair."""
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    errs = []
    for i in range(len(z)):
        for j in range(len(z)):
            if i == j:
                continue
            d = haversine_np(lat[i], lon[i], lat[j], lon[j]) / scale_km
            if d > max_distance:
                continue
            pred = (1 / t - zn[i] @ zn[j] / t) - spacing / t
            err = (pred - d / t) ** 2
            errs.append(err if err > margin / t**2 else 0.0)
    return float(np.mean(errs)) if errs else 0.0


def test_exact_small_case():
    # three points on the equator at 0, 5 and 40 degrees east (distance = R * angle), unit
    # embeddings at 0, 20 and 90 degrees, T = 0.04, spacing 0.1, margin 0.01 / T^2 = 6.25:
    #   pair (0, 1): ((1 - cos 20) - 0.1 - 555.97 / 8000) / T)^2 = 7.451  -> kept
    #   pair (0, 2): ((1 - cos 90) - 0.1 - 4447.8 / 8000) / T)^2 = 73.97  -> kept
    #   pair (1, 2): ((1 - cos 70) - 0.1 - 3891.8 / 8000) / T)^2 = 3.195  -> zeroed
    # each unordered pair appears twice among the six ordered pairs, all within 8000 km
    def err(angle, degrees):
        scaled_distance = math.radians(degrees) * EARTH_RADIUS_KM / 8000
        return (((1 - math.cos(math.radians(angle))) - 0.1 - scaled_distance) / 0.04) ** 2

    e01, e02, e12 = err(20, 5), err(90, 40), err(70, 35)
    assert (round(e01, 3), round(e02, 3), round(e12, 3)) == (7.451, 73.971, 3.195)
    expected = 2 * (e01 + e02) / 6
    a = np.radians([0.0, 20.0, 90.0])
    z = torch.tensor(np.stack([np.cos(a), np.sin(a)], 1) * np.array([[1.0], [3.0], [0.5]]))
    batch = {"lat": torch.zeros(3, dtype=torch.float64), "lon": torch.tensor([0.0, 5.0, 40.0], dtype=torch.float64)}
    assert GeoBasic()(z, batch).item() == pytest.approx(expected, rel=1e-12)
    assert geobasic_np(z.numpy(), batch["lat"].numpy(), batch["lon"].numpy()) == pytest.approx(expected, rel=1e-12)


def test_max_distance_and_margin():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((12, 6))
    lat = rng.uniform(-60, 60, 12)
    lon = rng.uniform(-180, 180, 12)
    batch = {"lat": torch.tensor(lat), "lon": torch.tensor(lon)}
    for kwargs in ({}, {"max_distance": 0.4}, {"margin": 0.0}, {"margin": 5.0}, {"spacing": 0.3, "temperature": 0.1}):
        module = GeoBasic(**kwargs)
        assert module(torch.tensor(z), batch).item() == pytest.approx(geobasic_np(z, lat, lon, **{
            {"temperature": "t"}.get(k, k): v for k, v in kwargs.items()}), rel=1e-10)
    module = GeoBasic(max_distance=0.4)
    module(torch.tensor(z), batch)
    assert 0.0 < module.metrics["pairs_in_range"].item() < 1.0


def test_latitude_longitude_order():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((6, 4))
    lat = np.array([10.0, 50.0, -20.0, 35.0, 60.0, -5.0])
    lon = np.array([60.0, 0.0, 30.0, -70.0, 100.0, 15.0])
    module = GeoBasic()
    right = module(torch.tensor(z), {"lat": torch.tensor(lat), "lon": torch.tensor(lon)}).item()
    swapped = module(torch.tensor(z), {"lat": torch.tensor(lon), "lon": torch.tensor(lat)}).item()
    assert right == pytest.approx(geobasic_np(z, lat, lon), rel=1e-10)
    assert swapped == pytest.approx(geobasic_np(z, lon, lat), rel=1e-10)
    assert abs(right - swapped) > 1e-3 * right


def test_no_pairs_in_range_gives_zero():
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    batch = {"lat": torch.tensor([0.0, 0.0, 0.0, 0.0]), "lon": torch.tensor([0.0, 90.0, 180.0, -90.0])}
    loss = GeoBasic(max_distance=0.5)(z, batch)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))


def test_matches_authors_implementation():
    data = np.load(FIXTURE)
    cases = [c for c in json.loads(str(data["meta"]))["cases"] if c["loss"] == "geobasic"]
    assert cases
    for case in cases:
        name = case["name"]
        zt = torch.tensor(data[f"{name}.z"], requires_grad=True)
        batch = {"lat": torch.tensor(data[f"{name}.lat"]), "lon": torch.tensor(data[f"{name}.lon"])}
        loss = GeoBasic(**case["params"])(zt, batch)
        loss.backward()
        # the authors rank float32 distances: agreement to ~1e-8, checked at 1e-5
        assert loss.item() == pytest.approx(float(data[f"{name}.loss"]), rel=1e-5), name
        ref = data[f"{name}.grad"]
        np.testing.assert_allclose(zt.grad.numpy(), ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max(), err_msg=name)


def test_gradients_finite_and_dtype():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = GeoBasic()(z, {"lat": torch.tensor([1.0, 1.0, 2.0]), "lon": torch.tensor([3.0, 3.0, 3.0])})
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(z.grad).all()


def test_registry_and_arguments():
    module = REGULARIZERS.create("geobasic", spacing=0.2)
    assert isinstance(module, GeoBasic) and module.spacing == 0.2
    d = GeoBasic()
    assert (d.temperature, d.spacing, d.max_distance, d.margin, d.scale_km) == (0.04, 0.1, 1.0, 0.01, 8000.0)
    for bad in ({"temperature": 0.0}, {"scale_km": -1.0}, {"max_distance": -0.1}, {"margin": -1.0}):
        with pytest.raises(ConfigError):
            GeoBasic(**bad)
