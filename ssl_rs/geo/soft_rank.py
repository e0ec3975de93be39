"""Fast differentiable soft ranks (Blondel et al., ICML 2020), batched in torch.

``soft_rank(theta, eps)`` is the L2-regularised soft rank of "Fast Differentiable Sorting and
Ranking": the Euclidean projection of ``theta / eps`` onto the permutahedron of ``(n, ..., 1)``.
With ``s = sort(theta / eps, descending)`` and ``w = (n, ..., 1)`` it reads, in sorted order,

    r = s - v,   v = argmin_{v_1 >= ... >= v_n} ||v - (s - w)||^2   (isotonic regression),

so within each block ``b`` of the isotonic solution ``r = s - mean_b(s) + mean_b(w)``: singleton
blocks give exact hard ranks, and tied values share the mean of their ranks. The Jacobian is
``(I - P) / eps`` with ``P`` the block-averaging matrix, so the backward pass is one segment
mean per row.

Pool-adjacent-violators is sequential; here the isotonic regression is solved for all rows at
once as the greatest convex minorant of the cumulative sums, built by divide and conquer: two
neighbouring groups' hulls are joined by their common tangent (the "bridge"), found by a nested
binary search. That is O(log^2 n) vectorised steps with shapes fixed by ``n`` alone: no host
synchronisation and no data-dependent loop (the method used on GPUs). On CPU tensors, where
data-dependent sizes cost nothing, a prefix-max / suffix-min test first settles most block
boundaries and only the stretches in between go through the divide and conquer. Both are exact:
the same blocks PAV finds, up to floating-point rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError

#: adjacent blocks whose means differ by at most this much are one block, as in the reference
#: implementation's ``_partition`` (same units as ``theta / eps``); it only decides the Jacobian
#: where the isotonic solution has equal neighbouring values.
BLOCK_MERGE_ATOL = 1e-9


def _convex_minorant_vertices(z: Tensor) -> Tensor:
    """Vertices of the greatest convex minorant of the points ``(x, sum(z[:x]))``, x = 0..n.

    ``z``: (R, n) float64. Returns an (R, n + 1) bool mask; collinear points count as vertices
    (the caller merges blocks with equal means).
    """
    rows, n = z.shape
    size = 1 << n.bit_length()  # a power of two >= n + 1 points
    dev, dt = z.device, z.dtype
    # padding increments larger than every real one keep x = n a vertex and the padding
    # points off the real part of the hull
    pad = z.amax(dim=1, keepdim=True) + 1.0
    increments = torch.cat([z, pad.expand(rows, size - 1 - n)], dim=1)
    points = torch.cat([z.new_zeros(rows, 1), increments.cumsum(dim=1)], dim=1)
    hull = points  # hull[x]: value at x of the minorant of x's current group
    slopes = torch.empty(rows, size, dtype=dt, device=dev)
    half = 2  # groups of two points are their own hull
    while half < size:
        groups, width = size // (2 * half), 2 * half
        torch.sub(hull[:, 1:], hull[:, :-1], out=slopes[:, :-1])
        hull_g = hull.view(rows, groups, width)
        slope_g = slopes.view(rows, groups, width)

        def at(values: Tensor, index: Tensor) -> Tensor:
            return values.gather(2, index.unsqueeze(2)).squeeze(2)

        def tangent(j_f: Tensor, h_j: Tensor) -> Tensor:
            """Rightmost point k of the right half on the lower tangent from (j, h_j): the first
            k with slope(k -> k + 1) > slope(j -> k). Branchless binary search (a step is taken
            where the hull has not turned up yet); integer updates, as ``where`` is slow on CPU."""
            k0 = torch.full((rows, groups), half - 1, dtype=torch.long, device=dev)
            step = half // 2
            while step:
                k = k0 + step
                not_yet = at(slope_g, k) * (k.to(dt) - j_f) <= at(hull_g, k) - h_j
                k0 = k0.add(not_yet.long(), alpha=step)
                step //= 2
            return k0 + 1

        # the bridge's left end: the leftmost j of the left half whose tangent into the right
        # half also supports the left hull at j (the next left point is not below it)
        j0 = torch.full((rows, groups), -1, dtype=torch.long, device=dev)
        step = half // 2
        while step:
            j = j0 + step
            j_f = j.to(dt)
            h_j = at(hull_g, j)
            k = tangent(j_f, h_j)
            below = at(slope_g, j) * (k.to(dt) - j_f) < at(hull_g, k) - h_j
            j0 = j0.add(below.long(), alpha=step)
            step //= 2
        j = j0 + 1
        j_f = j.to(dt)
        h_j = at(hull_g, j)
        k = tangent(j_f, h_j)
        k_f = k.to(dt)
        bridge_slope = (at(hull_g, k) - h_j) / (k_f - j_f)
        local_x = torch.arange(width, dtype=dt, device=dev)
        inside = (local_x > j_f.unsqueeze(2)) & (local_x < k_f.unsqueeze(2))
        bridge = torch.addcmul((h_j - j_f * bridge_slope).unsqueeze(2), bridge_slope.unsqueeze(2), local_x)
        hull = torch.where(inside, bridge, hull_g).view(rows, size)
        half *= 2
    # a point keeps its own value until a bridge passes below it
    return (hull == points)[:, : n + 1]


class _Segments:
    """Per-row segments given by block ids (R, n) in [0, n): each element's flat slot and the
    size of each slot, for segment means by ``index_add_`` (no loop over blocks)."""

    def __init__(self, ids: Tensor):
        rows, n = ids.shape
        self.shape = ids.shape
        self.flat = (ids + torch.arange(rows, device=ids.device).unsqueeze(1) * n).reshape(-1)
        ones = torch.ones(rows * n, dtype=torch.float64, device=ids.device)
        self.counts = torch.zeros_like(ones).index_add_(0, self.flat, ones).clamp_(min=1.0)

    def mean(self, values: Tensor) -> Tensor:
        """Mean of ``values`` (R, n) over each element's segment, broadcast back to (R, n)."""
        sums = torch.zeros_like(self.counts).index_add_(0, self.flat, values.reshape(-1))
        return (sums / self.counts).index_select(0, self.flat).view(self.shape)

    def reordered(self, order: Tensor) -> "_Segments":
        """The same segments for elements permuted by ``out[:, order[:, i]] = in[:, i]``."""
        other = object.__new__(_Segments)
        other.shape, other.counts = self.shape, self.counts
        other.flat = torch.empty_like(order).scatter_(1, order, self.flat.view(self.shape)).reshape(-1)
        return other


