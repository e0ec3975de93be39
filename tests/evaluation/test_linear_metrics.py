import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, balanced_accuracy_score
from torch import nn

from ssl_rs.errors import ConfigError, DataError
from ssl_rs.evaluation import (
    evaluate_scores,
    extract_features,
    linear_probe,
    multi_label_metrics,
    single_label_metrics,
)

# ---------------------------------------------------------------- metrics


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # sklearn's, intended
def test_single_label_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 6, 500)
    targets[targets == 4] = 0  # class 4 absent from the targets: excluded from acc_macro
    scores = rng.standard_normal((500, 6))
    preds = scores.argmax(axis=1)
    expected = {
        "acc_micro": 100 * accuracy_score(targets, preds),
        "acc_macro": 100 * balanced_accuracy_score(targets, preds),
    }
    for given in (scores, torch.from_numpy(scores), preds, torch.from_numpy(preds)):
        got = single_label_metrics(given, torch.from_numpy(targets), num_classes=6)
        assert got == pytest.approx(expected)


def test_multi_label_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    targets = (rng.random((300, 7)) < 0.3).astype(np.float32)
    targets[:, 5] = 0  # no positives: AP undefined, excluded from ap_macro
    scores = rng.standard_normal((300, 7)) + 2 * targets
    keep = [0, 1, 2, 3, 4, 6]
    expected = {
        "ap_macro": 100 * average_precision_score(targets[:, keep], scores[:, keep], average="macro"),
        "ap_micro": 100 * average_precision_score(targets, scores, average="micro"),
    }
    assert multi_label_metrics(torch.from_numpy(scores), torch.from_numpy(targets)) == pytest.approx(expected)


def test_evaluate_scores_dispatches_on_target_rank():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    assert evaluate_scores(scores, torch.tensor([0, 0])) == {"acc_micro": 50.0, "acc_macro": 50.0}
    assert set(evaluate_scores(scores, torch.tensor([[1, 0], [0, 1]]))) == {"ap_macro", "ap_micro"}


