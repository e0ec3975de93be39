"""Soft ranks: exactness against a plain float64 PAV, limits, ties, gradients, both solvers,
the backends (torchsort's tests run where it is installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ssl_rs.geo.soft_rank as soft_rank_module
from ssl_rs.errors import ConfigError
from ssl_rs.geo.soft_rank import (
    _segment_mean,
    hard_rank,
    isotonic_blocks,
    isotonic_decreasing,
    soft_rank,
    torchsort_available,
)

needs_torchsort = pytest.mark.skipif(not torchsort_available(), reason="torchsort is not installed")


def pav_decreasing(y: np.ndarray) -> np.ndarray:
    """argmin_{v_1 >= ... >= v_n} ||v - y||^2 by the textbook stack PAV (equal means pooled)."""
    sums, counts = [], []
    for value in y:
        sums.append(float(value))
        counts.append(1)
        while len(sums) > 1 and sums[-2] / counts[-2] <= sums[-1] / counts[-1]:
            s, c = sums.pop(), counts.pop()
            sums[-1] += s
            counts[-1] += c
    return np.concatenate([np.full(c, s / c) for s, c in zip(sums, counts)])


def soft_rank_reference(values: np.ndarray, eps: float, direction: str = "ascending") -> np.ndarray:
    """Blondel et al.'s L2 soft rank: projection of values/eps onto the permutahedron, via PAV."""
    sign = 1.0 if direction == "ascending" else -1.0
    theta = sign * values / eps
    n = len(theta)
    order = np.argsort(-theta, kind="stable")
    s = theta[order]
    w = np.arange(n, 0, -1, dtype=float)
    primal = s - pav_decreasing(s - w)
    out = np.empty(n)
    out[order] = primal
    return out


def inputs(kind: str, rows: int, n: int, rng) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal((rows, n))
    if kind == "integers":  # many exact ties
        return rng.integers(-3, 4, (rows, n)).astype(float)
    if kind == "walk":
        return np.cumsum(rng.standard_normal((rows, n)), axis=1)
    if kind == "nearly_sorted":
        return -np.sort(rng.standard_normal((rows, n)), axis=1) * 30 + rng.standard_normal((rows, n))
    if kind == "spikes":  # long pools reaching far back
        return -np.arange(n, dtype=float)[None].repeat(rows, 0) + 40.0 * (rng.random((rows, n)) < 0.05)
    if kind == "constant":
        return np.zeros((rows, n))
    raise ValueError(kind)


KINDS = ["normal", "integers", "walk", "nearly_sorted", "spikes", "constant"]