def _segment_mean(values: Tensor, ids: Tensor) -> Tensor:
    """Per-row segment means of ``values`` (R, n) for block ids ``ids``, broadcast back."""
    return _Segments(ids).mean(values)


def _block_ids(boundary: Tensor) -> Tensor:
    """(R, n - 1) bool 'a new block starts here' -> (R, n) block ids 0, 0, 1, ..."""
    zero = torch.zeros(boundary.shape[0], 1, dtype=torch.long, device=boundary.device)
    return torch.cat([zero, boundary.long().cumsum(dim=1)], dim=1)


def _blocks_dense(z: Tensor) -> Tensor:
    """Block ids of the increasing isotonic regression of each row of ``z`` (R, n), fixed shapes."""
    vertices = _convex_minorant_vertices(z)
    ids = _block_ids(vertices[:, 1:-1])
    means = _segment_mean(z, ids)
    # keep a boundary only where the mean really goes up: merges collinear points (equal means)
    return _block_ids((ids[:, 1:] != ids[:, :-1]) & (means[:, 1:] - means[:, :-1] > BLOCK_MERGE_ATOL))


def _blocks_packed(z: Tensor) -> Tensor:
    """Same result as :func:`_blocks_dense`, solving only the stretches that need it.

    A cut between elements x - 1 and x is certain when ``max(z[:x]) + atol < min(z[x:])``: every
    mean ending before the cut is below every mean starting after it, so the solution has a block
    boundary there, with means further apart than the merge tolerance. At small regularisation
    strengths nearly every position is cut; the rest form short stretches, packed by length class
    (powers of two) and solved by the dense method. The packing has data-dependent sizes, which
    is free on CPU tensors but would make a GPU wait; see :func:`isotonic_blocks`.
    """
    rows, n = z.shape
    if n < 2:
        return torch.zeros(rows, n, dtype=torch.long, device=z.device)
    prefix_max = z.cummax(dim=1).values
    suffix_min = z.flip(1).cummin(dim=1).values.flip(1)
    certain = (suffix_min[:, 1:] - prefix_max[:, :-1]) > BLOCK_MERGE_ATOL
    starts = torch.cat([torch.ones(rows, 1, dtype=torch.bool, device=z.device), certain], dim=1).reshape(-1)
    boundary = starts.clone()  # 'a block starts here', filled in inside the uncertain stretches
    # elements that continue a stretch are few; consecutive runs of them are the stretches
    # (minus their first element), so that the rest works on small index arrays
    inner = (~starts).nonzero().squeeze(1)
    if inner.numel() == 0:
        return _block_ids(certain)
    run_starts = torch.ones_like(inner, dtype=torch.bool)
    run_starts[1:] = inner[1:] != inner[:-1] + 1
    run_first = run_starts.nonzero().squeeze(1)
    start_pos = inner[run_first] - 1
    lengths = torch.diff(run_first, append=run_first.new_tensor([inner.numel()])) + 1
    flat = z.reshape(-1)
    pairs = (lengths == 2).nonzero().squeeze(1)
    if pairs.numel():
        # two elements: one block unless the second is larger (beyond the merge tolerance)
        first = start_pos[pairs]
        boundary[first + 1] = flat[first + 1] - flat[first] > BLOCK_MERGE_ATOL
    # by width class 2**k - 1, so that a class wastes at most half its slots on padding
    longest = int(lengths.max())
    for lo, hi in [(3, 7)] + [(2 ** (c - 1), 2**c - 1) for c in range(4, longest.bit_length() + 1)]:
        chosen = ((lengths >= lo) & (lengths <= hi)).nonzero().squeeze(1)
        if chosen.numel() == 0:
            continue
        chosen_lengths = lengths[chosen]
        # 2**k - 1 elements make 2**k cumulative points: no padding to the next power of two
        width = (1 << int(chosen_lengths.max()).bit_length()) - 1
        offsets = torch.arange(width, device=z.device)
        valid = offsets < chosen_lengths.unsqueeze(1)
        first = start_pos[chosen].unsqueeze(1)
        index = first + offsets
        packed = flat[torch.where(valid, index, first)]
        # padding above every real value closes the stretch without touching its blocks
        pad = packed.amax(dim=1, keepdim=True) + 1.0
        packed = torch.where(valid, packed, pad)
        ids = _blocks_dense(packed)
        tail = valid[:, 1:]
        boundary[index[:, 1:][tail]] = (ids[:, 1:] != ids[:, :-1])[tail]
    return _block_ids(boundary.view(rows, n)[:, 1:])


