"""The method contract, on Lightning (solo-learn's ``BaseMethod`` / ``BaseMomentumMethod``).

A method subclass builds its heads from ``backbone.num_features`` and implements one thing:

    ssl_loss(views, batch) -> (loss, z, logs)

``views`` are the augmented views made on the device from ``batch["image"]``; ``z`` is the
embedding the geo regularizer sees (by default the projection of the first view, see each
method's docstring). The base class does everything else: views, the regularizer
(``L = (1 - alpha) * L_ssl + alpha * L_geo``), logging, parameter groups, and the optimiser,
schedules and gradient clipping of the method's :class:`~ssl_rs.methods.recipe.OptimRecipe`
(each method class declares ``recipe``; a config overrides only the keys it sets), and online
k-NN monitoring. :class:`BaseMomentumMethod` adds EMA targets declared in ``momentum_pairs``
with a cosine schedule of the momentum from ``base_tau`` to ``final_tau`` over the whole run.

What a method needs from the data and the augmentations is declared, not looked up:

- ``n_views``: how many views the pipeline makes (``train.build`` builds the pipeline with it);
  the views' sizes are the pipeline's ``sizes``.
- ``batch_keys``: the batch entries it reads besides ``image`` (``lat``/``lon``, ``group``,
  ``image_positive`` (another date, ``data.temporal_positives``), ``image_neighbor``
  (``data.neighbor_pairs``)); a regularizer adds its own ``needs``.
- ``makes_own_crops``: it crops inside ``ssl_loss`` (to know each input's footprint), so the
  pipeline must not crop randomly; ``needs_geometric_views``: its pipeline must not change
  intensities (it transforms a stack of dates in one draw).
- :meth:`setup_data` receives the training dataset (band names, GSD, size) once, before the first
  step and before the optimiser exists; nothing is set on a method from outside afterwards.

``train.build`` checks all of it in one place (:meth:`check_contract`) before training starts.

Which embedding the regularizer sees is a per-method choice: a method lists the ones it offers
in ``geo_embeddings`` (the first is its default, the GeoRank authors' choice) and ``ssl_loss``
returns ``self.geo_input(name=tensor, ...)``. An entry may be a tuple of tensors, whose
regularizer losses are averaged (the GeoRank authors' DINO scores teacher and student outputs).

What a checkpoint holds and how the encoder is taken out of it is :mod:`ssl_rs.checkpoint`'s;
a method only names its evaluated encoder (:meth:`evaluated_backbone`,
:meth:`checkpoint_backbone_prefix`) and, when that is not the plain backbone, how to rebuild it
(:meth:`inference_encoder`).

Randomness in a training step (augmentations, random choices of regularizers) is drawn from a
generator seeded by ``(seed, global_step, rank)``, so an interrupted and resumed run sees the
same views as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

import lightning as L
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..geo.base import GeoRegularizer
from .recipe import OptimRecipe, cosine_value, warmup_cosine

#: how a run provides a batch key that the data files do not store
BATCH_KEY_SOURCES = {
    "image_positive": "set data.temporal_positives=true (another date of each place; the data needs 'group' ids)",
    "image_neighbor": "set data.neighbor_pairs=true (a neighbouring sample of each place)",
}


class BaseMethod(L.LightningModule):
    """Backbone + heads + views + optional geo regularizer + optimiser and schedule.

    Args:
        backbone: a registered backbone (``forward(x) -> (B, D)``, ``num_features``).
        augmentation: the view pipeline (``forward(images) -> list of views``), run on the device.
        regularizer: an optional :class:`GeoRegularizer`; ``alpha`` weighs it.
        geo_embedding: which of the method's ``geo_embeddings`` the regularizer sees (default:
            the first, the GeoRank authors' choice).
        optim: overrides of the class's ``recipe`` (:class:`OptimRecipe` field names; None
            values are ignored). ``batch_size`` is the per-device batch; the learning rate is
            scaled with the global batch by the recipe's ``lr_scaling``.
        eval_preprocess: deterministic normalisation used for online k-NN monitoring.
        temporal_views: with temporal positives in the batch (``image_positive``), where the
            second view comes from: ``"different"`` (that other date), ``"same"`` (the anchor's
            date, the positive unused), ``"mixed"`` (per sample, either with probability 1/2).
    """

    #: number of views the method consumes (multi-crop methods override)
    n_views: int = 2
    #: batch entries read besides ``image`` (instances may add to it in ``__init__``)
    batch_keys: FrozenSet[str] = frozenset()
    #: the method draws its own crops: the pipeline must not crop randomly
    makes_own_crops: bool = False
    #: the pipeline must be purely geometric (no per-band intensity changes)
    needs_geometric_views: bool = False
    #: the optimisation recipe of the method's paper / authors' code
    recipe: OptimRecipe = OptimRecipe()
    #: embeddings the regularizer may see; the first is the default
    geo_embeddings: Tuple[str, ...] = ("projection",)

    def __init__(
        self,
        backbone: nn.Module,
        augmentation: Optional[nn.Module] = None,
        regularizer: Optional[GeoRegularizer] = None,
        alpha: float = 0.5,
        geo_embedding: Optional[str] = None,
        optim: Optional[Mapping[str, Any]] = None,
        batch_size: int = 256,
        seed: int = 0,
        eval_preprocess: Optional[nn.Module] = None,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        temporal_views: str = "different",
    ):
        super().__init__()
        if temporal_views not in ("same", "different", "mixed"):
            raise ConfigError(f"augmentation.temporal_views: must be same, different or mixed, got {temporal_views!r}")
        self.temporal_views = temporal_views
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"geo.alpha must be in [0, 1], got {alpha}")
        if geo_embedding is not None and geo_embedding not in self.geo_embeddings:
            raise ConfigError(f"geo.embedding: {type(self).__name__} offers {', '.join(self.geo_embeddings)}, "
                              f"got {geo_embedding!r}")
        self.backbone = backbone
        self.augmentation = augmentation
        self.regularizer = regularizer
        self.eval_preprocess = eval_preprocess
        self.alpha = alpha if regularizer is not None else 0.0
        self.geo_embedding = geo_embedding or self.geo_embeddings[0]
        self.optim = self.recipe.override(optim)
        self.batch_size = batch_size
        self.seed = seed
        self.knn = dict(k=knn_k, temperature=knn_temperature)
        self._knn_features: Dict[int, List[Tensor]] = {}
        self._knn_targets: Dict[int, List[Tensor]] = {}

    # -- what subclasses provide --------------------------------------------------------
    #: dimension of the ``z`` the regularizer sees; set by each subclass
    embed_dim: int

    def setup_data(self, dataset) -> None:
        """Hook called once by ``train.build`` with the training dataset (a ``GeoDataset``:
        ``bands``, ``gsd``, ``size``, ``lat``/``lon``), after the contract check and before the
        optimiser exists: modules that depend on the data (SatMAE's band groups) are built here.
        (Not Lightning's ``setup(stage)``, which the Trainer calls again on every ``fit``.)"""

    def check_contract(self, available: Iterable[str], source: str = "the dataset") -> None:
        """What this method and its regularizer need against what the run provides (the batch
        keys of the training data, the augmentation pipeline); one line naming what to set.
        Called once, by ``train.build``, before training."""
        pipeline = self.augmentation
        name = type(self).__name__
        if pipeline is not None and self.makes_own_crops and pipeline.random_crops:
            raise ConfigError(f"method {name} makes its own crops (to know their footprint): use an augmentation "
                              f"that does not crop, augmentation.name: eval, not {pipeline.name!r}")
        if pipeline is not None and self.needs_geometric_views and pipeline.colour_ops:
            raise ConfigError(f"method {name} transforms stacked dates in one draw and needs a purely geometric "
                              f"augmentation ('geometric' or 'eval'), not {pipeline.name!r}")
        available = set(available)
        for key in sorted(set(self.batch_keys) - available):
            hint = BATCH_KEY_SOURCES.get(key, f"which {source} does not provide")
            raise ConfigError(f"{source}: method {name} needs {key!r}: {hint}")
        if self.regularizer is not None:
            self.regularizer.check_needs(available, source)

    def ssl_loss(self, views: List[Tensor], batch: Mapping[str, Any]) -> Tuple[Tensor, Any, Dict[str, Tensor]]:
        raise NotImplementedError

    def geo_input(self, **candidates: Any) -> Any:
        """The embedding(s) the regularizer sees: ``candidates[self.geo_embedding]`` (a tensor, or
        a tuple of tensors whose regularizer losses are averaged). Methods call it with every
        entry of their ``geo_embeddings``."""
        return candidates[self.geo_embedding]

    def evaluated_backbone(self) -> nn.Module:
        """The encoder that online monitoring, the final evaluation and export score (DINO may
        choose its teacher)."""
        return self.backbone

    @classmethod
    def checkpoint_backbone_prefix(cls, method_args: Mapping[str, Any]) -> str:
        """State-dict prefix of :meth:`evaluated_backbone`'s weights in a training checkpoint of
        a run with these ``method.args``."""
        return "backbone."

    # -- views --------------------------------------------------------------------------
    def make_views(self, batch: Mapping[str, Any]) -> List[Tensor]:
        """Augmented views of ``batch["image"]``; with temporal positives (``image_positive``,
        another date of the same place) the second view is made from that image instead
        (``temporal_views="different"``), from the anchor itself (``"same"``), or per sample from
        either (``"mixed"``: a coin flip drawn from the step's seeded generator)."""
        if self.augmentation is None:
            raise ConfigError(f"{type(self).__name__} has no augmentation pipeline to make views with")
        if "image_positive" not in batch or self.temporal_views == "same":
            return list(self.augmentation(batch["image"]))
        second = batch["image_positive"]
        if self.temporal_views == "mixed":
            image = batch["image"]
            other_date = torch.rand(image.shape[0], device=image.device) < 0.5
            second = torch.where(other_date.view(-1, *([1] * (image.ndim - 1))), second, image)
        sources = [batch["image"], second]
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
                embeddings = z if isinstance(z, (tuple, list)) else (z,)
                loss_geo = sum(self.regularizer(e, batch) for e in embeddings) / len(embeddings)
                loss = (1.0 - self.alpha) * loss_ssl + self.alpha * loss_geo
                logs = {**logs, "loss_geo": loss_geo, **{f"geo/{k}": v for k, v in self.regularizer.metrics.items()}}
            else:
                loss = loss_ssl
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("train/loss_ssl", loss_ssl, batch_size=batch_size, sync_dist=True)
        for key, value in logs.items():
            self.log(f"train/{key}", value, batch_size=batch_size, sync_dist=True)
        return loss

    # -- online k-NN monitoring (validation dataloaders: 0 = bank from train, 1 = queries) ----
    def validation_step(self, batch: Dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.eval_preprocess is None:
            return
        target_key = "labels" if "labels" in batch else "label"
        if target_key not in batch:
            return
        features = self.evaluated_backbone()(self.eval_preprocess(batch["image"]))
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
        """Weights get weight decay; with the recipe's ``exclude_from_decay: bias_norm`` biases
        and normalisation parameters do not (and are excluded from LARS adaptation), as in
        solo-learn, DINO, MAE and the BYOL/SimCLR recipes; with ``none`` every parameter decays.
        Parameters under :meth:`fixed_lr_prefixes` keep the peak learning rate throughout
        (group flag ``fixed_lr``; SimSiam's predictor)."""
        groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {}
        exclude = self.optim.exclude_from_decay == "bias_norm"
        fixed = self.fixed_lr_prefixes()
        for name, param in self.named_parameters():
            if not param.requires_grad or name.startswith(self.frozen_prefixes()):
                continue
            key = (not (exclude and param.ndim <= 1), bool(fixed) and name.startswith(fixed))
            groups.setdefault(key, []).append(param)
        out = []
        for (decay, fixed_lr), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
            group: Dict[str, Any] = {"params": params, "name": ("decay" if decay else "no_decay")
                                     + ("_fixed_lr" if fixed_lr else "")}
            if not decay:
                group.update(weight_decay=0.0, lars_exclude=True)
            if fixed_lr:
                group["fixed_lr"] = True
            out.append(group)
        return out

    def fixed_lr_prefixes(self) -> Tuple[str, ...]:
        """Parameter name prefixes whose learning rate is not scheduled (none by default)."""
        return ()

    def frozen_prefixes(self) -> Tuple[str, ...]:
        """Parameter name prefixes the optimiser must not touch (EMA targets)."""
        return ()

    def configure_optimizers(self):
        recipe = self.optim
        lr = recipe.scaled_lr(self.batch_size * max(1, self.trainer.world_size))
        groups = self.parameter_groups()
        if recipe.name == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
        elif recipe.name == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
        else:
            from lightly.utils.lars import LARS

            opt = LARS(groups, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
        total = self._total_steps()
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
        floor = recipe.min_lr / lr

        def scheduled(step: int) -> float:
            return warmup_cosine(step, total, warmup, floor, recipe.schedule)

        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, [(lambda step: 1.0) if g.get("fixed_lr") else scheduled for g in opt.param_groups])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _total_steps(self) -> int:
        return max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1

    def weight_decay_now(self) -> float:
        """The recipe's weight decay at the current step (cosine to ``weight_decay_end`` if set)."""
        recipe = self.optim
        if recipe.weight_decay_end is None:
            return recipe.weight_decay
        return cosine_value(self.global_step, self._total_steps(), recipe.weight_decay, recipe.weight_decay_end)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.optim.weight_decay_end is None:
            return
        wd = self.weight_decay_now()  # set before this step's update, from the global step (resumes exactly)
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                if group.get("name", "").startswith("decay"):
                    group["weight_decay"] = wd
        self.log("train/weight_decay", wd, batch_size=batch["image"].shape[0])

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """The recipe's clipping (``grad_clip``): one global norm, or each parameter tensor on its
        own (DINO's ``clip_gradients``). A Trainer-level ``gradient_clip_val`` still applies when
        the recipe has none."""
        recipe = self.optim
        if recipe.grad_clip is None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        elif recipe.grad_clip_mode == "global":
            self.clip_gradients(optimizer, gradient_clip_val=recipe.grad_clip, gradient_clip_algorithm="norm")
        else:
            clip_each_parameter(self.parameters(), recipe.grad_clip)

    @classmethod
    def inference_encoder(cls, backbone: nn.Module, method_args: Mapping[str, Any], bands: Sequence[str]) -> nn.Module:
        """The module whose state dict :meth:`evaluated_backbone` saves, rebuilt around a fresh
        plain ``backbone`` for a run with these ``method.args`` on data with these ``bands``
        (the backbone itself, unless the method wraps it: SatMAE's band-group encoder)."""
        return backbone

    def on_train_epoch_start(self) -> None:
        # Lightning reaches set_epoch only through samplers; datasets with per-epoch choices
        # (temporal positives) need it too, or every epoch would see the same pairs.
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)


@torch.no_grad()
def clip_each_parameter(parameters, max_norm: float) -> None:
    """Scale each parameter's gradient to norm at most ``max_norm`` on its own (DINO's
    ``utils.clip_gradients``: coefficient ``max_norm / (norm + 1e-6)`` where it is below 1)."""
    for p in parameters:
        if p.grad is not None:
            coef = max_norm / (p.grad.norm(2) + 1e-6)
            p.grad.mul_(coef.clamp(max=1.0))


def momentum_schedule(step: int, total: int, base_tau: float, final_tau: float = 1.0) -> float:
    """EMA momentum: cosine from ``base_tau`` at step 0 to ``final_tau`` at step ``total``."""
    return cosine_value(step, total, base_tau, final_tau)


class BaseMomentumMethod(BaseMethod):
    """Adds EMA target networks: subclasses list ``(online, target)`` module pairs in
    :meth:`momentum_pairs`; after every optimiser step each target becomes
    ``tau * target + (1 - tau) * online`` with ``tau`` following a cosine from ``base_tau`` to
    ``final_tau`` (``base_tau == final_tau``: a fixed momentum, as MoCo v2). With
    ``tau_schedule="step"`` the cosine runs over all training steps (BYOL, DINO); with ``"epoch"``
    it is lightly's ``cosine_schedule(epoch, max_epochs, base_tau, final_tau)``, constant within
    an epoch (the GeoRank authors' MoCo v2). Either is derived from the trainer's progress, so it
    resumes exactly. Subclasses set their paper's values as the defaults of ``base_tau`` /
    ``final_tau`` in their signature.
    """

    def __init__(self, *args, base_tau: float = 0.996, final_tau: float = 1.0, tau_schedule: str = "step",
                 **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= base_tau <= final_tau <= 1.0:
            raise ConfigError(f"method.args: need 0 <= base_tau <= final_tau <= 1, got {base_tau}, {final_tau}")
        if tau_schedule not in ("step", "epoch"):
            raise ConfigError(f"method.args.tau_schedule: must be 'step' or 'epoch', got {tau_schedule!r}")
        self.base_tau = base_tau
        self.final_tau = final_tau
        self.tau_schedule = tau_schedule

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

    def tau_at(self, step: int) -> float:
        """The momentum of the update that follows optimiser step ``step`` (0-based)."""
        if self.tau_schedule == "epoch":
            from lightly.utils.scheduler import cosine_schedule

            max_epochs = max(1, self.trainer.max_epochs or 1) if self._trainer is not None else 1
            return float(cosine_schedule(self.current_epoch, max_epochs, self.base_tau, self.final_tau))
        return momentum_schedule(step, self._total_steps(), self.base_tau, self.final_tau)

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # global_step has already advanced past this step's optimiser update; the k-th update
        # uses tau((k - 1) / N), so the first one uses base_tau (BYOL's and solo-learn's order).
        # Only parameters move: the target's BatchNorm statistics are its own, from its own
        # forward passes, as in BYOL, DINO, solo-learn and lightly's update_momentum.
        tau = self.tau_at(int(self.global_step) - 1)
        for online, target in self.momentum_pairs():
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(tau).add_(po.detach(), alpha=1.0 - tau)
        self.log("train/tau", tau, batch_size=batch["image"].shape[0])
