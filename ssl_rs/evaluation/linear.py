"""Linear probe on frozen features.

One ``nn.Linear`` on standardised features (train mean and std), trained with AdamW and a
per-step cosine learning-rate schedule: cross-entropy for single-label targets,
BCE-with-logits for multi-hot targets. Defaults and why:

- ``epochs=100``: the usual linear-evaluation budget (MoCo, SSL4EO-S12).
- ``lr=1e-3``, ``batch_size=1024``: on standardised features Adam converges well within
  the budget at this rate; EuroSAT-sized data (27k x 512, 10 classes) gets ~30 steps per
  epoch and trains in ~5 s on 2 CPU cores.
- ``weight_decay=1e-2``: PyTorch's AdamW default, a mild regulariser that does not need
  tuning per dataset.

Deterministic for a given ``seed``: the initial weights and the shuffling come from a
private generator (the global RNG is untouched).

``**RECIPES["georank"]`` (the harness's ``linear_recipe="georank"``) follows the GeoRank authors'
``LinearClassifier`` (tomburgert/georank ``eval_base.py``, run for 30 epochs by
``ssl_experiments.py`` with ``conf/ssl_config.yaml``) as far as a probe on frozen features can:
AdamW at lr 1e-3, weight decay 0.01, batch 512, their per-step schedule (:func:`georank_schedule`), raw features (no
standardisation) and ``nn.Linear``'s own initialisation. What it cannot follow: they run the
frozen backbone on every batch in training mode, so its BatchNorm layers normalise with batch
statistics and move their running statistics to the downstream data, on images randomly flipped
with p = 0.8; here the features are computed once, in eval mode, without augmentation.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .metrics import evaluate_scores

Device = Union[str, torch.device, None]

#: ``cosine``: from lr down to 0, no warmup; ``georank``: :func:`georank_schedule`
SCHEDULES = ("cosine", "georank")
#: ``small``: N(0, 0.01) weights and zero bias, as MAE's linear probe; ``torch``: ``nn.Linear``'s
#: default, U(-1/sqrt(D), 1/sqrt(D)) for weights and bias
INITS = ("small", "torch")
#: start and end of :func:`georank_schedule`, as fractions of the learning rate (their lr / 10)
GEORANK_FLOOR = 0.1
#: named settings of :func:`linear_probe`; ``georank``: the authors' recipe (module docstring)
RECIPES: Dict[str, Dict[str, Any]] = {
    "ssl-rs": {},
    "georank": {"lr": 1e-3, "weight_decay": 1e-2, "batch_size": 512, "schedule": "georank",
                "standardize": False, "init": "torch"},
}

# Below this many multiply-adds per step, one CPU thread is faster: the steps are too small
# to split, and on a busy machine every multi-threaded op waits for a descheduled worker
# (measured 20x slower with 2 threads on 2 shared cores for 1024 x 512 x 10 steps).
SINGLE_THREAD_MACS = 1 << 25


@contextlib.contextmanager
def _cpu_threads(n: int) -> Iterator[None]:
    """Temporarily cap torch's intra-op CPU threads at ``n``."""
    previous = torch.get_num_threads()
    if n >= previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _features(x, name: str) -> Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ConfigError(f"{name}: expected non-empty (N, D) features, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ConfigError(f"{name}: expected floating-point features, got {x.dtype}")
    return x


def _targets(t, n: int, multi_label: bool, name: str) -> Tensor:
    t = torch.as_tensor(t)
    if t.shape[:1] != (n,):
        raise ConfigError(f"{name}: expected {n} rows to match the features, got shape {tuple(t.shape)}")
    if multi_label:
        if t.ndim != 2:
            raise ConfigError(f"{name}: multi-label targets must be (N, C) multi-hot, got shape {tuple(t.shape)}")
    else:
        if t.ndim != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise ConfigError(
                f"{name}: single-label targets must be (N,) integer class indices, got {t.dtype} {tuple(t.shape)}"
            )
        if t.min() < 0:
            raise ConfigError(f"{name}: class indices must be >= 0, got {int(t.min())}")
    return t


def georank_warmup_steps(max_intervals: int) -> int:
    """The GeoRank authors' warmup length for a run they count as ``max_intervals`` steps:
    10000 beyond 10000 steps, else 100 beyond 100 steps, else none (``eval_base.py``)."""
    return 10000 if max_intervals > 10000 else 100 if max_intervals > 100 else 0


def georank_schedule(epochs: int, n_train: int, batch_size: int) -> Callable[[int], float]:
    """The learning-rate factor of step ``s`` (0-based) under the GeoRank authors' linear-probe and
    fine-tuning schedule: their ``LinearWarmupCosineAnnealingLR`` (``utils.py``, pl_bolts') stepped
    per batch over ``max_intervals = int(epochs * n_train / batch_size)`` steps with
    ``warmup_start_lr = eta_min = lr / 10``: linear from 0.1 at step 0 to 1 at step ``warmup - 1``
    (:func:`georank_warmup_steps`), then a cosine from 1 at step ``warmup`` to 0.1 at step
    ``max_intervals``. Two quirks of theirs are kept or bounded: without warmup (runs of at most
    100 steps) their scheduler starts at lr / 10 and its chained cosine stays there; steps past
    ``max_intervals`` (the partial last batch of each epoch adds some) stay at 0.1 here, where
    theirs turn back up by a negligible amount."""
    max_intervals = max(1, int(epochs * n_train / batch_size))
    warmup = georank_warmup_steps(max_intervals)

    def factor(step: int) -> float:
        if warmup == 0:
            return GEORANK_FLOOR
        if step < warmup:
            return GEORANK_FLOOR + (1.0 - GEORANK_FLOOR) * step / (warmup - 1)
        progress = min(1.0, (step - warmup) / (max_intervals - warmup))
        return GEORANK_FLOOR + (1.0 - GEORANK_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def linear_probe(
    train_features,
    train_targets,
    test_features,
    test_targets,
    *,
    multi_label: Optional[bool] = None,
    num_classes: Optional[int] = None,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    batch_size: Optional[int] = 1024,
    seed: int = 0,
    device: Device = None,
    val_features=None,
    val_targets=None,
    schedule: str = "cosine",
    standardize: bool = True,
    init: str = "small",
) -> Dict[str, float]:
    """Train a linear classifier on ``train_*`` and evaluate it on ``test_*``.

    Args:
        train_features, test_features: (N, D) features.
        train_targets, test_targets: (N,) int class indices or (N, C) multi-hot.
        multi_label: default: True when the train targets are (N, C).
        num_classes: default: the multi-hot width, or the largest class index + 1.
        epochs, lr, weight_decay, batch_size: see the module docstring; ``batch_size=None``
            trains full-batch.
        seed: seeds the weight initialisation and the shuffling.
        device: where to train (default: the device of ``train_features``).
        val_features, val_targets: optional; when given, the epoch with the best
            validation score (``acc_micro`` or ``ap_macro``) is the one tested.
        schedule: ``"cosine"`` (per step, from ``lr`` to 0) or ``"georank"``
            (:func:`georank_schedule`).
        standardize: scale features by the train split's mean and std first (``False``: raw).
        init: the classifier's initial weights, ``"small"`` or ``"torch"`` (:data:`INITS`).
        The GeoRank authors' settings of these together: ``**RECIPES["georank"]``.

    Returns:
        The test metrics (``acc_micro``/``acc_macro`` or ``ap_macro``/``ap_micro``, percent)
        plus ``train_loss`` (mean loss of the last epoch); with validation data also
        ``val_<metric>`` of the selected epoch and ``best_epoch`` (1-based).
    """
    x_train = _features(train_features, "train_features")
    x_test = _features(test_features, "test_features")
    if x_test.shape[1] != x_train.shape[1]:
        raise ConfigError(
            f"test_features: dimension {x_test.shape[1]} does not match train_features {x_train.shape[1]}"
        )
    if multi_label is None:
        multi_label = torch.as_tensor(train_targets).ndim == 2
    y_train = _targets(train_targets, x_train.shape[0], multi_label, "train_targets")
    y_test = _targets(test_targets, x_test.shape[0], multi_label, "test_targets")
    has_val = val_features is not None or val_targets is not None
    if has_val:
        if val_features is None or val_targets is None:
            raise ConfigError("val_features and val_targets must be given together")
        x_val = _features(val_features, "val_features")
        if x_val.shape[1] != x_train.shape[1]:
            raise ConfigError(
                f"val_features: dimension {x_val.shape[1]} does not match train_features {x_train.shape[1]}"
            )
        y_val = _targets(val_targets, x_val.shape[0], multi_label, "val_targets")
    if epochs < 1 or not lr > 0 or weight_decay < 0 or (batch_size is not None and batch_size < 1):
        raise ConfigError(
            f"invalid schedule: epochs={epochs}, lr={lr}, weight_decay={weight_decay}, batch_size={batch_size}"
        )
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule: unknown {schedule!r} (use one of {SCHEDULES})")
    if init not in INITS:
        raise ConfigError(f"init: unknown {init!r} (use one of {INITS})")

    label_sets = [y_train, y_test] + ([y_val] if has_val else [])
    if multi_label:
        if any(t.shape[1] != y_train.shape[1] for t in label_sets):
            raise ConfigError("multi-hot targets of train, test and val must have the same number of columns")
        n_classes = y_train.shape[1]
        if num_classes is not None and num_classes != n_classes:
            raise ConfigError(f"num_classes: {num_classes} but the multi-hot targets have {n_classes} columns")
    else:
        largest = max(int(t.max()) for t in label_sets)
        n_classes = largest + 1 if num_classes is None else int(num_classes)
        if largest >= n_classes:
            raise ConfigError(f"targets: class index {largest} >= num_classes {n_classes}")

    dev = torch.device(device) if device is not None else x_train.device
    step_size = x_train.shape[0] if batch_size is None else min(batch_size, x_train.shape[0])
    small = dev.type == "cpu" and step_size * x_train.shape[1] * n_classes < SINGLE_THREAD_MACS
    # Grad explicitly on: callers may sit in no_grad/inference mode (e.g. a Lightning hook).
    with _cpu_threads(1 if small else torch.get_num_threads()), torch.inference_mode(False), torch.enable_grad():
        return _train_and_test(
            x_train,
            y_train,
            x_test,
            y_test,
            (x_val, y_val) if has_val else None,
            multi_label=multi_label,
            n_classes=n_classes,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            step_size=step_size,
            seed=seed,
            dev=dev,
            schedule=schedule,
            standardize=bool(standardize),
            init=init,
        )


def _train_and_test(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    val: Optional[tuple],
    *,
    multi_label: bool,
    n_classes: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    step_size: int,
    seed: int,
    dev: torch.device,
    schedule: str = "cosine",
    standardize: bool = True,
    init: str = "small",
) -> Dict[str, float]:
    """The probe itself, on validated inputs (see :func:`linear_probe`)."""
    x_train = x_train.to(dev, torch.float32)
    if standardize:
        mean = x_train.mean(dim=0)
        std = x_train.std(dim=0)
        # Constant features carry no signal; dividing by ~0 would only blow up test values.
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
    else:
        mean = torch.zeros(x_train.shape[1], device=dev)
        std = torch.ones(x_train.shape[1], device=dev)

    def standardise(x: Tensor) -> Tensor:
        return (x.to(dev, torch.float32) - mean) / std

    x_train = standardise(x_train)
    y_train = y_train.to(dev, torch.float32 if multi_label else torch.int64)
    loss_fn = F.binary_cross_entropy_with_logits if multi_label else F.cross_entropy

    generator = torch.Generator().manual_seed(seed)
    # skip_init: nn.Linear's own init would draw from (and advance) the global RNG.
    layer = nn.utils.skip_init(nn.Linear, x_train.shape[1], n_classes)
    with torch.no_grad():
        if init == "small":  # as MAE's linear probe
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.01)
            layer.bias.zero_()
        else:  # nn.Linear's reset_parameters (kaiming_uniform with a = sqrt(5)), from the private generator
            bound = 1.0 / math.sqrt(x_train.shape[1])
            layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
            layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound)
    layer.to(dev)

    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / step_size)
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule == "georank":
        factor = georank_schedule(epochs, n, step_size)
    else:
        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    primary = "ap_macro" if multi_label else "acc_micro"
    best_val: Optional[Dict[str, float]] = None
    best_state = None
    best_epoch = epochs
    train_loss = float("nan")
    for epoch in range(1, epochs + 1):
        layer.train()
        order = torch.randperm(n, generator=generator).to(dev)
        loss_sum = torch.zeros((), device=dev)
        for start in range(0, n, step_size):
            batch = order[start : start + step_size]
            loss = loss_fn(layer(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            # Weighted by batch size so the epoch mean is over samples, not batches.
            loss_sum += loss.detach() * batch.numel()
        train_loss = float(loss_sum) / n
        if val is not None:
            val_metrics = _evaluate(layer, standardise(val[0]), val[1], n_classes)
            if best_val is None or val_metrics[primary] > best_val[primary]:
                best_val, best_epoch = val_metrics, epoch
                best_state = {k: v.clone() for k, v in layer.state_dict().items()}

    if best_state is not None:
        layer.load_state_dict(best_state)
    result = _evaluate(layer, standardise(x_test), y_test, n_classes)
    result["train_loss"] = train_loss
    if best_val is not None:
        result.update({f"val_{k}": v for k, v in best_val.items()})
        result["best_epoch"] = best_epoch
    return result


def _evaluate(layer: nn.Linear, x: Tensor, y: Tensor, n_classes: int) -> Dict[str, float]:
    layer.eval()
    with torch.inference_mode():
        scores = layer(x).cpu()
    return evaluate_scores(scores, y.cpu(), num_classes=n_classes if y.ndim == 1 else None)