def isotonic_blocks(y: Tensor, packed: bool | None = None) -> Tensor:
    """Block ids of the decreasing isotonic regression of each row of ``y`` (R, n).

    The solution ``argmin_{v_1 >= ... >= v_n} ||v - y||^2`` is the mean of ``y`` over each block;
    neighbouring blocks with equal means (within :data:`BLOCK_MERGE_ATOL`) are merged, as PAV does.
    ``packed`` (default: on CPU tensors) solves only the stretches that are not settled by a
    prefix-max / suffix-min test; its sizes depend on the data, so it is never used by default on
    a GPU, where the fixed-shape method runs without host synchronisation.
    """
    if y.dim() != 2:
        raise ConfigError(f"isotonic_blocks expects a 2-d tensor, got shape {tuple(y.shape)}")
    if y.shape[1] == 0:
        return torch.zeros(y.shape, dtype=torch.long, device=y.device)
    y = y.double()
    # z = -y, centred: the problem is shift-invariant and centring keeps the cumulative sums small
    z = y.mean(dim=1, keepdim=True) - y
    if packed is None:
        packed = z.device.type == "cpu"
    return _blocks_packed(z) if packed else _blocks_dense(z)


def isotonic_decreasing(y: Tensor) -> Tensor:
    """``argmin_{v_1 >= ... >= v_n} ||v - y||^2`` for each row of ``y`` (R, n), in float64."""
    y = y.double()
    return _segment_mean(y, isotonic_blocks(y))


