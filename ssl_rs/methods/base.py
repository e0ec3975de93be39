"""The method contract, on Lightning (solo-learn's ``BaseMethod`` / ``BaseMomentumMethod``).

A method subclass builds its heads from ``backbone.num_features`` and implements one thing:

    ssl_loss(views, batch) -> (loss, z, logs)

``views`` are the augmented views made on the device from ``batch["image"]``; ``z`` is the
embedding the geo regularizer sees (by default the projection of the first view, see each
method's docstring). The base class does everything else: views, the regularizer
(``L = (1 - alpha) * L_ssl + alpha * L_geo``), logging, parameter groups, optimiser
(SGD, LARS, AdamW), warm-up + cosine schedule and online k-NN monitoring.
:class:`BaseMomentumMethod` adds EMA targets declared in ``momentum_pairs`` with a cosine
schedule of the momentum from ``base_tau`` to ``final_tau`` over the whole run.

Randomness in a training step (augmentations, random choices of regularizers) is drawn from a
generator seeded by ``(seed, global_step, rank)``, so an interrupted and resumed run sees the
same views as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import lightning as L
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..geo.base import GeoRegularizer

OPTIMIZERS = ("sgd", "lars", "adamw")


class BaseMethod(L.LightningModule):
    """Backbone + heads + views + optional geo regularizer + optimiser and schedule.

    Args:
        backbone: a registered backbone (``forward(x) -> (B, D)``, ``num_features``).
        augmentation: the view pipeline (``forward(images) -> list of views``), run on the device.
        regularizer: an optional :class:`GeoRegularizer`; ``alpha`` weighs it.
        optimizer: "sgd", "lars" or "adamw"; ``lr`` is for a batch of 256 and scaled linearly
            with the real batch size when ``scale_lr`` (as solo-learn and the MoCo papers do).
        warmup_epochs / min_lr: linear warm-up then cosine decay, stepped every iteration.
        eval_preprocess: deterministic normalisation used for online k-NN monitoring.
    """

    #: number of views the method consumes (multi-crop methods override)
    n_views: int = 2

    def __init__(
        self,
        backbone: nn.Module,
        augmentation: Optional[nn.Module] = None,
        regularizer: Optional[GeoRegularizer] = None,
        alpha: float = 0.5,
        optimizer: str = "sgd",
        lr: float = 0.03,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scale_lr: bool = True,
        warmup_epochs: float = 0.0,
        min_lr: float = 0.0,
        batch_size: int = 256,
        seed: int = 0,
        eval_preprocess: Optional[nn.Module] = None,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"geo.alpha must be in [0, 1], got {alpha}")
        self.backbone = backbone
        self.augmentation = augmentation
        self.regularizer = regularizer
        self.eval_preprocess = eval_preprocess
        self.alpha = alpha if regularizer is not None else 0.0
        self.optim = dict(
            name=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum, scale_lr=scale_lr,
            warmup_epochs=warmup_epochs, min_lr=min_lr, batch_size=batch_size,
        )
        self.seed = seed
        self.knn = dict(k=knn_k, temperature=knn_temperature)
        self._knn_features: Dict[int, List[Tensor]] = {}
        self._knn_targets: Dict[int, List[Tensor]] = {}

    # -- what subclasses provide --------------------------------------------------------
    #: dimension of the ``z`` the regularizer sees; set by each subclass
    embed_dim: int

    def ssl_loss(self, views: List[Tensor], batch: Mapping[str, Any]) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        raise NotImplementedError

    # -- views --------------------------------------------------------------------------
    def make_views(self, batch: Mapping[str, Any]) -> List[Tensor]:
        """Augmented views of ``batch["image"]``; with temporal positives (``image_positive``,
        another date of the same place) the second view is made from that image instead."""
        if self.augmentation is None:
            raise ConfigError(f"{type(self).__name__} has no augmentation pipeline to make views with")
        if "image_positive" not in batch:
            return list(self.augmentation(batch["image"]))
        sources = [batch["image"], batch["image_positive"]]
        return [self.augmentation.view(sources[i == 1], i) for i in range(self.augmentation.n_views)]

    # -- training -----------------------------------------------------------------------
    def _step_seed(self) -> int:
        return (self.seed * 1_000_003 + int(self.global_step) * 7919 + self.global_rank) % (2**63 - 1)

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._step_seed())
            views = self.make_views(batch)
            loss_ssl, z, logs = self.ssl_loss(views, batch)
            if self.regularizer is not None:
                loss_geo = self.regularizer(z, batch)
                loss = (1.0 - self.alpha) * loss_ssl + self.alpha * loss_geo
                logs = {**logs, "loss_geo": loss_geo, **{f"geo/{k}": v for k, v in self.regularizer.metrics.items()}}
            else:
                loss = loss_ssl
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("train/loss_ssl", loss_ssl, batch_size=batch_size, sync_dist=True)
        for key, value in logs.items():
            self.log(f"train/{key}", value, batch_size=batch_size, sync_dist=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
        return loss

    # -- online k-NN monitoring (validation dataloaders: 0 = bank from train, 1 = queries) ----
    def validation_step(self, batch: Dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.eval_preprocess is None:
            return
        target_key = "labels" if "labels" in batch else "label"
        if target_key not in batch:
            return
        features = self.backbone(self.eval_preprocess(batch["image"]))
        self._knn_features.setdefault(dataloader_idx, []).append(features.detach().float())
        self._knn_targets.setdefault(dataloader_idx, []).append(batch[target_key])

    def on_validation_epoch_end(self) -> None:
        from ..evaluation.knn import knn_evaluate

        if {0, 1} <= set(self._knn_features) and not self.trainer.sanity_checking:
            gather = self.all_gather if self.trainer.world_size > 1 else (lambda t: t)
            feats = [torch.cat(self._knn_features[i]) for i in (0, 1)]
            targets = [torch.cat(self._knn_targets[i]) for i in (0, 1)]
            feats = [gather(f).reshape(-1, f.shape[-1]) for f in feats]
            targets = [gather(t).reshape(-1, *t.shape[1:]) for t in targets]
            metrics = knn_evaluate(feats[0], targets[0], feats[1], targets[1], **self.knn, device=self.device)
            for key, value in metrics.items():
                self.log(f"val/knn_{key}", float(value), prog_bar=key in ("acc_macro", "ap_macro"), rank_zero_only=True)
        self._knn_features.clear()
        self._knn_targets.clear()

    # -- optimisation -------------------------------------------------------------------
    def parameter_groups(self) -> List[Dict[str, Any]]:
        """Weights get weight decay; biases and normalisation parameters do not (and are
        excluded from LARS adaptation), as in solo-learn and the BYOL/SimCLR recipes."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad or name.startswith(self.frozen_prefixes()):
                continue
            (no_decay if param.ndim <= 1 else decay).append(param)
        return [
            {"params": decay, "name": "decay"},
            {"params": no_decay, "name": "no_decay", "weight_decay": 0.0, "lars_exclude": True},
        ]

    def frozen_prefixes(self) -> Tuple[str, ...]:
        """Parameter name prefixes the optimiser must not touch (EMA targets)."""
        return ()

    def configure_optimizers(self):
        cfg = self.optim
        lr = cfg["lr"] * (cfg["batch_size"] * max(1, self.trainer.world_size) / 256 if cfg["scale_lr"] else 1.0)
        groups = self.parameter_groups()
        if cfg["name"] == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
        elif cfg["name"] == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg["weight_decay"])
        else:
            from lightly.utils.lars import LARS

            opt = LARS(groups, lr=lr, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch))
        floor = cfg["min_lr"] / lr if lr > 0 else 0.0
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, total, warmup, floor))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- checkpoints carry what is needed to rebuild the backbone (plain types only, so they
    # load with torch.load(weights_only=True)) --------------------------------------------
    run_config: Optional[Dict[str, Any]] = None
    data_bands: Optional[List[str]] = None

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["ssl_rs_config"] = self.run_config
            checkpoint["ssl_rs_bands"] = list(self.data_bands or [])

    def on_train_epoch_start(self) -> None:
        # Lightning reaches set_epoch only through samplers; datasets with per-epoch choices
        # (temporal positives) need it too, or every epoch would see the same pairs.
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def on_fit_start(self) -> None:
        if self.regularizer is not None and self.trainer.datamodule is None:
            loader = self.trainer.train_dataloader
            dataset = getattr(loader, "dataset", None) if loader is not None else None
            if dataset is not None and hasattr(dataset, "keys"):
                self.regularizer.check_needs(dataset.keys, str(getattr(dataset, "path", "the dataset")))


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def momentum_schedule(step: int, total: int, base_tau: float, final_tau: float = 1.0) -> float:
    """EMA momentum: cosine from ``base_tau`` at step 0 to ``final_tau`` at step ``total``."""
    progress = min(1.0, step / max(1, total))
    return final_tau - (final_tau - base_tau) * (math.cos(math.pi * progress) + 1) / 2


class BaseMomentumMethod(BaseMethod):
    """Adds EMA target networks: subclasses list ``(online, target)`` module pairs in
    :meth:`momentum_pairs`; after every optimiser step each target becomes
    ``tau * target + (1 - tau) * online`` with ``tau`` following a cosine from ``base_tau`` to
    ``final_tau`` over all training steps (derived from the global step, so it resumes exactly).
    """

    def __init__(self, *args, base_tau: float = 0.99, final_tau: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= base_tau <= final_tau <= 1.0:
            raise ConfigError(f"need 0 <= base_tau <= final_tau <= 1, got {base_tau}, {final_tau}")
        self.base_tau = base_tau
        self.final_tau = final_tau

    def momentum_pairs(self) -> Sequence[Tuple[nn.Module, nn.Module]]:
        raise NotImplementedError

    def target_prefixes(self) -> Tuple[str, ...]:
        """Names of EMA target submodules start with this (kept out of the optimiser)."""
        return ("momentum_",)

    def frozen_prefixes(self) -> Tuple[str, ...]:
        return self.target_prefixes()

    def init_targets(self) -> None:
        """Copy online weights into the targets and freeze them (call at the end of __init__)."""
        for online, target in self.momentum_pairs():
            target.load_state_dict(online.state_dict())
            for p in target.parameters():
                p.requires_grad = False

    @property
    def tau(self) -> float:
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        return momentum_schedule(self.global_step, total, self.base_tau, self.final_tau)

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # global_step has already advanced past this step's optimiser update
        tau = self.tau
        for online, target in self.momentum_pairs():
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(tau).add_(po.detach(), alpha=1.0 - tau)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)
        self.log("train/tau", tau, batch_size=batch["image"].shape[0])
