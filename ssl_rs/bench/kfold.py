"""Repeated stratified k-fold k-NN on frozen features: a mean and a spread from a small labelled set.

With 270 samples one fixed train/test split gives a single, noisy number. Every sample is
scored ``n_repeats`` times instead (once per repeat, in the fold that holds it out), with the
shared weighted k-NN of :mod:`ssl_rs.evaluation.knn`, and the spread is over the folds.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from ..errors import ConfigError


def repeated_kfold_knn(features, targets, *, n_splits: int = 5, n_repeats: int = 3, random_state: int = 0,
                       k: int = 20, temperature: float = 0.07) -> Dict[str, Any]:
    """k-NN scored on ``RepeatedStratifiedKFold(n_splits, n_repeats, random_state)`` folds.

    Returns ``{metric: {"mean", "std", "values"}}`` (percent; std over the folds, ddof=1) plus
    ``n_folds``, ``n_samples``, ``test_counts`` (how often each sample was scored: ``n_repeats``
    for every sample) and the fold protocol, so a table can state exactly what it averaged.
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    from ..evaluation.knn import knn_evaluate

    x = torch.as_tensor(features)
    y = torch.as_tensor(targets)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ConfigError(f"repeated k-fold: expected (N, D) features and (N,) labels, got {tuple(x.shape)} "
                          f"and {tuple(y.shape)}")
    counts = np.bincount(y.numpy())
    if counts[counts > 0].min() < n_splits:
        raise ConfigError(f"repeated k-fold: the rarest class has {counts[counts > 0].min()} samples, "
                          f"fewer than n_splits={n_splits}")
    num_classes = int(y.max()) + 1
    folds = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=random_state)
    per_metric: Dict[str, list] = {}
    test_counts = np.zeros(len(y), np.int64)
    for train_idx, test_idx in folds.split(np.zeros(len(y)), y.numpy()):
        test_counts[test_idx] += 1
        scores = knn_evaluate(x[train_idx], y[train_idx], x[test_idx], y[test_idx],
                              k=min(k, len(train_idx)), temperature=temperature, num_classes=num_classes)
        for name, value in scores.items():
            per_metric.setdefault(name, []).append(float(value))
    out: Dict[str, Any] = {
        name: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "values": v}
        for name, v in per_metric.items()
    }
    out.update(n_folds=n_splits * n_repeats, n_samples=len(y), test_counts=test_counts.tolist(),
               protocol=f"RepeatedStratifiedKFold(n_splits={n_splits}, n_repeats={n_repeats}, "
                        f"random_state={random_state}); weighted k-NN k={k}, T={temperature}")
    return out
