"""Fast differentiable soft ranks (Blondel et al., ICML 2020), batched.

``soft_rank(theta, eps)`` is the L2-regularised soft rank of "Fast Differentiable Sorting and
Ranking": the Euclidean projection of ``theta / eps`` onto the permutahedron of ``(n, ..., 1)``.
With ``s = sort(theta / eps, descending)`` and ``w = (n, ..., 1)`` it reads, in sorted order,

    r = s - v,   v = argmin_{v_1 >= ... >= v_n} ||v - (s - w)||^2   (isotonic regression),

so within each block ``b`` of the isotonic solution ``r = s - mean_b(s) + mean_b(w)``: singleton
blocks give exact hard ranks, and tied values share the mean of their ranks. The Jacobian is
``(I - P) / eps`` with ``P`` the block-averaging matrix, so the backward pass is one segment
mean per row (zero on singleton blocks).

Two solvers find the blocks, both exact (the blocks pool-adjacent-violators finds, up to
floating-point rounding):

- **CPU** (numpy, whose row-wise sort is several times faster than torch's; data-dependent
  sizes, which cost nothing on the host). A row whose values spread over at most ``(n - 1) / 2``
  is one block (no sort needed; this is every row at the strengths where the soft rank is
  smooth). Otherwise, after the sort, a running max / min test settles most block boundaries in
  O(n); the stretches in between are peeled from both ends, a block per end and per pass (O(n)
  per pass): a few passes at small strengths, up to ~15 around 0.01 on GeoRank's rows.
- **Fixed shapes** (the method used on GPUs): the isotonic regression as the greatest convex
  minorant of the cumulative sums, built by divide and conquer: two neighbouring groups' hulls
  are joined by their common tangent (the "bridge"), found by a nested binary search. That is
  O(log^2 n) vectorised steps with every shape and loop count fixed by ``n``: no ``.item()``,
  no data-dependent shape, no host synchronisation.

``backend="torchsort"`` uses torchsort's compiled PAV instead (``pip install ssl-rs[torchsort]``).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError

#: adjacent blocks whose means differ by at most this much are one block, as in the reference
#: implementation's ``_partition`` (same units as ``theta / eps``); it only decides the Jacobian
#: where the isotonic solution has equal neighbouring values.
BLOCK_MERGE_ATOL = 1e-9

#: ``soft_rank`` backends: "torch" is built in; "torchsort" needs the optional package;
#: "auto" takes torchsort for CUDA tensors where it is installed with its CUDA kernel, and the
#: built-in solver otherwise (on the CPU it is the faster of the two).
BACKENDS = ("auto", "torch", "torchsort")

#: peeling passes before what is left of a stretch goes to the fixed-shape solver. A pass takes
#: two blocks off every unfinished stretch, so this bounds the work of rows with many blocks and
#: no certain cut (which soft ranks do not produce) at O(n) passes' worth.
MAX_PEEL_PASSES = 16


# ---------------------------------------------------------------------------------------------
# fixed-shape solver (any device; the one used on GPUs)
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# CPU solver (numpy)
# ---------------------------------------------------------------------------------------------
def _run_lengths(first: np.ndarray, total: int) -> np.ndarray:
    """Lengths of the runs that start at the sorted positions ``first`` of an array of ``total``."""
    lengths = np.empty_like(first)
    np.subtract(first[1:], first[:-1], out=lengths[:-1])
    lengths[-1:] = total - first[-1:]
    return lengths


def _cpu_block_starts(y: np.ndarray) -> np.ndarray:
    """Flat bool array (R * n), ``True`` where a block of the *increasing* isotonic regression
    of a row of ``y`` (R, n) float64 starts (each row's first element included).

    1. Certain cuts: there is a block boundary between x - 1 and x when ``min(y[x:])`` exceeds
       ``max(y[:x])`` by more than the merge tolerance (every block mean on the right is then
       above every one on the left). At small strengths these are nearly all the boundaries.
    2. Between certain cuts: two elements are one block unless the second is larger; longer
       stretches are peeled from both ends (:func:`_peel`).
    """
    rows, n = y.shape
    starts = np.ones((rows, n), dtype=bool)
    if n < 2:
        return starts.reshape(-1)
    prefix_max = np.maximum.accumulate(y, axis=1)
    suffix_min = np.minimum.accumulate(y[:, ::-1], axis=1)[:, ::-1]
    np.greater(suffix_min[:, 1:] - prefix_max[:, :-1], BLOCK_MERGE_ATOL, out=starts[:, 1:])
    starts = starts.reshape(-1)
    flat = y.reshape(-1)
    first = np.flatnonzero(starts)
    lengths = _run_lengths(first, flat.size)
    pairs = first[lengths == 2]
    if pairs.size:
        starts[pairs + 1] = flat[pairs + 1] - flat[pairs] > BLOCK_MERGE_ATOL
    longer = lengths > 2
    if longer.any():
        first, lengths = first[longer], lengths[longer]
        # by length class (powers of two), so that padding wastes at most half of a class's work
        length_class = np.frexp(lengths - 1)[1]
        for c in np.unique(length_class):
            chosen = length_class == c
            _peel(flat, first[chosen], lengths[chosen], starts)
    return starts


def _peel(flat: np.ndarray, first: np.ndarray, lengths: np.ndarray, starts: np.ndarray) -> None:
    """Mark the block starts inside the stretches ``flat[first : first + lengths]`` in ``starts``.

    The first block of the increasing isotonic regression of ``y[l..r]`` ends at the last k where
    the mean of ``y[l..k]`` is smallest, and its last block starts at the first j where the mean
    of ``y[j..r]`` is largest (pool-adjacent-violators pools up to there); what lies between is a
    problem of its own. So each pass takes both ends off every unfinished stretch, in one
    vectorised sweep over its elements (cumulative sums computed once): a stretch of b blocks
    takes about b / 2 passes. What is left after :data:`MAX_PEEL_PASSES` passes goes to the
    fixed-shape solver. Last, neighbouring blocks whose means are within the tolerance are merged
    (one pass, the rule of the fixed-shape solver).
    """
    count, width = first.size, int(lengths.max())
    col = np.arange(width)
    values = flat[first[:, None] + np.minimum(col, lengths[:, None] - 1)]
    # sums relative to each stretch's first value keep the cumulative sums small
    cums = np.zeros((count, width + 1))
    np.cumsum(values - values[:, :1], axis=1, out=cums[:, 1:])
    lo = np.zeros(count, dtype=np.int64)
    hi = lengths - 1
    inner = np.zeros((count, width), dtype=bool)  # block starts, each stretch's first element aside
    active = np.arange(count)
    for _ in range(MAX_PEEL_PASSES):
        if active.size == 0:
            break
        c, l, r = cums[active], lo[active], hi[active]
        at = np.arange(active.size)
        outside = (col < l[:, None]) | (col > r[:, None])
        with np.errstate(divide="ignore", invalid="ignore"):  # the outside is overwritten
            head = (c[:, 1:] - c[at, l][:, None]) / (col + 1 - l[:, None])
            tail = (c[at, r + 1][:, None] - c[:, :-1]) / (r[:, None] + 1 - col)
        head[outside] = np.inf
        tail[outside] = -np.inf
        head_end = width - 1 - np.argmin(head[:, ::-1], axis=1)  # the last smallest
        tail_start = np.argmax(tail, axis=1)  # the first largest
        # otherwise both ends found the whole of what is left: it is one block
        split = head_end < tail_start
        active, head_end, tail_start = active[split], head_end[split], tail_start[split]
        inner[active, head_end + 1] = True
        inner[active, tail_start] = True
        lo[active], hi[active] = head_end + 1, tail_start - 1
        active = active[lo[active] <= hi[active]]
    if active.size:
        _finish_fixed_shape(values, lo[active], hi[active], inner, active)
    _merge_close_blocks(cums, lengths, inner)
    inside = col < lengths[:, None]
    inside[:, 0] = False
    starts[(first[:, None] + col)[inside]] = inner[inside]


def _finish_fixed_shape(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, inner: np.ndarray,
                        rows: np.ndarray) -> None:
    """Block starts of the independent sub-problems ``values[rows, lo..hi]``, into ``inner``."""
    sizes = hi - lo + 1
    col = np.arange(int(sizes.max()))
    valid = col < sizes[:, None]
    packed = values[rows[:, None], np.minimum(lo[:, None] + col, hi[:, None])]
    # padding above every real value is a block of its own and leaves the real blocks alone
    packed = np.where(valid, packed, packed.max(axis=1, keepdims=True) + 1.0)
    ids = _blocks_dense(torch.from_numpy(packed - packed.mean(axis=1, keepdims=True))).numpy()
    r, c = np.nonzero((ids[:, 1:] != ids[:, :-1]) & valid[:, 1:])
    inner[rows[r], lo[r] + c + 1] = True


def _merge_close_blocks(cums: np.ndarray, lengths: np.ndarray, inner: np.ndarray) -> None:
    """Clear the block starts in ``inner`` (stretch, position) where the block's mean is not
    above the previous block's by more than the tolerance; block sums from ``cums``."""
    at, begin = np.nonzero(inner)
    if begin.size == 0:
        return
    same_stretch = at[1:] == at[:-1]
    previous = np.zeros_like(begin)
    previous[1:] = np.where(same_stretch, begin[:-1], 0)
    following = lengths[at]
    following[:-1] = np.where(same_stretch, begin[1:], following[:-1])
    here = cums[at, begin]
    left = (here - cums[at, previous]) / (begin - previous)
    right = (cums[at, following] - here) / (following - begin)
    close = right - left <= BLOCK_MERGE_ATOL
    inner[at[close], begin[close]] = False


def _use_fixed_shape(device: torch.device) -> bool:
    """The fixed-shape solver off the CPU, where data-dependent sizes would make the host wait."""
    return device.type != "cpu"


def isotonic_blocks(y: Tensor, fixed_shape: bool | None = None) -> Tensor:
    """Block ids (R, n) of the decreasing isotonic regression of each row of ``y`` (R, n).

    The solution ``argmin_{v_1 >= ... >= v_n} ||v - y||^2`` is the mean of ``y`` over each block;
    neighbouring blocks with equal means (within :data:`BLOCK_MERGE_ATOL`) are merged, as PAV does.
    ``fixed_shape`` (default: off the CPU) picks the divide-and-conquer solver whose shapes depend
    on ``n`` only; otherwise the CPU solver (numpy) runs, on a copy of ``y`` on the host.
    """
    if y.dim() != 2:
        raise ConfigError(f"isotonic_blocks expects a 2-d tensor, got shape {tuple(y.shape)}")
    if y.shape[1] == 0:
        return torch.zeros(y.shape, dtype=torch.long, device=y.device)
    y = y.double()
    # z = -y: the increasing problem; centred, since it is shift-invariant and centring keeps the
    # cumulative sums small
    z = y.mean(dim=1, keepdim=True) - y
    if fixed_shape is None:
        fixed_shape = _use_fixed_shape(y.device)
    if fixed_shape:
        return _blocks_dense(z)
    starts = _cpu_block_starts(np.ascontiguousarray(z.detach().cpu().numpy()))
    ids = np.cumsum(starts.reshape(y.shape), axis=1) - 1
    return torch.from_numpy(ids).to(y.device)


def isotonic_decreasing(y: Tensor) -> Tensor:
    """``argmin_{v_1 >= ... >= v_n} ||v - y||^2`` for each row of ``y`` (R, n), in float64."""
    y = y.double()
    return _segment_mean(y, isotonic_blocks(y))


def _check_direction(direction: str) -> int:
    d = direction.lower()
    if d not in ("ascending", "descending"):
        raise ConfigError(f"direction must be 'ascending' or 'descending', got {direction!r}")
    return 1 if d == "ascending" else -1


# ---------------------------------------------------------------------------------------------
# soft rank
# ---------------------------------------------------------------------------------------------
class _SoftRankFixedShape(torch.autograd.Function):
    """Soft ranks of (R, n) rows with the fixed-shape solver, in torch on the input's device."""

    @staticmethod
    def forward(ctx, values: Tensor, scale: float) -> Tensor:
        rows, n = values.shape
        theta = values.detach().double() * scale
        s, order = torch.sort(theta, dim=1, descending=True)
        w = torch.arange(n, 0, -1, dtype=torch.float64, device=values.device).expand(rows, n)
        y = s - w
        ids = isotonic_blocks(y, fixed_shape=True)
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


class _CpuSoftRankState:
    """What the CPU backward needs: which rows are one block, and for the others the flat
    positions (in ``values``) of the elements of blocks of two or more, block by block."""

    def __init__(self, one_block: np.ndarray, pooled_at: np.ndarray, pooled_counts: np.ndarray):
        self.one_block, self.pooled_at, self.pooled_counts = one_block, pooled_at, pooled_counts

    def backward(self, g: np.ndarray) -> np.ndarray:
        """``(I - P) g`` per row, P averaging over the blocks: zero on singleton blocks."""
        one = self.one_block
        if one.all():
            return g - g.mean(axis=1, keepdims=True)
        out = np.zeros_like(g)
        if one.any():
            out[one] = g[one] - g[one].mean(axis=1, keepdims=True)
        if self.pooled_at.size:
            values = g.reshape(-1)[self.pooled_at]
            c = self.pooled_counts
            means = np.add.reduceat(values, np.cumsum(c) - c) / c
            out.reshape(-1)[self.pooled_at] = values - np.repeat(means, c)
        return out


_NO_POSITIONS = np.empty(0, dtype=np.int64)


def _soft_rank_cpu(theta: np.ndarray) -> tuple[np.ndarray, _CpuSoftRankState]:
    """Ascending soft ranks of the rows of ``theta`` (R, n) float64, and the backward's state.

    Works in ascending order: with ``s = sort(theta)`` and ``w = (1, ..., n)``, ``r = s - v`` for
    ``v`` the increasing isotonic regression of ``s - w`` (the module docstring's formula, reversed).
    """
    rows, n = theta.shape
    # A row whose values spread over at most (n - 1) / 2 is one block: the mean of its k + 1
    # smallest values is below the row mean by at most (n - 1 - k) * spread / n, less than the
    # (n - 1 - k) / 2 by which the mean of their hard ranks 1..k+1 is, so no prefix of y = s - w
    # has a smaller mean than the whole row (by at least 1 / (2n), far beyond rounding). Then
    # r = theta - mean(theta) + (n + 1) / 2, and no sort is needed.
    one_block = theta.max(axis=1) - theta.min(axis=1) <= 0.5 * (n - 1)
    if one_block.all():
        ranks = theta - (theta.mean(axis=1, keepdims=True) - 0.5 * (n + 1))
        return ranks, _CpuSoftRankState(one_block, _NO_POSITIONS, _NO_POSITIONS)
    ranks = np.empty_like(theta)
    general = None
    sub = theta
    if one_block.any():
        one = theta[one_block]
        ranks[one_block] = one - (one.mean(axis=1, keepdims=True) - 0.5 * (n + 1))
        general = np.flatnonzero(~one_block)
        sub = theta[general]
    count = sub.shape[0]
    # flat positions (in ``sub``) in ascending order of value. An unstable sort is enough: equal
    # values are always pooled (y goes down by one between them), so they share their rank.
    order = np.argsort(sub, axis=1)
    order += (np.arange(count) * n)[:, None]
    order = order.reshape(-1)
    s = sub.reshape(-1)[order]
    w = np.tile(np.arange(1.0, n + 1.0), count)
    y = s - w
    starts = _cpu_block_starts(y.reshape(count, n))
    # an element is in a singleton block when it and the next element (or the row's end) start one
    next_starts = np.empty_like(starts)
    next_starts[:-1] = starts[1:]
    next_starts[n - 1 :: n] = True
    pooled = np.flatnonzero(~(starts & next_starts))
    # singleton blocks keep their hard rank w exactly (s - (s - w) would carry the rounding of s - w)
    ranks_sorted = w
    pooled_at, pooled_counts = _NO_POSITIONS, _NO_POSITIONS
    if pooled.size:
        pooled_counts = _run_lengths(np.flatnonzero(starts[pooled]), pooled.size)
        means = np.add.reduceat(y[pooled], np.cumsum(pooled_counts) - pooled_counts) / pooled_counts
        ranks_sorted[pooled] = s[pooled] - np.repeat(means, pooled_counts)
        pooled_at = order[pooled]
    out = np.empty(y.size)
    out[order] = ranks_sorted
    if general is None:
        return out.reshape(rows, n), _CpuSoftRankState(one_block, pooled_at, pooled_counts)
    ranks[general] = out.reshape(count, n)
    pooled_at = general[pooled_at // n] * n + pooled_at % n  # positions in sub -> in theta
    return ranks, _CpuSoftRankState(one_block, pooled_at, pooled_counts)


class _SoftRankCpu(torch.autograd.Function):
    """Soft ranks of (R, n) rows of a CPU tensor with the CPU solver (numpy, float64)."""

    @staticmethod
    def forward(ctx, values: Tensor, scale: float) -> Tensor:
        theta = values.detach().to(torch.float64).numpy() * scale  # a fresh array
        ranks, ctx.state = _soft_rank_cpu(theta)
        ctx.scale = scale
        return torch.from_numpy(ranks).to(values.dtype)

    @staticmethod
    def backward(ctx, grad_ranks: Tensor):
        g = np.ascontiguousarray(grad_ranks.detach().to(torch.float64).numpy())
        out = ctx.state.backward(g)
        out *= ctx.scale
        return torch.from_numpy(out).to(grad_ranks.dtype), None


@functools.lru_cache(maxsize=None)
def _torchsort_module():
    """torchsort, or None where it is not installed or its compiled extension does not load."""
    try:
        import torchsort
    except (ImportError, OSError):
        return None
    return torchsort


def _torchsort_runs_on(device: torch.device) -> bool:
    """Whether torchsort has a kernel for ``device`` (its CUDA kernel is only built where nvcc was)."""
    module = _torchsort_module()
    if module is None:
        return False
    if device.type == "cpu":
        return True
    if device.type != "cuda":
        return False
    ops = module.ops
    return ops.isotonic_l2_cuda is not getattr(ops, "_error", None)


def torchsort_available() -> bool:
    """Whether ``backend="torchsort"`` can run (on CPU tensors at least)."""
    return _torchsort_module() is not None


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"soft_rank backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torchsort":
        if not _torchsort_runs_on(device):
            raise ConfigError(
                f"soft_rank backend 'torchsort': torchsort is not installed or has no {device.type} kernel "
                "(pip install ssl-rs[torchsort])"
            )
        return backend
    if backend == "auto":
        # torchsort's compiled PAV on GPUs (one kernel, against the divide and conquer's
        # O(log^2 n) steps); on the CPU the built-in solver, faster than torchsort's there
        # (docs/benchmarks.md: its torch sort alone costs more than the built-in solver's numpy one)
        return "torchsort" if device.type == "cuda" and _torchsort_runs_on(device) else "torch"
    return backend


def soft_rank(values: Tensor, regularization_strength: float = 1.0, direction: str = "ascending",
              backend: str = "auto") -> Tensor:
    """L2-regularised soft ranks along the last dimension (1 = smallest for "ascending").

    Args:
        values: (..., n) tensor.
        regularization_strength: eps > 0; as eps -> 0 the soft ranks become the hard ranks
            (ties get their mean rank), large eps pulls every rank towards (n + 1) / 2.
        direction: "ascending" or "descending" (1 = largest).
        backend: "torch" (built in: the CPU solver on CPU tensors, the fixed-shape one elsewhere),
            "torchsort" (its compiled pool-adjacent-violators; ``pip install ssl-rs[torchsort]``),
            or "auto": torchsort on CUDA tensors where it is installed with its CUDA kernel, else
            "torch" (on the CPU the built-in solver is the faster one).

    Differentiable (``(g - block_mean(g)) / eps``); computed in float64 and returned in
    ``values.dtype``.
    """
    sign = _check_direction(direction)
    if not regularization_strength > 0:
        raise ConfigError(f"regularization_strength must be > 0, got {regularization_strength}")
    if values.dim() == 0:
        raise ConfigError("soft_rank needs at least one dimension")
    chosen = _pick_backend(backend, values.device)
    shape = values.shape
    if values.numel() == 0:
        return values.clone()
    flat = values.reshape(-1, shape[-1])
    scale = sign / float(regularization_strength)
    if chosen == "torchsort":
        # torchsort ranks ascending at strength eps; descending ranks are the ascending ones of -values
        ranks = _torchsort_module().soft_rank(flat.double() * sign, "l2", float(regularization_strength))
        return ranks.to(values.dtype).reshape(shape)
    if _use_fixed_shape(values.device):
        return _SoftRankFixedShape.apply(flat, scale).reshape(shape)
    return _SoftRankCpu.apply(flat, scale).reshape(shape)


def hard_rank(values: Tensor, direction: str = "ascending") -> Tensor:
    """Ranks 1..n along the last dimension (int64); ties are ranked in order of position."""
    sign = _check_direction(direction)
    order = torch.argsort(values, dim=-1, descending=sign < 0, stable=True)
    positions = torch.arange(1, values.shape[-1] + 1, device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)
