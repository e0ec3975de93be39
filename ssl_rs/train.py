"""Pretraining: config -> data, backbone, views, method, regularizer -> Lightning Trainer ->
shared k-NN evaluation -> ``results.json`` in the run directory.

:func:`pretrain` orchestrates; the parts live below it: :func:`build` (data, loaders, method),
``ssl_rs.data.samplers`` (the loaders' samplers), ``ssl_rs.trainer`` (the Lightning Trainer),
``ssl_rs.run_directory`` (the locked and recoverable run directory, its layout),
``ssl_rs.interrupts`` (SIGINT / SIGTERM: a resumable stop) and ``ssl_rs.evaluation.plan`` (the
final evaluation).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from .checkpoint import RunMetadata, check_resume_checkpoint, check_resume_shapes
from .config import to_dict, validate
from .data.loader import make_loader
from .data.samplers import GeoNeighborBatchSampler, PlaceSampler, RankShardSampler, SeededRandomSampler
from .errors import ConfigError, DataError, Interrupted
from .evaluation.plan import check_evaluation, evaluate_method
from .files import write_text
from .interrupts import SignalHandlers, StopOnSignal, dataloader_worker_init
from .run_directory import RunDirectory, check_run_dir, is_rank_zero, run_dir_of
from .trainer import make_trainer, session_start

if TYPE_CHECKING:
    from .data.dataset import GeoDataset
    from .methods.base import BaseMethod

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltRun:
    """What :func:`build` makes of a config, ready for ``trainer.fit``."""

    method: BaseMethod  # the LightningModule, its contract checked and its data set up
    train_loader: DataLoader
    val_loaders: List[DataLoader]  # the online k-NN's (train split, val split); empty without it
    train_dataset: GeoDataset  # the training split

    @property
    def monitor(self) -> Optional[str]:
        """The online k-NN metric that ``best.ckpt`` follows (None without monitoring loaders)."""
        if not self.val_loaders:
            return None
        return "val/knn_ap_macro" if self.train_dataset.multi_label else "val/knn_acc_macro"


def build(cfg: DictConfig) -> BuiltRun:
    """Build datasets, loaders and the method from a config (validated here too, for callers
    that skip :func:`pretrain`).

    The one place where data, augmentations and the method meet: the method's declared contract
    (:meth:`BaseMethod.check_contract`: the batch keys it and its regularizer read, whether the
    augmentation may crop or change intensities) is checked against the training data and the
    pipeline, then the method sees the data (:meth:`BaseMethod.setup_data`) before anything runs."""
    from .augmentations import Preprocess
    from .data.dataset import GeoDataset
    from .registry import AUGMENTATIONS, BACKBONES, METHODS, REGULARIZERS

    validate(cfg)
    d = cfg.data
    if (d.temporal_positives or cfg.augmentation.temporal_views in ("different", "mixed")) and d.neighbor_pairs:
        raise ConfigError(
            "data.temporal_positives, data.neighbor_pairs: a training item has one partner sample, "
            "either another date of the same place or a neighbour; set only one of them"
        )
    if d.neighbor_pairs and not (d.neighbor_max_offset > 0):
        raise ConfigError(
            f"data.neighbor_max_offset: must be a positive number of footprint sides, got {d.neighbor_max_offset}"
        )
    bands = list(d.bands) if d.bands else None
    train_ds = GeoDataset(d.path, split="train", scheme=d.scheme, bands=bands)
    check_locations(train_ds, cfg)
    if len(train_ds) < d.batch_size:
        raise ConfigError(
            f"data.batch_size: {d.batch_size} is larger than the {len(train_ds)} training samples of {d.path}"
        )
    train_source = _paired(train_ds, cfg)  # before the model, so that a file unfit for pairs fails fast
    method_cls = METHODS.get(cfg.method.name).factory
    regularizer = REGULARIZERS.create(cfg.geo.name, gather=cfg.geo.gather, **cfg.geo.args) if cfg.geo.name else None
    size = cfg.augmentation.size or train_ds.size[0]
    backbone = BACKBONES.create(cfg.backbone.name, in_chans=train_ds.in_chans, **cfg.backbone.args)
    aug_kwargs = dict(size=size, mean=train_ds.band_mean, std=train_ds.band_std, **cfg.augmentation.args)
    if method_cls.n_views > 0:
        aug_kwargs["n_views"] = method_cls.n_views
    augmentation = AUGMENTATIONS.create(cfg.augmentation.name, **aug_kwargs)
    method = method_cls(
        backbone,
        augmentation=augmentation,
        regularizer=regularizer,
        alpha=cfg.geo.alpha,
        geo_embedding=cfg.geo.embedding,
        optim=to_dict(cfg.optimizer),
        batch_size=d.batch_size,
        seed=cfg.trainer.seed,
        eval_preprocess=Preprocess(size, train_ds.band_mean, train_ds.band_std),
        knn_k=cfg.eval.knn_k,
        knn_temperature=cfg.eval.knn_temperature,
        temporal_views=cfg.augmentation.temporal_views or "different",
        **cfg.method.args,
    )
    method.check_contract(train_source.keys, str(d.path))
    method.setup_data(train_ds)
    if regularizer is not None:
        regularizer.setup(train_ds, method.embed_dim)
    # what the run really uses, recipe and config overrides resolved, goes into config.yaml
    overridden = sorted(k for k, v in to_dict(cfg.optimizer).items() if v is not None)
    cfg.optimizer = OmegaConf.merge(cfg.optimizer, method.optim.as_dict())
    if regularizer is not None:
        cfg.geo.embedding = method.geo_embedding
    log.info("optimiser: %s (the %s recipe; from the config: %s)",
             ", ".join(f"{k}={v}" for k, v in method.optim.as_dict().items()), cfg.method.name,
             ", ".join(overridden) or "nothing")

    common = dict(num_workers=d.num_workers, persistent_workers=d.num_workers > 0,
                  # pinned pages only help a copy to a GPU
                  pin_memory=torch.cuda.is_available() and cfg.trainer.accelerator != "cpu",
                  worker_init_fn=dataloader_worker_init if d.num_workers > 0 else None)
    if d.sampler == "geo_neighbors":
        batch_sampler = GeoNeighborBatchSampler(train_ds.lat, train_ds.lon, d.batch_size,
                                                neighbor_km=d.neighbor_km, seed=cfg.trainer.seed)
        train_loader = make_loader(train_source, batch_sampler=batch_sampler, resumable=True, **common)
    elif d.sampler == "places":  # the GeoRank authors' SSL4EO-S12 epochs: one random date per place
        groups = None if train_ds.group_all is None else np.asarray(train_ds.group_all)[train_ds.indices]
        train_loader = make_loader(train_source, batch_size=d.batch_size, drop_last=True, resumable=True,
                                   sampler=PlaceSampler(groups, len(train_ds), cfg.trainer.seed), **common)
    elif d.sampler is None:
        train_loader = make_loader(train_source, batch_size=d.batch_size, drop_last=True, resumable=True,
                                   sampler=SeededRandomSampler(len(train_source), cfg.trainer.seed), **common)
    else:
        raise ConfigError(f"data.sampler: unknown sampler {d.sampler!r} (use geo_neighbors, places or leave it "
                          "empty)")

    val_loaders: List[DataLoader] = []
    if cfg.trainer.knn_every_n_epochs > 0 and train_ds.target_key is not None:
        try:
            val_ds = GeoDataset(d.path, split="val", scheme=d.scheme, bands=bands)
        except DataError:
            val_ds = None  # no val split: monitoring is skipped, the final evaluation still runs
        if val_ds is not None:
            eval_common = dict(batch_size=max(d.batch_size, 256), **common)
            # the geo_neighbors batch sampler shards itself, so Lightning injects no samplers there
            sharded = d.sampler == "geo_neighbors"
            val_loaders = [DataLoader(ds, sampler=RankShardSampler(len(ds)) if sharded else None, **eval_common)
                           for ds in (train_ds, val_ds)]
    return BuiltRun(method=method, train_loader=train_loader, val_loaders=val_loaders, train_dataset=train_ds)


def check_locations(train_ds: GeoDataset, cfg: DictConfig) -> None:
    """A file without lat/lon (evaluation-only data) pretrains only what reads no locations: a
    one-line DataError naming the file and the setting that needs them (a geo regularizer, a
    method whose batch keys include lat/lon, neighbour pairs, the geo_neighbors sampler)."""
    if train_ds.has_location:
        return
    from .registry import METHODS

    d = cfg.data
    if cfg.geo.name:
        train_ds.require_location(f"geo.name: {cfg.geo.name} (a geo regularizer)")
    if {"lat", "lon"} & set(METHODS.get(cfg.method.name).factory.batch_keys):
        train_ds.require_location(f"method.name: {cfg.method.name}")
    if d.neighbor_pairs:
        train_ds.require_location("data.neighbor_pairs")
    if d.sampler == "geo_neighbors":
        train_ds.require_location("data.sampler: geo_neighbors")


def _paired(train_ds: GeoDataset, cfg: DictConfig):
    """The training items: the split itself, or each sample with a partner (another date of the
    place, ``data.temporal_positives``; a neighbour, ``data.neighbor_pairs``)."""
    d = cfg.data
    if d.temporal_positives or cfg.augmentation.temporal_views in ("different", "mixed"):
        from .data.temporal import TemporalPositives

        return TemporalPositives(train_ds, seed=cfg.trainer.seed)
    if d.neighbor_pairs:
        from .data.neighbors import NeighborPairs

        pairs = NeighborPairs(train_ds, max_offset=d.neighbor_max_offset, seed=cfg.trainer.seed)
        paired = round(pairs.neighbor_fraction * len(pairs))
        report = log.info if paired else log.warning  # no pair at all: the method sees only self-pairs
        rest = "; the rest are paired with themselves" if paired < len(pairs) else ""
        report("neighbour pairs: %d of %d training samples have a neighbour within %g footprint sides%s",
               paired, len(pairs), d.neighbor_max_offset, rest)
        return pairs
    return train_ds


def pretrain(cfg: DictConfig, resume: Optional[str] = None, evaluate_after: bool = True) -> Dict[str, Any]:
    """Train, checkpoint, then score the backbone with the shared harness.

    Everything a user can get wrong (values, the ``--resume`` checkpoint, data, evaluation plan,
    an existing run, another process writing the run) fails with a one-line error before the run
    directory is touched; the run directory is then owned (:class:`RunDirectory`) until the end.
    SIGINT / SIGTERM end the training with a resumable ``last.ckpt`` and raise :class:`Interrupted`."""
    import lightning as L

    run_dir = run_dir_of(cfg)
    last = run_dir / "checkpoints" / "last.ckpt"
    fresh = not resume or Path(resume).resolve().parent != last.parent.resolve()  # not a resume of this run
    run: Optional[RunDirectory] = None
    signals = SignalHandlers()
    on_interrupt = StopOnSignal(signals, last)

    def ours(path: Path) -> bool:  # is `path` (still) this run's checkpoint to resume from?
        return path.is_file() and (on_interrupt.saved or not fresh or (run is not None and run.committed))

    with signals:
        try:
            validate(cfg)
            L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
            resume_state, skipped = _check_before_writing(cfg, resume, run_dir, fresh, evaluate_after)
            built = build(cfg)
            if resume_state is not None:
                check_resume_shapes(resume, resume_state, built.method)
                del resume_state
            metadata = RunMetadata(to_dict(cfg), list(built.train_dataset.bands), built.train_dataset.band_mean,
                                   built.train_dataset.band_std)  # into every checkpoint, normalisation included
            started = session_start()  # the epoch and step this session starts from (after --resume)
            trainer = make_trainer(cfg, run_dir, built.monitor, steps_per_epoch=len(built.train_loader),
                                   extra_callbacks=(on_interrupt, metadata, started))
            if trainer.is_global_zero:  # the ranks as Lightning will set them up
                run = RunDirectory(run_dir).acquire()
                run.start(fresh, cfg.output.overwrite)
                on_interrupt.checkpointed = run.commit
                write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg), announce=False)  # atomic, as every output
            train_seconds = _fit(trainer, built, resume, signals)
            if run is not None:
                run.commit(finished=True)
            epochs_run, steps_run = started.ran(trainer)
            # epochs/steps: the run's total; *_run: this session's (a --resume continues a run)
            result: Dict[str, Any] = {"run_dir": str(run_dir), "train_seconds": train_seconds,
                                      "epochs": trainer.current_epoch, "steps": trainer.global_step,
                                      "epochs_run": epochs_run, "steps_run": steps_run,
                                      "best": _best_checkpoint(trainer, built, cfg),
                                      "config": to_dict(cfg)}
            if evaluate_after and trainer.is_global_zero:
                _evaluate_into(result, built.method, cfg, skipped)
                write_text(run_dir / "results.json", json.dumps(result, indent=2) + "\n", announce=False)
                log_final_metrics(run_dir, result["config"], result["eval"], step=trainer.global_step)
            return result
        except BaseException as e:
            if run is not None:
                run.rollback()  # only a new run that has no checkpoint yet: the old run comes back
            if isinstance(e, Interrupted) and e.checkpoint is None and ours(last):
                e.checkpoint = last
            raise
        finally:
            if run is not None:
                run.release()


def _check_before_writing(cfg: DictConfig, resume: Optional[str], run_dir: Path, fresh: bool,
                          evaluate_after: bool) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """What can fail beyond the config itself, checked before anything is built or written: the
    ``--resume`` checkpoint (its state dict is returned, for :func:`check_resume_shapes` once the
    model is built), the run directory and the final evaluation's data (the reason it will be
    skipped is returned: a file without labels)."""
    resume_state = check_resume_checkpoint(resume, cfg.method.name) if resume else None
    k, epochs = cfg.trainer.knn_every_n_epochs, cfg.trainer.max_epochs
    if 0 < epochs < k:  # said now, not found out at the end
        log.info("the online k-NN runs every %d epochs (trainer.knn_every_n_epochs) and the run has %d, so it will "
                 "not run and there will be no checkpoints/best.ckpt (only last.ckpt)", k, epochs)
    if is_rank_zero():  # the other processes would find rank 0's lock
        check_run_dir(run_dir, fresh, cfg.output.overwrite)  # again under the lock
    skipped = check_evaluation(cfg) if evaluate_after else None  # before hours of training, not after
    if skipped:
        log.warning("%s", skipped)
    return resume_state, skipped


def _fit(trainer, built: BuiltRun, resume: Optional[str], signals: SignalHandlers) -> float:
    """``trainer.fit`` (resumed from ``resume``, if given); a signal noted by any process ends it
    with :class:`Interrupted` (the checkpoint saved by :class:`StopOnSignal`). Returns the seconds
    it trained."""
    start = time.perf_counter()
    try:
        trainer.fit(built.method, train_dataloaders=built.train_loader,
                    val_dataloaders=built.val_loaders or None, ckpt_path=resume,
                    weights_only=True)  # tensors only, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
    except SystemExit:  # Lightning's SIGTERMException, or its exit(1) after a KeyboardInterrupt
        if signals.signum is None and not trainer.received_sigterm:
            raise
        raise Interrupted(signals.signum or signal.SIGTERM) from None  # (another rank's signal)
    except Exception as e:
        if signals.signum is None:
            raise
        # e.g. a DataLoader worker killed by the same signal before it was protected
        log.warning("training stopped by an error after %s: %s", signal.Signals(signals.signum).name,
                    (str(e).strip().splitlines() or [type(e).__name__])[0])
        raise Interrupted(signals.signum) from e
    finally:
        signals.deferring = False
    if signals.signum is not None:  # noted after the last step: the training is complete
        raise Interrupted(signals.signum)
    return time.perf_counter() - start


def _evaluate_into(result: Dict[str, Any], method: BaseMethod, cfg: DictConfig, skipped: Optional[str]) -> None:
    """The final evaluation's metrics as ``result["eval"]``, or, when it is ``skipped``, why."""
    if skipped:
        result["eval"], result["eval_skipped"] = {}, skipped
    else:
        result["eval"] = evaluate_method(method, cfg, progress=cfg.trainer.progress_bar)


