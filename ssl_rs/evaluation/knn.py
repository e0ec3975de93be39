"""Weighted k-nearest-neighbour evaluation (the DINO / solo-learn protocol).

Features are L2-normalised; each query takes its ``k`` most cosine-similar training
samples and every neighbour votes with weight ``exp(sim / T)``. The defaults ``k=20`` and
``T=0.07`` are DINO's (Caron et al., 2021), also used by solo-learn, so numbers are
comparable with published k-NN tables.

Scores (``votes="mean"``, the default) are the weight-normalised votes
``sum_j w_j y_j / sum_j w_j`` where ``y_j`` is the neighbour's one-hot (single-label) or
multi-hot (multi-label) target. For single-label data this is DINO's per-class weight sum
divided by a positive per-query constant, so the predictions are identical; normalising makes
the scores class probabilities and lets the weights be computed as ``exp((sim - max_sim) / T)``,
which cannot overflow even for a tiny ``T``. For multi-label data it is a per-class score in
[0, 1] for average precision.

``votes="sum"`` keeps the raw sums ``sum_j w_j y_j`` (weights ``exp(sim / T)``), as the GeoRank
authors' ``KNNClassifier.knn_predict`` does (tomburgert/georank ``eval_base.py``). Single-label
predictions are the same either way; multi-label average precision is not, because it ranks one
class's scores across queries, and dividing each query's votes by its own total weight reorders
them (a query whose neighbours are all very similar gets larger sums).

Memory is bounded: queries are processed ``chunk_size`` at a time and the bank
``bank_chunk_size`` rows at a time, keeping a running top-k per query, so at most
``chunk_size x bank_chunk_size`` similarities exist at once.

Speed: on CPUs with AMX (bf16 matrix units) candidates are preselected with a bf16 matmul,
~4x faster than float32, then rescored in float32. Each query's result is checked against
a rigorous bound on the bf16 rounding error and recomputed in float32 when the check
fails, so the neighbours are the float32 ones either way.

Tie rules: exactly equal similarities at the k-th place are broken arbitrarily (as in
scikit-learn); equal class scores go to the lowest class index (``argmax``, as in
scikit-learn's ``predict``). Inputs in float64 are computed in float64, anything else in
float32.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .metrics import evaluate_scores

Device = Union[str, torch.device, None]

WEIGHTINGS = ("exp", "uniform")
#: ``mean``: votes divided by their total weight (default); ``sum``: raw weighted sums (GeoRank)
VOTES = ("mean", "sum")

# Candidates rescored in float32 beyond k: on the benchmark's EuroSAT-sized features 16
# leaves ~1% of queries to the float32 fallback (8: 45%, 12: 10%, 24: 0%), while the
# rescoring gather stays small. Measured with benchmarks/bench_knn.py.
BF16_EXTRA_CANDIDATES = 16

# Queries per float32 rescoring block: 64 x 36 gathered rows (~4.7 MB) stay in cache.
RESCORE_BLOCK = 64

# Column group width for the two-level top-k (see _row_topk): 64 beat 32 and 128.
TOPK_GROUP = 64


def _as_tensor(x, name: str) -> torch.Tensor:
    try:
        return torch.as_tensor(x)
    except Exception:
        raise ConfigError(f"{name}: expected a tensor or an array, got {type(x).__name__}") from None


def _check_features(x: torch.Tensor, name: str) -> None:
    if x.ndim != 2:
        raise ConfigError(f"{name}: expected shape (N, D), got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ConfigError(f"{name}: empty (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ConfigError(f"{name}: expected floating-point features, got {x.dtype}")


def _check_targets(t: torch.Tensor, n: int, name: str) -> None:
    if t.ndim not in (1, 2):
        raise ConfigError(f"{name}: expected (N,) class indices or (N, C) multi-hot, got {tuple(t.shape)}")
    if t.shape[0] != n:
        raise ConfigError(f"{name}: {t.shape[0]} rows but the features have {n}")
    if t.ndim == 1 and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise ConfigError(f"{name}: single-label targets must be integer class indices, got {t.dtype}")
    if t.ndim == 1 and t.numel() and t.min() < 0:
        raise ConfigError(f"{name}: class indices must be >= 0, got {int(t.min())}")


def _infer_num_classes(*targets: torch.Tensor) -> int:
    """Columns of multi-hot targets, or the largest class index + 1."""
    if targets[0].ndim == 2:
        return int(targets[0].shape[1])
    return int(max(int(t.max()) for t in targets if t.numel())) + 1


def _row_topk(sim: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``sim.topk(k, dim=1)`` (unsorted), ~3x faster on wide rows.

    Columns are split into groups of ``TOPK_GROUP``; the k largest values lie in the k
    groups with the largest maxima (a group outside them has k groups above it, hence k
    larger values), so only those groups and the ragged tail are searched.

    bf16 ``amax`` is not vectorised on CPU, so bf16 group maxima are taken on the int16
    bit patterns, which sort like the values for non-negative numbers (all negatives sort
    below them). The result is therefore exact for rows whose k-th value is > 0; the
    other rows are redone with a plain topk.
    """
    n, m = sim.shape
    n_groups = m // TOPK_GROUP
    if n_groups < 4 * k or sim.dtype not in (torch.bfloat16, torch.float32, torch.float64):
        return sim.topk(k, dim=1, sorted=False)
    keys = sim[:, : n_groups * TOPK_GROUP]
    if sim.dtype == torch.bfloat16:
        keys = keys.view(torch.int16)
    top_groups = keys.reshape(n, n_groups, TOPK_GROUP).amax(dim=2).topk(k, dim=1, sorted=False).indices
    offsets = torch.arange(TOPK_GROUP, device=sim.device)
    cols = (top_groups.unsqueeze(2) * TOPK_GROUP + offsets).reshape(n, k * TOPK_GROUP)
    if m > n_groups * TOPK_GROUP:
        tail = torch.arange(n_groups * TOPK_GROUP, m, device=sim.device).expand(n, -1)
        cols = torch.cat([cols, tail], dim=1)
    values, pos = sim.gather(1, cols).topk(k, dim=1, sorted=False)
    idx = cols.gather(1, pos)
    if sim.dtype == torch.bfloat16:
        redo = (values.amin(dim=1) <= 0).nonzero().squeeze(1)
        if redo.numel():
            values[redo], idx[redo] = sim[redo].topk(k, dim=1, sorted=False)
    return values, idx


