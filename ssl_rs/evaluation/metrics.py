"""Classification metrics shared by every evaluation protocol.

All values are percentages (0..100), the convention of the remote-sensing SSL papers
(SeCo, SSL4EO-S12, SatMAE), so tables can be compared without rescaling.

- single-label: ``acc_micro`` (overall accuracy) and ``acc_macro`` (mean per-class recall
  over the classes present in the targets, i.e. scikit-learn's ``balanced_accuracy_score``).
- multi-label: ``ap_macro`` (mean average precision over classes with at least one
  positive; classes without positives have no defined AP) and ``ap_micro`` (AP over all
  (sample, class) pairs), both via scikit-learn's ``average_precision_score``.

``absent="zero"`` averages the way torchmetrics does, and with it the GeoRank authors' logged
``accmac`` and ``APmac`` (tomburgert/georank ``base.py``): a class that is predicted but has no
target sample counts as recall 0 in ``acc_macro``, and a class without positive targets counts as
AP 0 in ``ap_macro``. The two agree whenever every class occurs in the evaluated targets.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from ..errors import ConfigError, DataError

#: ``skip``: classes absent from the targets are left out of the macro averages (default);
#: ``zero``: they count as 0 where torchmetrics counts them (module docstring)
ABSENT = ("skip", "zero")


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception:
        raise ConfigError(f"{name}: expected a tensor or an array, got {type(x).__name__}") from None


def _check_absent(absent: str) -> None:
    if absent not in ABSENT:
        raise ConfigError(f"absent: unknown {absent!r} (use one of {ABSENT})")


def single_label_metrics(scores_or_preds, targets, num_classes: Optional[int] = None,
                         absent: str = "skip") -> Dict[str, float]:
    """Overall and class-balanced accuracy, in percent.

    Args:
        scores_or_preds: (N, C) class scores (the argmax is the prediction; ties go to the
            lowest class index) or (N,) predicted class indices.
        targets: (N,) integer class indices.
        num_classes: optional; when given, scores must have this many columns and targets
            must lie in ``[0, num_classes)``.
        absent: ``"skip"`` or ``"zero"`` (module docstring).

    Returns:
        ``{"acc_micro", "acc_macro"}``; ``acc_macro`` averages the recall of the classes
        present in ``targets`` (and, with ``absent="zero"``, 0 for each predicted class that is not).
    """
    _check_absent(absent)
    s = _to_numpy(scores_or_preds, "scores")
    t = _to_numpy(targets, "targets")
    if t.ndim != 1:
        raise ConfigError(f"targets: expected shape (N,) class indices, got {tuple(t.shape)}")
    if t.size == 0:
        raise ConfigError("targets: empty; nothing to evaluate")
    if not np.issubdtype(t.dtype, np.integer):
        raise ConfigError(f"targets: expected integer class indices, got dtype {t.dtype}")
    if s.ndim == 2:
        if num_classes is not None and s.shape[1] != num_classes:
            raise ConfigError(f"scores: expected {num_classes} columns, got {s.shape[1]}")
        preds = s.argmax(axis=1)
    elif s.ndim == 1:
        preds = s.astype(np.int64)
    else:
        raise ConfigError(f"scores: expected shape (N, C) or (N,), got {tuple(s.shape)}")
    if preds.shape[0] != t.shape[0]:
        raise ConfigError(f"scores: {preds.shape[0]} rows but targets has {t.shape[0]}")
    if t.min() < 0 or (num_classes is not None and t.max() >= num_classes):
        raise ConfigError(f"targets: class indices must lie in [0, {num_classes or 'C'}), got {t.min()}..{t.max()}")
    t = t.astype(np.int64)
    correct = (preds == t).astype(np.float64)
    size = max(int(t.max()), int(preds.max()) if preds.size else 0) + 1
    per_class_total = np.bincount(t, minlength=size)
    per_class_correct = np.bincount(t, weights=correct, minlength=size)
    present = per_class_total > 0
    recall = per_class_correct[present] / per_class_total[present]
    if absent == "zero":
        predicted_only = ~present & (np.bincount(preds[preds >= 0], minlength=size) > 0)
        recall = np.concatenate([recall, np.zeros(int(predicted_only.sum()))])
    return {"acc_micro": float(correct.mean() * 100.0), "acc_macro": float(recall.mean() * 100.0)}


def multi_label_metrics(scores, targets, absent: str = "skip") -> Dict[str, float]:
    """Macro and micro average precision, in percent.

    Args:
        scores: (N, C) real-valued scores, higher means more likely positive.
        targets: (N, C) multi-hot 0/1 (any numeric or bool dtype).
        absent: ``"skip"`` or ``"zero"`` (module docstring).

    Returns:
        ``{"ap_macro", "ap_micro"}``; ``ap_macro`` averages over classes with at least one
        positive target (with ``absent="zero"``: over all C, those without positives as 0).
    """
    _check_absent(absent)
    s = _to_numpy(scores, "scores").astype(np.float64)
    t = _to_numpy(targets, "targets")
    if t.ndim != 2:
        raise ConfigError(f"targets: expected shape (N, C) multi-hot, got {tuple(t.shape)}")
    if s.shape != t.shape:
        raise ConfigError(f"scores: shape {tuple(s.shape)} does not match targets {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ConfigError("targets: empty; nothing to evaluate")
    t = t.astype(np.float64)
    if not np.isin(t, (0.0, 1.0)).all():
        raise ConfigError("targets: multi-hot targets must be 0 or 1")
    positive_classes = t.sum(axis=0) > 0
    if not positive_classes.any():
        raise DataError("targets: no positive labels; average precision is undefined")
    per_class = np.atleast_1d(average_precision_score(t[:, positive_classes], s[:, positive_classes], average=None))
    ap_micro = average_precision_score(t, s, average="micro")
    classes = t.shape[1] if absent == "zero" else per_class.size
    return {"ap_macro": float(per_class.sum() / classes * 100.0), "ap_micro": float(ap_micro * 100.0)}


def evaluate_scores(scores, targets, num_classes: Optional[int] = None, absent: str = "skip") -> Dict[str, float]:
    """Dispatch on the targets' rank: (N,) class indices -> single-label, (N, C) -> multi-label."""
    ndim = _to_numpy(targets, "targets").ndim
    if ndim == 1:
        return single_label_metrics(scores, targets, num_classes, absent=absent)
    if ndim == 2:
        return multi_label_metrics(scores, targets, absent=absent)
    raise ConfigError(f"targets: expected shape (N,) or (N, C), got rank {ndim}")
