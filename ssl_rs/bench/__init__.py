"""Benchmark runner: a suite (YAML matrix of methods x regularizers x augmentations x subsets x
image sizes x seeds) -> pretrain + shared-harness evaluation per cell -> ``results.csv`` ->
``results.md`` and plots. ``ssl-rs bench run SUITE.yaml`` / ``ssl-rs bench report DIR``."""

from .kfold import repeated_kfold_knn
from .report import report
from .runner import read_results, run_suite
from .suite import AXES, Suite, load_suite

__all__ = ["AXES", "Suite", "load_suite", "run_suite", "read_results", "report", "repeated_kfold_knn"]
