import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from ssl_rs.errors import ConfigError
from ssl_rs.evaluation import knn as knn_module
from ssl_rs.evaluation import knn_evaluate, knn_scores

T = 0.07


def random_problem(n_train=2000, n_test=300, dim=64, classes=5, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x_train = rng.standard_normal((n_train, dim)).astype(dtype)
    x_test = rng.standard_normal((n_test, dim)).astype(dtype)
    return x_train, rng.integers(0, classes, n_train), x_test, rng.integers(0, classes, n_test)


def sklearn_predict(x_train, y_train, x_test, k=20, weights=None):
    weights = weights or (lambda d: np.exp((1.0 - d) / T))
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute", weights=weights)
    return clf.fit(x_train, y_train).predict(x_test)


def ours_predict(x_train, y_train, x_test, **kwargs):
    scores = knn_scores(torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test), **kwargs)
    return scores.argmax(dim=1).numpy()


def test_matches_sklearn_float64():
    x_train, y_train, x_test, _ = random_problem()
    expected = sklearn_predict(x_train, y_train, x_test)
    np.testing.assert_array_equal(ours_predict(x_train, y_train, x_test), expected)


@pytest.mark.parametrize("bf16_prefilter", [False, True])
def test_matches_sklearn_float32(bf16_prefilter):
    x_train, y_train, x_test, _ = random_problem(seed=1)
    expected = sklearn_predict(x_train, y_train, x_test)
    got = ours_predict(
        x_train.astype(np.float32), y_train, x_test.astype(np.float32), bf16_prefilter=bf16_prefilter
    )
    np.testing.assert_array_equal(got, expected)


def test_uniform_weighting_matches_sklearn():
    # Vote counts tie often with uniform weights; both sides pick the lowest class index.
    x_train, y_train, x_test, _ = random_problem(seed=2)
    expected = sklearn_predict(x_train, y_train, x_test, weights="uniform")
    np.testing.assert_array_equal(ours_predict(x_train, y_train, x_test, weighting="uniform"), expected)


def test_scores_are_normalised_dino_votes():
    x_train, y_train, x_test, _ = random_problem(n_train=50, n_test=3, dim=8, seed=3)
    scores = knn_scores(torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test), k=5)
    bank = x_train / np.linalg.norm(x_train, axis=1, keepdims=True)
    for q, row in zip(x_test, scores.numpy()):
        sim = bank @ (q / np.linalg.norm(q))
        top = np.argsort(-sim)[:5]
        votes = np.bincount(y_train[top], weights=np.exp(sim[top] / T), minlength=5)
        np.testing.assert_allclose(row, votes / votes.sum(), rtol=1e-10)
    np.testing.assert_allclose(scores.sum(dim=1).numpy(), 1.0)


@pytest.mark.parametrize("targets", ["single", "multi"])
def test_summed_votes_are_the_normalised_votes_times_the_weight_total(targets):
    # votes="sum": the GeoRank authors' raw exp(sim / T) sums (eval_base.py knn_predict)
    x_train, y_train, x_test, _ = random_problem(n_train=60, n_test=7, dim=8, seed=5)
    y = torch.from_numpy(y_train) if targets == "single" else torch.from_numpy(np.eye(5)[y_train]) * 1.0
    args = (torch.from_numpy(x_train), y, torch.from_numpy(x_test))
    summed = knn_scores(*args, k=6, temperature=0.9, votes="sum")
    mean = knn_scores(*args, k=6, temperature=0.9)
    bank = x_train / np.linalg.norm(x_train, axis=1, keepdims=True)
    for q, row_sum, row_mean in zip(x_test, summed.numpy(), mean.numpy()):
        sim = np.sort(bank @ (q / np.linalg.norm(q)))[-6:]
        np.testing.assert_allclose(row_sum, row_mean * np.exp(sim / 0.9).sum(), rtol=1e-10)
    assert not torch.allclose(summed.sum(dim=1), torch.ones(7, dtype=summed.dtype))


def test_summed_votes_refuse_a_temperature_that_overflows():
    x_train, y_train, x_test, _ = random_problem(n_train=30, n_test=2, dim=4, seed=6, dtype=np.float32)
    with pytest.raises(ConfigError, match="^temperature: 0.001 is too small for votes='sum'"):
        knn_scores(torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test),
                   temperature=1e-3, votes="sum")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chunked_equals_unchunked(dtype):
    x_train, y_train, x_test, _ = random_problem(n_train=500, n_test=90, dim=16, seed=4, dtype=dtype)
    args = (torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test))
    whole = knn_scores(*args, chunk_size=10_000, bank_chunk_size=10_000, bf16_prefilter=False)
    chunked = knn_scores(*args, chunk_size=7, bank_chunk_size=13, bf16_prefilter=False)
    torch.testing.assert_close(chunked, whole)


def test_bf16_prefilter_equals_exact_including_fallback(monkeypatch):
    # Half the bank and queries are random (the bf16 candidates are provably right), half
    # sit in a tight cluster whose similarities differ by less than the bf16 error bound
    # (those queries must take the float32 fallback). Both halves must equal the exact path.
    rng = np.random.default_rng(5)
    spread = rng.standard_normal((2, 1600, 32)).astype(np.float32)
    tight = (1.0 + 0.3 * rng.standard_normal((2, 1600, 32))).astype(np.float32)
    x_train = torch.from_numpy(np.concatenate([spread[0], tight[0]]))
    x_test = torch.from_numpy(np.concatenate([spread[1, :100], tight[1, :100]]))
    y_train = torch.from_numpy(rng.integers(0, 5, 3200))

    fallback_rows = []
    original = knn_module._topk_neighbours

    def spy(queries, bank, *args):
        if bank.dtype == torch.float32:
            fallback_rows.append(queries.shape[0])
        return original(queries, bank, *args)

    monkeypatch.setattr(knn_module, "_topk_neighbours", spy)
    fast = knn_scores(x_train, y_train, x_test, bf16_prefilter=True, chunk_size=64, bank_chunk_size=1000)
    assert 50 <= sum(fallback_rows) < len(x_test)
    exact = knn_scores(x_train, y_train, x_test, bf16_prefilter=False)
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-5)


