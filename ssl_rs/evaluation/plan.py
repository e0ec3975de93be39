"""The final evaluation of a pretraining: which labelled file and split schemes it scores
(:func:`evaluation_plan`), checked before the training (:func:`check_evaluation`) and run on the
trained method through the shared harness after it (:func:`evaluate_method`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig

from ..errors import ConfigError


def evaluation_plan(cfg: DictConfig) -> Tuple[str, List[Optional[str]]]:
    """The file the final evaluation scores (``eval.data``, else the pretraining file) and its
    split schemes (``eval.schemes``, else the training scheme, or the file's default scheme when
    ``eval.data`` is another file)."""
    path = cfg.eval.data or cfg.data.path
    if cfg.eval.schemes:
        return path, list(cfg.eval.schemes)
    return path, [None if cfg.eval.data else cfg.data.scheme]


def check_evaluation(cfg: DictConfig) -> Optional[str]:
    """Fail before training when the final evaluation could not run (missing file, band or split
    scheme); return why it will be skipped when the file simply has no labels (unlabelled
    pretraining data such as SSL4EO-S12 or Major-TOM), else None."""
    from ..data.dataset import GeoDataset

    path, schemes = evaluation_plan(cfg)
    if cfg.eval.data and not Path(path).is_file():
        raise ConfigError(f"eval.data: {path} not found")
    bands = list(cfg.data.bands) if cfg.data.bands else None
    if GeoDataset(path, bands=bands if cfg.eval.data else None).target_key is None:
        return (f"{path} has no labels, so the final k-NN evaluation is skipped: set eval.data to a labelled "
                "ssl-rs file, or score the checkpoint later with `ssl-rs eval knn --checkpoint ... --data ...`")
    for scheme in schemes:
        GeoDataset(path, split="train", scheme=scheme)  # a missing scheme names `ssl-rs data split`
    return None


def evaluate_method(method, cfg: DictConfig, progress: bool = False) -> Dict[str, Any]:
    """k-NN (and linear, if asked) on each requested split scheme, through the shared harness."""
    from .harness import evaluate

    path, schemes = evaluation_plan(cfg)
    protocols = ["knn"] + (["linear"] if cfg.eval.linear else [])
    backbone = method.evaluated_backbone()
    out = {}
    for scheme in schemes:
        res = evaluate(backbone, path, scheme=scheme, protocols=protocols,
                       size=cfg.augmentation.size, bands=list(cfg.data.bands) if cfg.data.bands else None,
                       batch_size=max(cfg.data.batch_size, 256), knn_k=cfg.eval.knn_k,
                       knn_temperature=cfg.eval.knn_temperature, progress=progress, seed=cfg.trainer.seed)
        out[res["scheme"] or "default"] = res
    return out