def test_metric_errors():
    with pytest.raises(ConfigError):
        single_label_metrics(torch.empty(0, 3), torch.empty(0, dtype=torch.int64))
    with pytest.raises(ConfigError):
        single_label_metrics(torch.zeros(4, 3), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ConfigError):
        single_label_metrics(torch.zeros(2, 3), torch.tensor([0, 3]), num_classes=3)
    with pytest.raises(ConfigError):
        multi_label_metrics(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(DataError):
        multi_label_metrics(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ConfigError, match="^absent: unknown 'nan'"):
        multi_label_metrics(torch.zeros(4, 3), torch.eye(4)[:, :3], absent="nan")


# ---------------------------------------------------------------- linear probe


def separable_problem(n=600, dim=32, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, dim, generator=g) + 10  # offset: standardisation matters
    return x[: n // 2], y[: n // 2], x[n // 2 :], y[n // 2 :]


def test_linear_probe_separable_single_label():
    result = linear_probe(*separable_problem(), epochs=30, batch_size=64, lr=1e-2)
    assert set(result) == {"acc_micro", "acc_macro", "train_loss"}
    assert result["acc_micro"] >= 99.0 and result["acc_macro"] >= 99.0
    assert result["train_loss"] < 0.1


def test_linear_probe_is_deterministic_and_keeps_global_state():
    data = separable_problem(seed=1)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    first = linear_probe(*data, epochs=5, batch_size=32, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.get_num_threads() == threads  # the single-thread cap is undone
    assert linear_probe(*data, epochs=5, batch_size=32, seed=7) == first
    assert linear_probe(*data, epochs=5, batch_size=32, seed=8)["train_loss"] != first["train_loss"]


def test_linear_probe_trains_inside_inference_mode():
    # Lightning runs validation hooks under inference mode; the probe must still train.
    data = separable_problem(seed=3)
    with torch.inference_mode():
        result = linear_probe(*data, epochs=5, batch_size=64, lr=1e-2)
    assert result["acc_micro"] >= 95.0


def test_linear_probe_multi_label_and_validation():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(400, 16, generator=g)
    x[:, :5] += x[:, :5].sign()  # a margin around 0
    targets = (x[:, :5] > 0).float()  # each label is one feature's sign: linearly separable
    result = linear_probe(
        x[:200], targets[:200], x[200:300], targets[200:300],
        epochs=40, batch_size=20, lr=1e-2, val_features=x[300:], val_targets=targets[300:],
    )
    assert set(result) == {"ap_macro", "ap_micro", "train_loss", "val_ap_macro", "val_ap_micro", "best_epoch"}
    assert result["ap_macro"] > 99.0 and result["val_ap_macro"] > 99.0
    assert 1 <= result["best_epoch"] <= 40


def test_georank_recipe_trains_on_raw_features_with_their_schedule():
    from ssl_rs.evaluation.linear import RECIPES, georank_schedule, georank_warmup_steps

    assert [georank_warmup_steps(n) for n in (100, 101, 10000, 10001)] == [0, 100, 100, 10000]
    factor = georank_schedule(30, 16200, 512)  # their EuroSAT run: 949 steps, 100 of warmup
    assert factor(0) == pytest.approx(0.1) and factor(99) == pytest.approx(1.0) and factor(100) == 1.0
    assert factor(949) == pytest.approx(0.1) and factor(960) == pytest.approx(0.1)
    assert georank_schedule(3, 1000, 512)(2) == 0.1  # their scheduler without warmup stays at lr / 10
    data = separable_problem(seed=4)
    result = linear_probe(*data, epochs=20, **{**RECIPES["georank"], "batch_size": 32})
    assert result["acc_micro"] >= 95.0
    assert linear_probe(*data, epochs=20, **{**RECIPES["georank"], "batch_size": 32}) == result


def test_standardize_off_sees_the_raw_scale():
    x_train, y_train, x_test, y_test = separable_problem(seed=5)
    options = dict(epochs=3, batch_size=64, lr=1e-3)
    scaled = (x_train * 1000, y_train, x_test * 1000, y_test)
    on = linear_probe(x_train, y_train, x_test, y_test, **options)
    assert linear_probe(*scaled, **options)["train_loss"] == pytest.approx(on["train_loss"], rel=1e-4)
    off = linear_probe(x_train, y_train, x_test, y_test, standardize=False, **options)
    raw_scaled = linear_probe(*scaled, standardize=False, **options)
    assert raw_scaled["train_loss"] != pytest.approx(off["train_loss"], rel=1e-2)


def test_linear_probe_errors():
    x_train, y_train, x_test, y_test = separable_problem()
    with pytest.raises(ConfigError):
        linear_probe(x_train, y_train, x_test[:, :5], y_test)
    with pytest.raises(ConfigError):
        linear_probe(x_train, y_train.float(), x_test, y_test)
    with pytest.raises(ConfigError):
        linear_probe(x_train, y_train, x_test, y_test, epochs=0)
    with pytest.raises(ConfigError):
        linear_probe(x_train, y_train, x_test, y_test, val_features=x_test)
    with pytest.raises(ConfigError, match="^schedule: unknown 'step'"):
        linear_probe(x_train, y_train, x_test, y_test, schedule="step")
    with pytest.raises(ConfigError, match="^init: unknown 'zeros'"):
        linear_probe(x_train, y_train, x_test, y_test, init="zeros")


# ---------------------------------------------------------------- feature extraction


class TinyNet(nn.Module):
    def __init__(self, tuple_output=False):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.dropout = nn.Dropout(0.5)
        self.tuple_output = tuple_output
        self.seen_training = []

    def forward(self, x):
        self.seen_training.append((self.training, torch.is_inference_mode_enabled(), x.dtype))
        features = self.dropout(self.body(x))
        return (features, "extra") if self.tuple_output else features


def make_loader(target_key="label", batches=3, batch_size=4):
    g = torch.Generator().manual_seed(0)
    loader = []
    for _ in range(batches):
        batch = {"image": torch.randint(0, 10000, (batch_size, 3, 8, 8), generator=g).to(torch.uint16)}
        if target_key == "label":
            batch["label"] = torch.randint(0, 5, (batch_size,), generator=g)
        else:
            batch["labels"] = torch.randint(0, 2, (batch_size, 6), generator=g).float()
        loader.append(batch)
    return loader


def test_extract_features_restores_modes_and_collects_everything():
    model = TinyNet()
    model.train()
    model.body[1].eval()  # a mixed-mode model: each submodule's own mode must come back
    loader = make_loader()
    features, targets = extract_features(model, loader, preprocess=lambda x: x.float() / 10000, progress=False)
    assert model.training and model.dropout.training and not model.body[1].training
    assert model.seen_training == [(False, True, torch.float32)] * 3
    assert features.shape == (12, 4) and features.dtype == torch.float32 and features.device.type == "cpu"
    assert not features.is_inference() and not features.requires_grad
    torch.testing.assert_close(targets, torch.cat([b["label"] for b in loader]))
    # Eval mode makes it deterministic (dropout off, BatchNorm uses running stats).
    again, _ = extract_features(model, loader, preprocess=lambda x: x.float() / 10000, progress=False)
    torch.testing.assert_close(again, features)


def test_extract_features_multi_label_tuple_output_and_uint16_cast():
    model = TinyNet(tuple_output=True).eval()
    loader = make_loader(target_key="labels")
    features, targets = extract_features(model, loader, device="cpu", progress=False)
    assert not model.training
    assert features.shape == (12, 4)
    assert targets.shape == (12, 6)
    assert model.seen_training[0] == (False, True, torch.float32)


def test_extract_features_errors():
    model = TinyNet()
    with pytest.raises(DataError):
        extract_features(model, [{"image": torch.zeros(2, 3, 8, 8)}], progress=False)
    with pytest.raises(DataError):
        extract_features(model, [], progress=False)
    assert model.training  # restored even when the loop raised
    with pytest.raises(ConfigError):
        extract_features(nn.Identity(), make_loader(), progress=False)