def test_k_larger_than_bank_is_clipped():
    x_train, y_train, x_test, _ = random_problem(n_train=5, n_test=4, dim=8, seed=7)
    args = (torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test))
    torch.testing.assert_close(knn_scores(*args, k=20), knn_scores(*args, k=5))


def test_multi_label_hand_computed():
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.0]])
    targets = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    query = torch.tensor([[2.0, 0.0]])
    # Cosine similarities to the query: 1, 0, 1/sqrt(2), -1; k=3 keeps samples 0, 2, 1.
    w0, w1, w2 = math.exp(1 / 0.1), math.exp(0 / 0.1), math.exp(math.sqrt(0.5) / 0.1)
    total = w0 + w1 + w2
    expected = torch.tensor([[(w0 + w2) / total, (w1 + w2) / total, w0 / total]])
    got = knn_scores(bank, targets, query, k=3, temperature=0.1)
    torch.testing.assert_close(got, expected)


def test_knn_evaluate_keys_and_values():
    x_train, y_train, x_test, _ = random_problem(n_train=200, n_test=50, dim=8, seed=8)
    x_train, x_test = torch.from_numpy(x_train), torch.from_numpy(x_test)
    # Queries identical to bank samples: their own label wins, accuracy is 100%.
    single = knn_evaluate(x_train, torch.from_numpy(y_train), x_train[:50], torch.from_numpy(y_train[:50]), k=1)
    assert single == {"acc_micro": 100.0, "acc_macro": 100.0}
    multi_targets = torch.from_numpy(np.random.default_rng(9).integers(0, 2, (200, 6))).float()
    multi = knn_evaluate(x_train, multi_targets, x_train[:50], multi_targets[:50], k=1)
    assert set(multi) == {"ap_macro", "ap_micro"}
    assert multi["ap_micro"] == pytest.approx(100.0)


def test_test_class_absent_from_bank():
    bank = torch.randn(20, 4, dtype=torch.float64)
    result = knn_evaluate(bank, torch.zeros(20, dtype=torch.int64), bank[:4], torch.tensor([0, 0, 3, 3]))
    assert result == {"acc_micro": 50.0, "acc_macro": 50.0}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"train_features": torch.empty(0, 8)},
        {"test_features": torch.empty(0, 8)},
        {"test_features": torch.randn(3, 7)},
        {"train_targets": torch.zeros(9, dtype=torch.int64)},
        {"train_targets": torch.zeros(10)},
        {"k": 0},
        {"temperature": 0.0},
        {"weighting": "distance"},
        {"votes": "max"},
        {"num_classes": 1, "train_targets": torch.arange(10)},
    ],
)
def test_invalid_inputs_raise_config_error(kwargs):
    args = {
        "train_features": torch.randn(10, 8),
        "train_targets": torch.zeros(10, dtype=torch.int64),
        "test_features": torch.randn(3, 8),
    }
    args.update(kwargs)
    extra = {k: args.pop(k) for k in list(args) if k not in ("train_features", "train_targets", "test_features")}
    with pytest.raises(ConfigError):
        knn_scores(args["train_features"], args["train_targets"], args["test_features"], **extra)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_grouped_row_topk_equals_topk(dtype):
    # Wide rows take the grouped path; rows shifted negative exercise the bf16 redo.
    g = torch.Generator().manual_seed(10)
    sim = torch.randn(40, 5000, generator=g)
    sim[::3] -= 10.0
    sim[1::3, 100:110] = 0.0  # ties and zeros
    sim = sim.to(dtype)
    values, idx = knn_module._row_topk(sim, 36)
    expected = sim.topk(36, dim=1).values
    torch.testing.assert_close(values.sort(dim=1, descending=True).values, expected, rtol=0, atol=0)
    torch.testing.assert_close(sim.gather(1, idx), values, rtol=0, atol=0)


def test_bf16_preselection_on_cuda_accumulates_in_float32_and_restores_the_flag(monkeypatch):
    """The error bound of the bf16 preselection assumes float32 accumulation; cuBLAS may reduce in
    bf16 unless told not to, so the flag is off during the preselection and restored afterwards."""
    import ssl_rs.evaluation.knn as knn

    flags = torch.backends.cuda.matmul
    assert flags.allow_bf16_reduced_precision_reduction  # PyTorch's default
    seen = []
    real = knn._topk_neighbours
    monkeypatch.setattr(knn, "_topk_neighbours", lambda *a: seen.append(flags.allow_bf16_reduced_precision_reduction)
                        or real(*a))
    with knn._float32_accumulation(torch.device("cuda")):  # the switch itself needs no GPU
        knn._topk_neighbours(torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(16, 8, dtype=torch.bfloat16), 3, 8)
    with knn._float32_accumulation(torch.device("cpu")):
        knn._topk_neighbours(torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(16, 8, dtype=torch.bfloat16), 3, 8)
    assert seen == [False, True] and flags.allow_bf16_reduced_precision_reduction