def _topk_neighbours(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    bank_chunk_size: int,
    bank_inv_norm: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k similarities and bank indices per query, scanning the bank in chunks.

    ``bank_inv_norm``, when given, scales the similarities of a bank that is not normalised.
    """
    best_sim: Optional[torch.Tensor] = None
    best_idx: Optional[torch.Tensor] = None
    for start in range(0, bank.shape[0], bank_chunk_size):
        sim = queries @ bank[start : start + bank_chunk_size].T
        if bank_inv_norm is not None:
            sim *= bank_inv_norm[start : start + bank_chunk_size]
        sim, idx = _row_topk(sim, min(k, sim.shape[1]))
        if start:
            idx += start
        if best_sim is None:
            best_sim, best_idx = sim, idx
        else:
            sim = torch.cat([best_sim, sim], dim=1)
            idx = torch.cat([best_idx, idx], dim=1)
            best_sim, pos = sim.topk(min(k, sim.shape[1]), dim=1, sorted=False)
            best_idx = idx.gather(1, pos)
    assert best_sim is not None and best_idx is not None
    return best_sim, best_idx


def _bf16_is_fast(device: torch.device) -> bool:
    """True on CPUs with AMX tiles, where a bf16 matmul is ~4x faster than float32."""
    if device.type != "cpu":
        return False
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except Exception:  # private API: absent on other builds
        return False


@contextlib.contextmanager
def _float32_accumulation(device: torch.device) -> Iterator[None]:
    """bf16 matmuls that accumulate in float32, as the error bound of the preselection assumes:
    cuBLAS may otherwise reduce partial sums in bf16 (``allow_bf16_reduced_precision_reduction``,
    on by default); the CPU kernels accumulate in float32."""
    if device.type != "cuda":
        yield
        return
    flags = torch.backends.cuda.matmul
    before = flags.allow_bf16_reduced_precision_reduction
    flags.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        flags.allow_bf16_reduced_precision_reduction = before


class _Bf16Bank:
    """The normalised bank rounded to bf16, plus what bounds the rounding error.

    The float32 bank is kept unnormalised with its inverse row norms: rescoring scales a
    few similarities instead of materialising a normalised copy of the whole bank.
    """

    def __init__(self, bank: torch.Tensor, block: int = 4096):
        self.raw = bank
        self.inv_norm = torch.linalg.vector_norm(bank, dim=1).clamp_min_(1e-12).reciprocal_()
        self.low = torch.empty(bank.shape, dtype=torch.bfloat16, device=bank.device)
        self.max_residual = 0.0
        # In blocks: bank-sized temporaries cost more in page faults than the arithmetic.
        for i in range(0, bank.shape[0], block):
            unit = bank[i : i + block] * self.inv_norm[i : i + block, None]
            self.low[i : i + block] = unit
            residual = torch.linalg.vector_norm(unit - self.low[i : i + block], dim=1).max()
            self.max_residual = max(self.max_residual, float(residual))


def _topk_neighbours_bf16(
    queries: torch.Tensor, bank: _Bf16Bank, k: int, n_candidates: int, bank_chunk_size: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float32 top-k of candidates preselected by a fast bf16 matmul, and which rows to redo.

    The bf16 top-``n_candidates`` are rescored in float32. A row is certain only if its
    k-th exact similarity beats an upper bound on the similarity of every sample that was
    not a candidate; the caller recomputes the uncertain rows (third return value, row
    indices) with :func:`_topk_neighbours`, so the final neighbours are the float32 ones.
    """
    q_low = queries.to(torch.bfloat16)
    q_low_f = q_low.float()
    with _float32_accumulation(queries.device):
        coarse, cand = _topk_neighbours(q_low, bank.low, n_candidates, bank_chunk_size)
    n, d = queries.shape
    exact = torch.empty(cand.shape, dtype=queries.dtype, device=queries.device)
    # Small blocks keep the gathered rows in cache: 3x faster than one big gather.
    for start in range(0, n, RESCORE_BLOCK):
        block = cand[start : start + RESCORE_BLOCK]
        rows = bank.raw.index_select(0, block.reshape(-1)).view(block.shape[0], n_candidates, d)
        dots = torch.bmm(rows, queries[start : start + RESCORE_BLOCK].unsqueeze(2)).squeeze(2)
        exact[start : start + RESCORE_BLOCK] = dots * bank.inv_norm[block]
    sim, pos = exact.topk(k, dim=1, sorted=False)
    idx = cand.gather(1, pos)

    # A non-candidate j has bf16 score <= the smallest candidate score c. Its true similarity
    # q.b_j = q_lo.b_j + q_hi.b_hi_j + q_hi.b_lo_j (Cauchy-Schwarz bounds the two residual
    # terms by their norms); q_hi.b_hi_j exceeds c by at most one bf16 rounding of the output
    # (2^-8 |c|, as x + 2^-8 |x| is increasing) plus float32 accumulation error: d 2^-24
    # each for the bf16 matmul and the rescoring, so d 2^-22 leaves room for the rest.
    c = coarse.amin(dim=1).float()
    bound = (
        c
        + c.abs() * 2.0**-8
        + (queries - q_low_f).norm(dim=1)
        + q_low_f.norm(dim=1) * bank.max_residual
        + d * 2.0**-22
    )
    uncertain = (sim.amin(dim=1) <= bound).nonzero().squeeze(1)
    return sim, idx, uncertain


@torch.no_grad()
def knn_scores(
    train_features,
    train_targets,
    test_features,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: Optional[int] = None,
    weighting: str = "exp",
    chunk_size: int = 256,
    bank_chunk_size: int = 32768,
    bf16_prefilter: Optional[bool] = None,
    device: Device = None,
    votes: str = "mean",
) -> torch.Tensor:
    """Weighted k-NN class scores for every test sample.

    Args:
        train_features: (N_train, D) bank features (need not be normalised).
        train_targets: (N_train,) int class indices or (N_train, C) multi-hot.
        test_features: (N_test, D) query features.
        k: neighbours per query (DINO: 20); clipped to the bank size.
        temperature: ``T`` in the vote weight ``exp(sim / T)`` (DINO: 0.07).
        num_classes: number of classes C (default: largest train index + 1, or the
            multi-hot width).
        weighting: ``"exp"`` (DINO) or ``"uniform"`` (every neighbour weighs 1).
        chunk_size: queries per chunk; 256 was fastest on CPU (benchmarks/bench_knn.py:
            larger chunks thrash the cache and the allocator).
        bank_chunk_size: bank rows per chunk; bounds memory to ``chunk_size x
            bank_chunk_size`` similarities (32 MiB in float32 with the defaults).
        bf16_prefilter: preselect candidates with a bf16 matmul and rescore them in float32
            (same neighbours, verified per query; see :func:`_topk_neighbours_bf16`).
            Default: on for float32 on CPUs with AMX, where it is ~2x faster overall.
        device: where to compute (default: the device of ``train_features``).
        votes: ``"mean"`` (scores divided by the neighbours' total weight) or ``"sum"`` (raw
            weighted sums, the GeoRank authors' k-NN); see the module docstring.

    Returns:
        (N_test, C) scores on the CPU; with ``votes="mean"`` each row sums to 1.
    """
    bank = _as_tensor(train_features, "train_features")
    queries = _as_tensor(test_features, "test_features")
    targets = _as_tensor(train_targets, "train_targets")
    _check_features(bank, "train_features")
    _check_features(queries, "test_features")
    if queries.shape[1] != bank.shape[1]:
        raise ConfigError(
            f"test_features: dimension {queries.shape[1]} does not match train_features {bank.shape[1]}"
        )
    _check_targets(targets, bank.shape[0], "train_targets")
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"weighting: unknown {weighting!r} (use one of {WEIGHTINGS})")
    if votes not in VOTES:
        raise ConfigError(f"votes: unknown {votes!r} (use one of {VOTES})")
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k: must be a positive integer, got {k!r}")
    if not temperature > 0:
        raise ConfigError(f"temperature: must be > 0, got {temperature!r}")
    if chunk_size < 1 or bank_chunk_size < 1:
        raise ConfigError(f"chunk sizes must be >= 1, got {chunk_size} and {bank_chunk_size}")

    multi_label = targets.ndim == 2
    n_classes = _infer_num_classes(targets) if num_classes is None else int(num_classes)
    if multi_label and n_classes != targets.shape[1]:
        raise ConfigError(f"num_classes: {n_classes} but the multi-hot targets have {targets.shape[1]} columns")
    if not multi_label and int(targets.max()) >= n_classes:
        raise ConfigError(f"train_targets: class index {int(targets.max())} >= num_classes {n_classes}")

    dev = torch.device(device) if device is not None else bank.device
    dtype = torch.float64 if bank.dtype == torch.float64 and queries.dtype == torch.float64 else torch.float32
    bank = bank.to(dev, dtype)
    queries = F.normalize(queries.to(dev, dtype), dim=1)
    targets = targets.to(dev, dtype if multi_label else torch.int64)
    k = min(k, bank.shape[0])
    n_candidates = k + BF16_EXTRA_CANDIDATES
    if bf16_prefilter is None:
        bf16_prefilter = _bf16_is_fast(dev)
    bf16_bank = None
    bank_inv_norm = None
    if bf16_prefilter and dtype == torch.float32 and bank.shape[0] > 2 * n_candidates:
        bf16_bank = _Bf16Bank(bank)
        bank_inv_norm = bf16_bank.inv_norm
    else:
        bank = F.normalize(bank, dim=1)

    n_test = queries.shape[0]
    sims = torch.empty(n_test, k, dtype=dtype, device=dev)
    neighbours = torch.empty(n_test, k, dtype=torch.int64, device=dev)
    uncertain = []
    for start in range(0, n_test, chunk_size):
        chunk = queries[start : start + chunk_size]
        if bf16_bank is not None:
            sim, idx, redo = _topk_neighbours_bf16(chunk, bf16_bank, k, n_candidates, bank_chunk_size)
            uncertain.append(redo + start)
        else:
            sim, idx = _topk_neighbours(chunk, bank, k, bank_chunk_size)
        sims[start : start + chunk_size] = sim
        neighbours[start : start + chunk_size] = idx
    if uncertain:
        # Batched: a float32 pass over the bank costs the same for 1 row as for hundreds.
        redo = torch.cat(uncertain)
        for start in range(0, redo.numel(), chunk_size):
            rows = redo[start : start + chunk_size]
            sims[rows], neighbours[rows] = _topk_neighbours(
                queries[rows], bank, k, bank_chunk_size, bank_inv_norm
            )

    out = torch.empty(n_test, n_classes, dtype=dtype)
    for start in range(0, n_test, chunk_size):
        sim = sims[start : start + chunk_size]
        idx = neighbours[start : start + chunk_size]
        if weighting == "uniform":
            weights = torch.ones_like(sim)
        elif votes == "mean":
            # Shift by the per-query maximum: a constant factor that normalisation cancels.
            weights = ((sim - sim.amax(dim=1, keepdim=True)) / temperature).exp_()
        else:
            weights = (sim / temperature).exp_()
            if not bool(torch.isfinite(weights).all()):
                raise ConfigError(f"temperature: {temperature!r} is too small for votes='sum' (exp(sim / T) "
                                  f"overflows {dtype}); use a larger temperature or votes='mean'")
        if multi_label:
            class_votes = torch.bmm(weights.unsqueeze(1), targets[idx]).squeeze(1)
        else:
            class_votes = torch.zeros(sim.shape[0], n_classes, dtype=dtype, device=dev)
            class_votes.scatter_add_(1, targets[idx], weights)
        if votes == "mean":
            class_votes = class_votes / weights.sum(dim=1, keepdim=True)
        out[start : start + chunk_size] = class_votes.cpu()
    return out