def _best_checkpoint(trainer, built: BuiltRun, cfg: DictConfig) -> Dict[str, Any]:
    """What ``checkpoints/best.ckpt`` is: the training state at the online k-NN evaluation (on
    the val split) that scored highest, with that metric and score; or, when the online k-NN
    never ran, no checkpoint and why."""
    for callback in trainer.checkpoint_callbacks:
        path = Path(callback.dirpath or "") / "best.ckpt"
        if callback.monitor and path.is_file():
            # the score is unknown when the run directory was moved since (Lightning restores it only
            # from a checkpoint written in the same directory)
            score = callback.best_model_score
            return {"checkpoint": str(path), "metric": callback.monitor,
                    "score": None if score is None else float(score)}
    t = cfg.trainer
    if t.knn_every_n_epochs <= 0:
        why = "trainer.knn_every_n_epochs is 0 (online k-NN off)"
    elif built.train_dataset.target_key is None:
        why = f"{cfg.data.path} has no labels for the online k-NN"
    elif not built.val_loaders:
        why = f"the split of {cfg.data.path} has no val part for the online k-NN"
    else:
        why = f"the online k-NN runs every {t.knn_every_n_epochs} epochs and the run has {trainer.current_epoch}"
    return {"checkpoint": None, "why_not": why}


def _flat_config(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, every value a number, bool or string (what a
    TensorBoard hparam can hold; lists and None become their text)."""
    flat: Dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_config(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def log_final_metrics(run_dir: Path, config: Dict[str, Any], evaluations: Dict[str, Dict[str, Any]],
                      step: int) -> None:
    """The final evaluation of a run into its TensorBoard log (``run_dir/tb``), so that
    ``tensorboard --logdir runs`` compares runs without opening their results files: every
    metric as a scalar ``final/<where>/<protocol>/<metric>`` at ``step`` (``evaluations`` maps
    ``where``, a split scheme or ``dataset/scheme``, to a harness result), and the run's config,
    flattened, as hparams with those metrics (the HPARAMS tab)."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    metrics = {f"final/{where}/{protocol}/{name}": float(value)
               for where, res in evaluations.items() for protocol, values in res["metrics"].items()
               for name, value in values.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    if not metrics:
        return
    writer = SummaryWriter(str(Path(run_dir) / "tb"))  # a new event file beside the training's
    try:
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, step)
        for summary in hparams(_flat_config(config), metrics):  # experiment, session start, session end
            writer.file_writer.add_summary(summary, step)
    finally:
        writer.close()
