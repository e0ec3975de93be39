"""GeoRank: a hand-worked case, the authors' reference values, masks, invariances, gradients."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_rs.errors import ConfigError
from ssl_rs.geodesy import EARTH_RADIUS_KM
from ssl_rs.geo.georank import GeoRank, off_diagonal, unit_rank_norm
from ssl_rs.registry import REGULARIZERS

FIXTURE = Path(__file__).parent / "fixtures" / "georank_reference.npz"


def reference_cases(kind: str):
    data = np.load(FIXTURE)
    meta = json.loads(str(data["meta"]))
    for case in meta["cases"]:
        if case["loss"] == kind:
            name = case["name"]
            yield case, {k: data[f"{name}.{k}"] for k in ("z", "lat", "lon", "loss", "grad")}


def georank_value_and_grad(module, z: np.ndarray, lat: np.ndarray, lon: np.ndarray):
    zt = torch.tensor(z, requires_grad=True)
    loss = module(zt, {"lat": torch.tensor(lat), "lon": torch.tensor(lon)})
    loss.backward()
    return loss.item(), zt.grad.numpy()


# --- a case worked out by hand ---------------------------------------------------------------
# Four points on the equator at 0, 1, 3 and 7 degrees east; distance ranks per row (nearest = 1,
# other samples in index order): row 0 (1, 2, 3), row 1 (1, 2, 3), row 2 (2, 1, 3), row 3 (3, 2, 1).
# Unit embeddings at 0, 50, 20 and 90 degrees; similarity ranks (most similar = 1): row 0
# (2, 1, 3), row 1 (3, 1, 2), row 2 (1, 2, 3), row 3 (3, 1, 2). Every rank row has norm sqrt(14).
HAND_LON = [0.0, 1.0, 3.0, 7.0]
HAND_ANGLES = [0.0, 50.0, 20.0, 90.0]
HAND_X = np.array([[2, 1, 3], [3, 1, 2], [1, 2, 3], [3, 1, 2]], dtype=float)
HAND_Y = np.array([[1, 2, 3], [1, 2, 3], [2, 1, 3], [3, 2, 1]], dtype=float)
# distances in km, other samples in index order
HAND_D = np.radians([[1, 3, 7], [1, 2, 6], [3, 2, 4], [7, 6, 4]]) * EARTH_RADIUS_KM


def hand_batch(scale_norms: bool = True):
    a = np.radians(HAND_ANGLES)
    norms = np.array([1.0, 2.5, 0.3, 4.0]) if scale_norms else np.ones(4)
    z = torch.tensor(np.stack([np.cos(a), np.sin(a)], 1) * norms[:, None])
    return z, {"lat": torch.zeros(4, dtype=torch.float64), "lon": torch.tensor(HAND_LON, dtype=torch.float64)}


def hand_loss(margin: float, error: str, in_range: np.ndarray) -> float:
    s = math.sqrt(14.0)
    diff = HAND_X / s - HAND_Y / s
    err = diff**2 if error == "squared" else np.abs(diff)
    thr = (margin / s) ** 2 if error == "squared" else margin / s
    kept = np.where(err > thr * (1 + 1e-6), err, 0.0)[in_range]
    return kept.mean() * s if kept.size else 0.0


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, math.sqrt(14) / 42),  # only row 1's two-rank error survives the one-rank margin
        ({"margin": 0.0}, 1 / math.sqrt(14)),
        ({"error": "absolute"}, 1 / 6),
        ({"margin": 0.0, "max_km": 400.0}, 9 * math.sqrt(14) / 84),
        ({"margin": 0.0, "min_km": 300.0}, 5 * math.sqrt(14) / 112),
        ({"margin": 3.0}, 0.0),
    ],
)
def test_hand_worked_case(kwargs, expected):
    z, batch = hand_batch()
    module = GeoRank(**kwargs)
    in_range = (HAND_D >= kwargs.get("min_km", 0.0)) & (HAND_D <= kwargs.get("max_km", 3000.0))
    assert hand_loss(kwargs.get("margin", 1.0), kwargs.get("error", "squared"), in_range) == pytest.approx(expected)
    assert module(z, batch).item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_hand_case_ranks_are_the_hand_ranks():
    z, batch = hand_batch(scale_norms=False)
    sim = off_diagonal(z @ z.T).numpy()
    np.testing.assert_array_equal(np.argsort(np.argsort(-sim, 1), 1) + 1, HAND_X)
    from ssl_rs.geodesy import pairwise_haversine_km

    d = off_diagonal(pairwise_haversine_km(batch["lat"], batch["lon"])).numpy()
    np.testing.assert_allclose(d, HAND_D, rtol=1e-12)
    np.testing.assert_array_equal(np.argsort(np.argsort(d, 1), 1) + 1, HAND_Y)


def test_hard_rank_regime_has_zero_gradient():
    z, batch = hand_batch()
    z.requires_grad_(True)
    GeoRank()(z, batch).backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


# --- the authors' implementation --------------------------------------------------------------
@pytest.mark.parametrize("case", [c for c, _ in reference_cases("georank")], ids=lambda c: c["name"])
def test_matches_authors_implementation(case):
    arrays = next(a for c, a in reference_cases("georank") if c["name"] == case["name"])
    loss, grad = georank_value_and_grad(GeoRank(**case["params"]), arrays["z"], arrays["lat"], arrays["lon"])
    # float64 on both sides: equal up to rounding (~1e-14 here; near-ties amplify the rounding
    # of the similarities by 1 / eps)
    assert loss == pytest.approx(float(arrays["loss"]), rel=1e-12)
    ref = arrays["grad"]
    np.testing.assert_allclose(grad, ref, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(ref).max()))


def test_reference_covers_ties_and_nonzero_gradients():
    names = {c["name"]: a for c, a in reference_cases("georank")}
    assert np.abs(names["georank_b16_near_ties"]["grad"]).max() > 1.0
    assert np.abs(names["georank_b32_strength1"]["grad"]).max() > 0.0


# --- invariances, masks, gradients ------------------------------------------------------------
def random_batch(b: int, seed: int, dim: int = 16, ties: bool = False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, dim, generator=g, dtype=torch.float64)
    if ties:
        z[1] = z[0]  # exact duplicate embedding
        z[3] = z[2] + 1e-7
    lat = 35 + 30 * torch.rand(b, generator=g, dtype=torch.float64)
    lon = -10 + 40 * torch.rand(b, generator=g, dtype=torch.float64)
    return z, lat, lon


@pytest.mark.parametrize("strength", [1e-3, 0.05])
def test_permuting_the_batch_changes_nothing(strength):
    z, lat, lon = random_batch(32, 0, ties=True)
    module = GeoRank(regularization_strength=strength)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    z1 = z.clone().requires_grad_(True)
    z2 = z[perm].clone().requires_grad_(True)
    l1 = module(z1, {"lat": lat, "lon": lon})
    l2 = module(z2, {"lat": lat[perm], "lon": lon[perm]})
    l1.backward()
    l2.backward()
    assert l1.item() == pytest.approx(l2.item(), rel=1e-12)
    torch.testing.assert_close(z1.grad[perm], z2.grad, rtol=1e-9, atol=1e-12)


def test_invariant_to_embedding_norms():
    z, lat, lon = random_batch(16, 2)
    module = GeoRank(regularization_strength=0.05)
    scale = torch.linspace(0.1, 10, 16, dtype=torch.float64)[:, None]
    batch = {"lat": lat, "lon": lon}
    assert module(z, batch).item() == pytest.approx(module(z * scale, batch).item(), rel=1e-12)


def test_exact_ties_and_b3_have_finite_gradients():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    batch = {"lat": torch.tensor([10.0, 10.0, 11.0]), "lon": torch.tensor([5.0, 5.0, 5.0])}
    no_margin = {"margin": 0.0}
    for kwargs in ({}, no_margin, {**no_margin, "regularization_strength": 1.0}, {**no_margin, "error": "absolute"}):
        z.grad = None
        loss = GeoRank(**kwargs)(z, batch)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    z, lat, lon = random_batch(24, 3, ties=True)
    lat[5], lon[5] = lat[4], lon[4]  # two samples at one place
    z.requires_grad_(True)
    loss = GeoRank()(z, {"lat": lat, "lon": lon})
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0  # the near-duplicates pull


def test_gradcheck_whole_loss():
    # margin 0 keeps the loss continuous; a large strength makes every soft rank move
    z, lat, lon = random_batch(5, 4, dim=3)
    module = GeoRank(regularization_strength=0.5, margin=0.0)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: module(v, {"lat": lat, "lon": lon}), (z,), eps=1e-6, atol=1e-5)


def test_pairs_outside_the_band_give_zero_loss():
    z, lat, lon = random_batch(8, 5)
    z.requires_grad_(True)
    module = GeoRank(min_km=20000.0, max_km=30000.0)
    loss = module(z, {"lat": lat, "lon": lon})
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))
    assert module.metrics["pairs_in_range"].item() == 0.0


def test_band_restricts_the_pairs():
    z, lat, lon = random_batch(32, 6)
    batch = {"lat": lat, "lon": lon}
    full = GeoRank(margin=0.0)(z, batch).item()
    near = GeoRank(margin=0.0, max_km=800.0)(z, batch).item()
    assert near != pytest.approx(full)
    module = GeoRank(margin=0.0, max_km=800.0)
    module(z, batch)
    assert 0.0 < module.metrics["pairs_in_range"].item() < 1.0


def test_one_rank_errors_sit_inside_the_margin():
    # hard ranks with exactly one rank of error everywhere: all zeroed despite rounding
    z, batch = hand_batch()
    module = GeoRank(margin=1.0, margin_rtol=1e-6)
    module(z, batch)
    assert module.metrics["pairs_penalised"].item() == pytest.approx(1 / 12)


def test_dtypes_sizes_and_metrics():
    z, lat, lon = random_batch(6, 7)
    batch = {"lat": lat.float(), "lon": lon.float()}
    loss = GeoRank()(z.float(), batch)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    one = torch.randn(1, 4, requires_grad=True)
    assert GeoRank()(one, {"lat": torch.zeros(1), "lon": torch.zeros(1)}).item() == 0.0
    module = GeoRank()
    module(z, {"lat": lat, "lon": lon})
    assert set(module.metrics) == {"pairs_in_range", "pairs_penalised"}


def test_registry_and_needs():
    module = REGULARIZERS.create("georank", temperature=0.1, max_km=500.0)
    assert isinstance(module, GeoRank) and module.temperature == 0.1 and module.max_km == 500.0
    d = GeoRank()
    assert (d.temperature, d.regularization_strength, d.min_km, d.max_km, d.margin, d.error, d.margin_rtol) == (
        0.04, 0.001, 0.0, 3000.0, 1.0, "squared", 1e-6)
    assert (d.soft_rank_backend, d.gather) == ("auto", False)
    with pytest.raises(ConfigError):
        d.check_needs(["image"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0.0},
        {"regularization_strength": -1.0},
        {"min_km": 10.0, "max_km": 5.0},
        {"margin": -1.0},
        {"error": "huber"},
        {"margin_rtol": -1e-6},
        {"soft_rank_backend": "numba"},
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        GeoRank(**kwargs)


@pytest.mark.parametrize("strength", [1e-3, 0.01, 0.05, 1.0])
@pytest.mark.parametrize("b", [48, 256])
def test_fixed_shape_path_gives_the_same_loss(monkeypatch, strength, b):
    # the GPU path (fixed-shape soft rank, torch stable sort of the distances) run on the CPU
    # against the default CPU path (numpy solver and sort)
    import ssl_rs.geo.georank as georank_module
    import ssl_rs.geo.soft_rank as soft_rank_module

    z, lat, lon = random_batch(b, 9, ties=True)
    results = []
    for fixed in (False, True):
        with monkeypatch.context() as patch:
            if fixed:
                patch.setattr(soft_rank_module, "_use_fixed_shape", lambda device: True)
                patch.setattr(georank_module, "rank_order", lambda d: torch.argsort(d, dim=1, stable=True))
            module = GeoRank(regularization_strength=strength, soft_rank_backend="torch", margin=0.5)
            zt = z.clone().requires_grad_(True)
            loss = module(zt, {"lat": lat, "lon": lon})
            loss.backward()
            results.append((loss.item(), zt.grad))
    assert results[0][1].abs().max() > 0
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-9 * results[1][1].abs().max().item())


def test_rank_order_is_a_stable_argsort():
    g = torch.Generator().manual_seed(3)
    d = torch.rand(40, 30, generator=g, dtype=torch.float64)
    d[::3, 5] = d[::3, 17]  # exact ties in some rows, as samples at one place give
    d[7] = 1.0
    from ssl_rs.geo.georank import rank_order

    assert torch.equal(rank_order(d), torch.argsort(d, dim=1, stable=True))


def test_distance_geometry_is_computed_once_per_batch(monkeypatch):
    import ssl_rs.geo.georank as georank_module

    calls = []
    real = georank_module.rank_order
    monkeypatch.setattr(georank_module, "rank_order", lambda d: calls.append(1) or real(d))
    z, lat, lon = random_batch(16, 11)
    module = GeoRank(regularization_strength=0.05, margin=0.0)
    batch = {"lat": lat, "lon": lon}
    first = module(z, batch).item()
    assert module(z * 2.0 + 0.1, batch).item() != first  # another embedding, the same batch
    assert len(calls) == 1
    lat[0] += 1.0  # modified in place: computed again
    changed = module(z, batch).item()
    assert len(calls) == 2 and changed != first
    fresh = module(z, {"lat": lat.clone(), "lon": lon.clone()}).item()  # a new batch
    assert len(calls) == 3 and fresh == changed
    import pickle

    assert pickle.loads(pickle.dumps(module)).temperature == module.temperature  # the cache does not pickle


@pytest.mark.cuda
def test_cuda_matches_cpu_without_host_sync():
    z, lat, lon = random_batch(64, 8, ties=True)
    module = GeoRank(regularization_strength=0.01)
    zc = z.cuda().requires_grad_(True)
    batch = {"lat": lat.cuda(), "lon": lon.cuda()}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_cuda = module(zc, batch)
        loss_cuda.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    z.requires_grad_(True)
    loss_cpu = module(z, {"lat": lat, "lon": lon})
    loss_cpu.backward()
    assert loss_cuda.item() == pytest.approx(loss_cpu.item(), rel=1e-9)
    torch.testing.assert_close(zc.grad.cpu(), z.grad, rtol=1e-7, atol=1e-9)


def test_unit_rank_norm():
    for b in (2, 3, 10, 513):
        assert unit_rank_norm(b) == pytest.approx(float(np.linalg.norm(np.arange(1, b))), rel=1e-14)