def knn_evaluate(
    train_features,
    train_targets,
    test_features,
    test_targets,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: Optional[int] = None,
    weighting: str = "exp",
    chunk_size: int = 256,
    bank_chunk_size: int = 32768,
    bf16_prefilter: Optional[bool] = None,
    device: Device = None,
    votes: str = "mean",
) -> Dict[str, float]:
    """k-NN scores (see :func:`knn_scores`; ``votes="sum"`` reproduces the GeoRank authors'
    multi-label average precision) turned into metrics.

    Returns:
        ``{"acc_micro", "acc_macro"}`` for (N,) single-label targets or ``{"ap_macro",
        "ap_micro"}`` for (N, C) multi-hot targets, in percent (see ``metrics.py``).
    """
    train_t = _as_tensor(train_targets, "train_targets")
    test_t = _as_tensor(test_targets, "test_targets")
    if test_t.ndim != train_t.ndim:
        raise ConfigError(
            f"test_targets: rank {test_t.ndim} does not match train_targets rank {train_t.ndim}"
        )
    if test_t.ndim == 1:
        _check_targets(test_t, test_t.shape[0], "test_targets")
        if num_classes is None and train_t.ndim == 1 and train_t.numel() and test_t.numel():
            # A test class absent from the bank still needs a column (it scores 0).
            num_classes = _infer_num_classes(train_t, test_t)
    scores = knn_scores(
        train_features,
        train_t,
        test_features,
        k=k,
        temperature=temperature,
        num_classes=num_classes,
        weighting=weighting,
        chunk_size=chunk_size,
        bank_chunk_size=bank_chunk_size,
        bf16_prefilter=bf16_prefilter,
        device=device,
        votes=votes,
    )
    if test_t.shape[0] != scores.shape[0]:
        raise ConfigError(f"test_targets: {test_t.shape[0]} rows but test_features has {scores.shape[0]}")
    return evaluate_scores(scores, test_t, num_classes=scores.shape[1])
