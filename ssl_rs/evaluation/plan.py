"""The final evaluation of a pretraining: which labelled file and split schemes it scores
(:func:`evaluation_plan`), checked before the training (:func:`check_evaluation`) and run on the
trained method through the shared harness after it (:func:`evaluate_method`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig

from ..errors import ConfigError


#: the eval.* keys of the fine-tuning protocol, named as :func:`~ssl_rs.evaluation.harness.evaluate` takes them
FINETUNE_KEYS = ("finetune_epochs", "finetune_lr", "finetune_backbone_lr_scale", "finetune_layer_decay",
                 "finetune_weight_decay", "finetune_schedule")


def evaluation_plan(cfg: DictConfig) -> Tuple[str, List[Optional[str]]]:
    """The file the final evaluation scores (``eval.data``, else the pretraining file) and its
    split schemes (``eval.schemes``, else the training scheme, or the file's default scheme when
    ``eval.data`` is another file)."""
    path = cfg.eval.data or cfg.data.path
    if cfg.eval.schemes:
        return path, list(cfg.eval.schemes)
    return path, [None if cfg.eval.data else cfg.data.scheme]


def eval_protocols(cfg: DictConfig) -> List[str]:
    """``eval.protocols``, checked; by default k-NN, plus the linear probe with ``eval.linear``."""
    from .harness import PROTOCOLS

    if not cfg.eval.protocols:
        return ["knn"] + (["linear"] if cfg.eval.linear else [])
    protocols = list(dict.fromkeys(cfg.eval.protocols))
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"eval.protocols: unknown protocol {unknown[0]!r} (use {', '.join(PROTOCOLS)})")
    return protocols


def evaluation_device(cfg: DictConfig) -> Optional[str]:
    """Where a pretraining's final evaluation runs: the CPU when the run trains on it
    (``trainer.accelerator: cpu``), else the harness's default (CUDA when available)."""
    return "cpu" if cfg.trainer.accelerator == "cpu" else None


def check_evaluation(cfg: DictConfig) -> Optional[str]:
    """Fail before training when the final evaluation could not run (missing file, band or split
    scheme, unknown protocol, masks for segmentation, lat/lon for the geo probes); return why it
    will be skipped when the file simply has no labels
    (unlabelled pretraining data such as SSL4EO-S12 or Major-TOM) and every protocol needs them,
    else None (label protocols on a file without labels are left out, the geo probes run)."""
    from ..data.dataset import GeoDataset
    from .features import check_precision
    from .harness import LABEL_PROTOCOLS, check_eval_options, default_device

    path, schemes = evaluation_plan(cfg)
    protocols = eval_protocols(cfg)
    check_precision(cfg.eval.precision, default_device(evaluation_device(cfg)), "eval.precision")
    check_eval_options(knn_votes=cfg.eval.knn_votes, linear_recipe=cfg.eval.linear_recipe,
                       names={"knn_votes": "eval.knn_votes", "linear_recipe": "eval.linear_recipe"})
    if cfg.eval.data and not Path(path).exists():  # a file, or a folder of shards
        raise ConfigError(f"eval.data: {path} not found")
    bands = list(cfg.data.bands) if cfg.data.bands else None
    whole = GeoDataset(path, bands=bands if cfg.eval.data else None)
    unlabelled = whole.target_key is None
    if unlabelled and all(p in LABEL_PROTOCOLS for p in protocols):
        return (f"{path} has no labels, so the final k-NN evaluation is skipped: set eval.data to a labelled "
                "ssl-rs file, add eval.protocols=[geo] for the geo probes, or score the checkpoint later with "
                "`ssl-rs eval knn --checkpoint ... --data ...`")
    for scheme in schemes:
        GeoDataset(path, split="train", scheme=scheme)  # a missing scheme names `ssl-rs data split`
    if "segmentation" in protocols:
        from .segmentation import check_masks, check_segmentation_options

        check_segmentation_options(epochs=cfg.eval.segmentation_epochs, decoder=cfg.eval.segmentation_decoder,
                                   recipe=cfg.eval.segmentation_recipe,
                                   names={k: f"eval.segmentation_{k}" for k in ("epochs", "decoder", "recipe")})
        check_masks(whole, path)
    if "geo" in protocols:
        whole.require_location("eval.protocols: geo (the geo probes)")
    if "finetune" in protocols and cfg.eval.finetune_layer_decay is not None:
        _check_finetune_layer_decay(cfg)
    return None


def _check_finetune_layer_decay(cfg: DictConfig) -> None:
    """``eval.finetune_layer_decay`` for a backbone without layers to decay fails before the training,
    judged on the configured backbone built on the meta device (no memory, no compute)."""
    import torch

    from ..backbones import create_backbone
    from .finetune import check_layer_decay

    with torch.device("meta"):
        backbone = create_backbone(cfg.backbone.name, in_chans=len(cfg.data.bands) if cfg.data.bands else 3,
                                   **dict(cfg.backbone.args))
    check_layer_decay(backbone, cfg.eval.finetune_layer_decay, "eval.finetune_layer_decay")


def evaluate_method(method, cfg: DictConfig, progress: bool = False) -> Dict[str, Any]:
    """The requested protocols (:func:`eval_protocols`) on each requested split scheme, through the
    shared harness; on a file without labels only the geo probes run."""
    from ..data.dataset import GeoDataset
    from .harness import LABEL_PROTOCOLS, evaluate

    path, schemes = evaluation_plan(cfg)
    protocols = eval_protocols(cfg)
    if GeoDataset(path, bands=list(cfg.data.bands) if cfg.data.bands and cfg.eval.data else None).target_key is None:
        protocols = [p for p in protocols if p not in LABEL_PROTOCOLS]
    backbone = method.evaluated_backbone()
    out = {}
    for scheme in schemes:
        res = evaluate(backbone, path, scheme=scheme, protocols=protocols,
                       size=cfg.augmentation.size, bands=list(cfg.data.bands) if cfg.data.bands else None,
                       batch_size=max(cfg.data.batch_size, 256), knn_k=cfg.eval.knn_k,
                       knn_temperature=cfg.eval.knn_temperature, progress=progress, seed=cfg.trainer.seed,
                       segmentation_epochs=cfg.eval.segmentation_epochs, precision=cfg.eval.precision,
                       knn_votes=cfg.eval.knn_votes, linear_recipe=cfg.eval.linear_recipe,
                       device=evaluation_device(cfg),
                       linear_epochs=cfg.eval.linear_epochs,
                       segmentation_decoder=cfg.eval.segmentation_decoder,
                       segmentation_recipe=cfg.eval.segmentation_recipe,
                       **{k: cfg.eval[k] for k in FINETUNE_KEYS})
        out[res["scheme"] or "default"] = res
    return out
