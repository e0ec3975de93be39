"""Shared evaluation harness: feature extraction, weighted k-NN, linear probe, metrics.

Every method and the benchmark runner report through these functions, so results are
comparable: metrics are percentages, k-NN follows DINO (k=20, T=0.07).
"""

from .features import extract_features
from .finetune import finetune
from .knn import knn_evaluate, knn_scores
from .linear import linear_probe
from .metrics import evaluate_scores, multi_label_metrics, single_label_metrics
from .segmentation import ConfusionMatrix, segmentation_metrics, segmentation_probe

__all__ = [
    "extract_features",
    "finetune",
    "knn_scores",
    "knn_evaluate",
    "linear_probe",
    "single_label_metrics",
    "multi_label_metrics",
    "evaluate_scores",
    "segmentation_probe",
    "segmentation_metrics",
    "ConfusionMatrix",
]
