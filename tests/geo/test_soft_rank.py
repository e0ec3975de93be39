"""Soft ranks: exactness against a plain float64 PAV, limits, ties, gradients, both solvers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_rs.errors import ConfigError
from ssl_rs.geo.soft_rank import _segment_mean, hard_rank, isotonic_blocks, isotonic_decreasing, soft_rank


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


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_isotonic_matches_pav(kind, packed):
    rng = np.random.default_rng(KINDS.index(kind))
    for n in (1, 2, 3, 5, 8, 17, 64, 100):
        y = inputs(kind, 4, n, rng)
        got = _segment_mean(torch.tensor(y), isotonic_blocks(torch.tensor(y), packed=packed)).numpy()
        ref = np.stack([pav_decreasing(row) for row in y])
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


def test_isotonic_decreasing_api_and_long_rows():
    rng = np.random.default_rng(7)
    y = inputs("walk", 3, 1023, rng)
    got = isotonic_decreasing(torch.tensor(y)).numpy()
    np.testing.assert_allclose(got, np.stack([pav_decreasing(r) for r in y]), rtol=0, atol=1e-9)
    assert np.all(np.diff(got, axis=1) <= 1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_packed_and_dense_give_the_same_blocks(kind):
    rng = np.random.default_rng(10 + KINDS.index(kind))
    for n in (2, 3, 9, 31, 130):
        y = torch.tensor(inputs(kind, 5, n, rng))
        assert torch.equal(isotonic_blocks(y, packed=True), isotonic_blocks(y, packed=False))


@pytest.mark.parametrize("eps", [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
def test_packed_and_dense_agree_on_soft_rank_inputs(eps):
    # the isotonic problems soft_rank solves: s - w with s sorted similarities / eps
    g = torch.Generator().manual_seed(5)
    z = torch.nn.functional.normalize(torch.randn(96, 16, generator=g, dtype=torch.float64), dim=1)
    sim = (z @ z.T / 0.04)[:, 1:]
    s = sim.sort(dim=1, descending=True).values / eps
    y = s - torch.arange(s.shape[1], 0, -1, dtype=torch.float64)
    blocks = isotonic_blocks(y, packed=True)
    assert torch.equal(blocks, isotonic_blocks(y, packed=False))
    ref = np.stack([pav_decreasing(row) for row in y.numpy()])
    np.testing.assert_allclose(_segment_mean(y, blocks).numpy(), ref, rtol=1e-13, atol=1e-9)


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