@pytest.mark.parametrize("fixed_shape", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_isotonic_matches_pav(kind, fixed_shape):
    rng = np.random.default_rng(KINDS.index(kind))
    for n in (1, 2, 3, 5, 8, 17, 64, 100):
        y = inputs(kind, 4, n, rng)
        got = _segment_mean(torch.tensor(y), isotonic_blocks(torch.tensor(y), fixed_shape=fixed_shape)).numpy()
        ref = np.stack([pav_decreasing(row) for row in y])
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


def test_isotonic_decreasing_api_and_long_rows():
    rng = np.random.default_rng(7)
    y = inputs("walk", 3, 1023, rng)
    got = isotonic_decreasing(torch.tensor(y)).numpy()
    np.testing.assert_allclose(got, np.stack([pav_decreasing(r) for r in y]), rtol=0, atol=1e-9)
    assert np.all(np.diff(got, axis=1) <= 1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_cpu_and_fixed_shape_solvers_give_the_same_blocks(kind):
    rng = np.random.default_rng(10 + KINDS.index(kind))
    for n in (2, 3, 9, 31, 130, 1023):
        y = torch.tensor(inputs(kind, 5, n, rng))
        assert torch.equal(isotonic_blocks(y, fixed_shape=False), isotonic_blocks(y, fixed_shape=True))


def test_peeling_hands_long_stretches_to_the_fixed_shape_solver(monkeypatch):
    # rows of many blocks and no certain cut (random walks) need many peeling passes; with none
    # or one allowed, what is left goes to the fixed-shape solver, with the same blocks
    rng = np.random.default_rng(12)
    y = torch.tensor(inputs("walk", 6, 300, rng))
    expected = isotonic_blocks(y, fixed_shape=True)
    for passes in (0, 1, 3):
        monkeypatch.setattr(soft_rank_module, "MAX_PEEL_PASSES", passes)
        assert torch.equal(isotonic_blocks(y, fixed_shape=False), expected)


def soft_rank_rows(b: int, dim: int, eps: float, seed: int = 5, temperature: float = 0.04) -> torch.Tensor:
    """Similarity rows as GeoRank ranks them (B rows of B - 1 similarities / T)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(b, dim, generator=g, dtype=torch.float64), dim=1)
    return (z @ z.T / temperature)[:, 1:]


@pytest.mark.parametrize("eps", [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
def test_solvers_agree_on_soft_rank_inputs(eps):
    # the isotonic problems soft_rank solves: s - w with s sorted similarities / eps
    sim = soft_rank_rows(96, 16, eps)
    s = sim.sort(dim=1, descending=True).values / eps
    y = s - torch.arange(s.shape[1], 0, -1, dtype=torch.float64)
    blocks = isotonic_blocks(y, fixed_shape=False)
    assert torch.equal(blocks, isotonic_blocks(y, fixed_shape=True))
    ref = np.stack([pav_decreasing(row) for row in y.numpy()])
    np.testing.assert_allclose(_segment_mean(y, blocks).numpy(), ref, rtol=1e-13, atol=1e-9)


def fixed_shape_soft_rank(values: torch.Tensor, eps: float) -> torch.Tensor:
    """The GPU path (fixed shapes, torch), run on the CPU."""
    return soft_rank_module._SoftRankFixedShape.apply(values, 1.0 / eps)


@pytest.mark.parametrize("eps", [1e-4, 1e-3, 1e-2, 0.05, 0.3, 1.0, 10.0])
@pytest.mark.parametrize("b, dim", [(64, 8), (257, 32)])
def test_cpu_path_matches_fixed_shape_path(eps, b, dim):
    # values and gradients of both paths on GeoRank-like rows: the CPU path's one-block rows
    # (no sort), certain cuts, pairs and peeled stretches against the divide and conquer
    sim = soft_rank_rows(b, dim, eps, seed=b)
    g = torch.randn(sim.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got_x, ref_x = sim.clone().requires_grad_(True), sim.clone().requires_grad_(True)
    got = soft_rank(got_x, eps, backend="torch")
    ref = fixed_shape_soft_rank(ref_x, eps)
    (got * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-11)
    torch.testing.assert_close(got_x.grad, ref_x.grad, rtol=1e-12, atol=1e-9 / eps)


def test_smooth_soft_ranks_need_no_sort(monkeypatch):
    # GeoRank at strength 1 (T = 0.04): similarities / eps spread over at most 50 < (n - 1) / 2
    sim = soft_rank_rows(256, 32, 1.0)
    expected = fixed_shape_soft_rank(sim, 1.0)

    def no_sort(*args, **kwargs):
        raise AssertionError("sorted")

    monkeypatch.setattr(soft_rank_module.np, "argsort", no_sort)
    torch.testing.assert_close(soft_rank(sim, 1.0, backend="torch"), expected, rtol=1e-13, atol=1e-11)


def test_rows_of_small_spread_are_one_block():
    # spread <= (n - 1) / 2 (in units of eps): one block, found without sorting; just above it,
    # by the general path; both agree with PAV
    n = 41
    rng = np.random.default_rng(6)
    rows = rng.random((8, n))
    rows = (rows - rows.min(axis=1, keepdims=True)) / np.ptp(rows, axis=1, keepdims=True)
    spreads = np.array([0.0, 1.0, 10.0, 19.99, 20.0, 20.01, 25.0, 60.0])[:, None]
    values = rows * spreads
    got = soft_rank(torch.tensor(values), 1.0, backend="torch").numpy()
    np.testing.assert_allclose(got, np.stack([soft_rank_reference(r, 1.0) for r in values]), rtol=0, atol=1e-10)
    np.testing.assert_allclose(got[:5], values[:5] - values[:5].mean(axis=1, keepdims=True) + (n + 1) / 2, atol=1e-12)


@pytest.mark.parametrize("direction", ["ascending", "descending"])
@pytest.mark.parametrize("eps", [1e-3, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("kind", ["normal", "integers", "nearly_sorted"])
def test_soft_rank_matches_reference(kind, eps, direction):
    rng = np.random.default_rng(3)
    values = inputs(kind, 6, 40, rng)
    got = soft_rank(torch.tensor(values), eps, direction).numpy()
    ref = np.stack([soft_rank_reference(row, eps, direction) for row in values])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_small_strength_gives_hard_ranks():
    rng = np.random.default_rng(4)
    values = torch.tensor(rng.standard_normal((5, 50)))
    hard = hard_rank(values).double()
    gaps = []
    for eps in (1.0, 1e-1, 1e-2, 1e-3, 1e-6):
        gaps.append((soft_rank(values, eps) - hard).abs().max().item())
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] == 0.0  # singleton blocks give exact integers
    assert torch.equal(soft_rank(values, 1e-6, "descending"), hard_rank(values, "descending").double())


def test_ties_share_their_mean_rank():
    values = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0]])
    np.testing.assert_array_equal(soft_rank(values, 1e-6).numpy(), [[4.0, 1.0, 4.0, 2.0, 4.0]])
    np.testing.assert_array_equal(soft_rank(values, 1e-6, "descending").numpy(), [[2.0, 5.0, 2.0, 4.0, 2.0]])


def test_large_strength_gives_the_mean_rank():
    values = torch.randn(3, 9, dtype=torch.float64)
    np.testing.assert_allclose(soft_rank(values, 1e6).numpy(), 5.0, atol=1e-4)


def test_descending_is_reflected_ascending():
    values = torch.randn(4, 20, dtype=torch.float64)
    for eps in (1e-3, 0.5, 3.0):
        torch.testing.assert_close(soft_rank(values, eps, "descending"), 21 - soft_rank(values, eps, "ascending"))


@pytest.mark.parametrize("eps", [0.05, 0.5, 2.0])
def test_gradcheck(eps):
    torch.manual_seed(0)
    for n in (2, 3, 5, 7):
        x = torch.randn(3, n, dtype=torch.float64, requires_grad=True)
        for direction in ("ascending", "descending"):
            assert torch.autograd.gradcheck(lambda v: soft_rank(v, eps, direction), (x,), eps=1e-7, atol=1e-6)


def test_backward_is_block_mean_jacobian():
    # Jacobian in sorted order is (I - P) / eps with P averaging over the isotonic blocks
    values = torch.tensor([[0.30, 0.10, 0.31, 0.90, 0.305, -0.5]], dtype=torch.float64, requires_grad=True)
    eps = 0.1
    jac = torch.autograd.functional.jacobian(lambda v: soft_rank(v, eps), values)[0, :, 0, :]
    ranks = soft_rank(values.detach(), eps)[0]
    # values / eps sorted: 9, 3.1, 3.05, 3.0, 1, -5; gaps below 1 pool {0.31, 0.305, 0.30} into
    # one block (ranks s - mean(s) + mean(w) = 4.05, 4.0, 3.95), the others stay singletons
    block = torch.tensor([0, 2, 4])
    expected = torch.zeros(6, 6, dtype=torch.float64)
    expected[block[:, None], block[None, :]] = torch.eye(3, dtype=torch.float64) - 1.0 / 3
    torch.testing.assert_close(jac, expected / eps)
    torch.testing.assert_close(ranks, torch.tensor([3.95, 2.0, 4.05, 6.0, 4.0, 1.0], dtype=torch.float64))


def test_gradient_is_sparse_at_small_strength_and_finite_at_ties():
    x = torch.tensor([[0.2, 0.5, 0.2, -1.0]], dtype=torch.float64, requires_grad=True)
    soft_rank(x, 1e-3).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, 1] == 0 and x.grad[0, 3] == 0  # singletons get no gradient
    assert x.grad[0, 0] == -x.grad[0, 2]  # the tied pair gets equal and opposite ones


def test_shapes_dtypes_and_batches():
    x = torch.randn(2, 3, 6)
    r = soft_rank(x, 0.1)
    assert r.shape == x.shape and r.dtype == torch.float32
    torch.testing.assert_close(r[1, 2], soft_rank(x[1, 2][None], 0.1)[0])
    assert soft_rank(torch.randn(4, 1), 1.0).eq(1).all()
    assert soft_rank(torch.empty(0, 5), 1.0).shape == (0, 5)
    assert isotonic_blocks(torch.empty(3, 0)).shape == (3, 0)


def test_hard_rank():
    v = torch.tensor([[2.0, 1.0, 2.0, 0.5]])
    assert hard_rank(v).tolist() == [[3, 2, 4, 1]]
    assert hard_rank(v, "descending").tolist() == [[1, 3, 2, 4]]


def test_argument_errors():
    with pytest.raises(ConfigError):
        soft_rank(torch.randn(2, 3), 0.0)
    with pytest.raises(ConfigError):
        soft_rank(torch.randn(2, 3), 1.0, "up")
    with pytest.raises(ConfigError):
        isotonic_blocks(torch.randn(3))
    with pytest.raises(ConfigError, match="backend"):
        soft_rank(torch.randn(2, 3), 1.0, backend="numba")


def test_auto_backend_without_torchsort_is_the_built_in_one(monkeypatch):
    monkeypatch.setattr(soft_rank_module, "_torchsort_module", lambda: None)
    x = soft_rank_rows(20, 4, 0.01)
    assert torch.equal(soft_rank(x, 0.01, backend="auto"), soft_rank(x, 0.01, backend="torch"))
    with pytest.raises(ConfigError, match="torchsort"):
        soft_rank(x, 0.01, backend="torchsort")


@needs_torchsort
@pytest.mark.parametrize("direction", ["ascending", "descending"])
@pytest.mark.parametrize("eps", [1e-3, 1e-2, 0.1, 1.0])
def test_torchsort_backend_matches_the_built_in_one(eps, direction):
    sim = soft_rank_rows(128, 16, eps, seed=3)
    g = torch.randn(sim.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for backend in ("torch", "torchsort"):
        x = sim.clone().requires_grad_(True)
        r = soft_rank(x, eps, direction, backend=backend)
        (r * g).sum().backward()
        results.append((r.detach(), x.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-10, atol=1e-9 / eps)


def test_auto_backend_picks_torchsort_on_cuda_only(monkeypatch):
    # on the CPU the built-in solver is the faster one; on CUDA torchsort's kernel, where built
    monkeypatch.setattr(soft_rank_module, "_torchsort_runs_on", lambda device: True)
    assert soft_rank_module._pick_backend("auto", torch.device("cpu")) == "torch"
    assert soft_rank_module._pick_backend("auto", torch.device("cuda")) == "torchsort"
    assert soft_rank_module._pick_backend("torchsort", torch.device("cpu")) == "torchsort"
    monkeypatch.setattr(soft_rank_module, "_torchsort_runs_on", lambda device: False)
    assert soft_rank_module._pick_backend("auto", torch.device("cuda")) == "torch"
    with pytest.raises(ConfigError, match="torchsort"):
        soft_rank_module._pick_backend("torchsort", torch.device("cuda"))