def _check_direction(direction: str) -> int:
    d = direction.lower()
    if d not in ("ascending", "descending"):
        raise ConfigError(f"direction must be 'ascending' or 'descending', got {direction!r}")
    return 1 if d == "ascending" else -1


class _SoftRank(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, scale: float) -> Tensor:
        rows, n = values.shape
        theta = values.detach().double() * scale
        s, order = torch.sort(theta, dim=1, descending=True)
        w = torch.arange(n, 0, -1, dtype=torch.float64, device=values.device).expand(rows, n)
        y = s - w
        ids = isotonic_blocks(y)
        segments = _Segments(ids)
        # r = s - v with v the block means of y; singleton blocks get their hard rank w exactly
        # (s - (s - w) would carry the rounding of s - w)
        new_block = ids[:, 1:] != ids[:, :-1]
        edge = torch.ones(rows, 1, dtype=torch.bool, device=values.device)
        singleton = torch.cat([edge, new_block], dim=1) & torch.cat([new_block, edge], dim=1)
        ranks_sorted = torch.where(singleton, w, s - segments.mean(y))
        ranks = torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)
        ctx.scale = scale
        ctx.segments = segments.reordered(order)
        return ranks.to(values.dtype)

    @staticmethod
    def backward(ctx, grad_ranks: Tensor):
        g = grad_ranks.double()
        return ((g - ctx.segments.mean(g)) * ctx.scale).to(grad_ranks.dtype), None


def soft_rank(values: Tensor, regularization_strength: float = 1.0, direction: str = "ascending") -> Tensor:
    """L2-regularised soft ranks along the last dimension (1 = smallest for "ascending").

    Args:
        values: (..., n) tensor.
        regularization_strength: eps > 0; as eps -> 0 the soft ranks become the hard ranks
            (ties get their mean rank), large eps pulls every rank towards (n + 1) / 2.
        direction: "ascending" or "descending" (1 = largest).

    Differentiable (custom backward: ``(g - block_mean(g)) / eps``); computed in float64 and
    returned in ``values.dtype``.
    """
    sign = _check_direction(direction)
    if not regularization_strength > 0:
        raise ConfigError(f"regularization_strength must be > 0, got {regularization_strength}")
    if values.dim() == 0:
        raise ConfigError("soft_rank needs at least one dimension")
    shape = values.shape
    if values.numel() == 0:
        return values.clone()
    flat = values.reshape(-1, shape[-1])
    return _SoftRank.apply(flat, sign / float(regularization_strength)).reshape(shape)


def hard_rank(values: Tensor, direction: str = "ascending") -> Tensor:
    """Ranks 1..n along the last dimension (int64); ties are ranked in order of position."""
    sign = _check_direction(direction)
    order = torch.argsort(values, dim=-1, descending=sign < 0, stable=True)
    positions = torch.arange(1, values.shape[-1] + 1, device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)
