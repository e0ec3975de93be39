"""The Lightning ``Trainer`` a pretraining runs in (:func:`make_trainer`), its progress display
(:func:`training_progress`), and the ways to quiet Lightning's logging: :func:`quiet_lightning`
for every trainer and the bench runner, :func:`lightning_chatter_muted` for ``ssl-rs pretrain``.

Lightning is imported only when a trainer is made, so that the bench runner and the CLI can
import :func:`quiet_lightning` and :func:`lightning_chatter_muted` without it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Dict, Iterator, List, Optional, Tuple, Union

from omegaconf import DictConfig

if TYPE_CHECKING:
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_lightning() -> ContextManager[None]:
    """Quiet Lightning, in two degrees.

    Calling it drops, for the rest of the process, what users cannot act on: Lightning's adverts
    and the deprecation noise of its own internals; its useful lines (devices, checkpoints) stay.
    Every trainer does this (:func:`make_trainer`).

    Used as a context manager (``with quiet_lightning(): ...``), it also mutes Lightning's per-run
    chatter for the block: its INFO lines (devices, "fit stopped") and its warnings about a missing
    val loader (online k-NN off) or few DataLoader workers. That is for callers that print one
    progress line per run, which the chatter would bury (the bench runner). Lightning's other
    warnings and its errors still show; the log levels and warning filters come back at the end
    of the block."""
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in logger.filters):
            logger.addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
    # the online k-NN is computed on features gathered from every process, so syncing it is moot
    warnings.filterwarnings("ignore", message=r".*self\.log\('val/knn_.*sync_dist=True.*")
    return _per_run_chatter_muted()


#: Lightning's lines of every run that tell a user of ``ssl-rs pretrain`` nothing to act on: the
#: device summary, and the fit's start and end, which ssl-rs's progress and summary already show
LIGHTNING_CHATTER = re.compile(r"(GPU|TPU|HPU|IPU) available: |LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: "
                               r"|Loading `train_dataloader` to estimate number of stepping batches"
                               r"|`Trainer\.fit` stopped: ")
#: Lightning's warnings (``warnings.filterwarnings`` patterns) about what ssl-rs does on purpose: a
#: --resume writes into the run's own checkpoint directory, and a run without online k-NN has no
#: val loader (ssl-rs says so itself when the k-NN cannot run)
LIGHTNING_CHATTER_WARNINGS = (r"Checkpoint directory .* exists and is not empty",
                              r"You defined a `validation_step` but have no `val_dataloader`")
# Where Lightning's lines start: a logger's filter sees only the records made on it, not those
# its children pass up. rank_zero_info logs on whichever of the two rank_zero loggers was set last.
_CHATTER_LOGGERS = ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero",
                    "lightning.fabric.utilities.rank_zero", "lightning.pytorch.accelerators.cuda")


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not LIGHTNING_CHATTER.match(record.getMessage())


@contextlib.contextmanager
def lightning_chatter_muted() -> Iterator[None]:
    """Mute, for the block, exactly Lightning's per-run lines (:data:`LIGHTNING_CHATTER`) and its
    warnings about what ssl-rs does on purpose (:data:`LIGHTNING_CHATTER_WARNINGS`): what
    ``ssl-rs pretrain`` wraps a run in, so stderr holds ssl-rs's progress and log lines. Every
    other line and warning of Lightning still shows; the filters go at the end of the block."""
    chatter = _DropChatter()
    loggers = [logging.getLogger(name) for name in _CHATTER_LOGGERS]
    for logger in loggers:
        logger.addFilter(chatter)
    try:
        with warnings.catch_warnings():
            for message in LIGHTNING_CHATTER_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(chatter)


@contextlib.contextmanager
def _per_run_chatter_muted() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith("lightning")] + [logging.getLogger("lightning.pytorch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*val_dataloader.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def training_progress() -> "Callback":
    """The training's progress on stderr, by the rule of every command (:mod:`ssl_rs.progress`):
    a bar over all the run's steps on a terminal, a plain line now and then anywhere else; the
    epoch, the loss and the online k-NN ride along. Used instead of Lightning's own bar, which
    writes to stdout (so ``pretrain > log`` got bar frames among the results) and ignores
    whether it is on a terminal. Global rank zero only."""
    from lightning.pytorch.callbacks import Callback

    from .progress import Progress

    class TrainingProgress(Callback):
        NOTE_EVERY_S = 1.0  # reading the metrics waits for the device: not at every step

        def __init__(self) -> None:
            self.shown: Optional[Progress] = None
            self.noted = 0.0

        def on_train_start(self, trainer, pl_module) -> None:
            if not trainer.is_global_zero:
                return
            per_epoch = trainer.num_training_batches
            finite = isinstance(per_epoch, int) and trainer.max_epochs is not None and trainer.max_epochs > 0
            # a resumed run starts at its epoch: the bar shows the whole run, not only this session
            self.shown = Progress(per_epoch * trainer.max_epochs if finite else None, "training", "step",
                                  initial=trainer.current_epoch * per_epoch if finite else 0)
            self._note(trainer)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.shown is not None:
                if time.monotonic() - self.noted >= self.NOTE_EVERY_S:
                    self._note(trainer)
                self.shown.update(1)

        def on_train_end(self, trainer, pl_module) -> None:
            if self.shown is not None:
                self._note(trainer)  # the closing line shows the last loss and k-NN
            self._close()

        def on_exception(self, trainer, pl_module, exception) -> None:
            self._close(stopped=True)

        def _close(self, stopped: bool = False) -> None:
            if self.shown is not None:
                self.shown.close(stopped=stopped)
                self.shown = None

        def _note(self, trainer) -> None:
            self.noted = time.monotonic()
            epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None  # -1: no end
            epoch = trainer.current_epoch + 1
            parts = [f"epoch {min(epoch, epochs)}/{epochs}" if epochs else f"epoch {epoch}"]  # the last, once done
            for key, value in trainer.progress_bar_metrics.items():  # what methods log with prog_bar=True
                parts.append(f"{key.split('/')[-1]} {float(value):.3g}")
            self.shown.set_note(", ".join(parts))

    return TrainingProgress()


def session_start() -> "Callback":
    """A callback that notes the epoch and step a ``fit`` starts from, once ``--resume`` has
    restored them; after the fit, ``.ran(trainer)`` is (epochs, steps) trained in this session,
    so that a summary tells the epochs run now from the run's total."""
    from lightning.pytorch.callbacks import Callback

    class SessionStart(Callback):
        def __init__(self) -> None:
            self.epoch: Optional[int] = None
            self.step: Optional[int] = None

        def on_train_start(self, trainer, pl_module) -> None:
            self.epoch, self.step = trainer.current_epoch, trainer.global_step

        def ran(self, trainer) -> Tuple[int, int]:
            if self.epoch is None:  # no training started: a resumed run that had reached max_epochs
                return 0, 0
            return trainer.current_epoch - self.epoch, trainer.global_step - self.step

    return SessionStart()


def train_batch_limit(t: DictConfig) -> Union[int, float]:
    """``trainer.limit_train_batches`` as Lightning reads it: an int counts batches, a float in
    (0, 1] is a fraction of the epoch; a whole float above 1 (a config saved before the type was
    kept) counts batches."""
    limit = t.limit_train_batches
    return int(limit) if isinstance(limit, float) and limit > 1 else limit


def training_data_position() -> "Callback":
    """Puts a run resumed mid-epoch back at its place in the training data, so that the epoch goes
    on with the batches the uninterrupted run would have trained next.

    Lightning keeps the place of a stateful loader (:class:`ssl_rs.data.loader.ResumableLoader`)
    in every checkpoint, but restores it only if it sets the loader up after loading the
    checkpoint; a method that reads ``trainer.estimated_stepping_batches`` (every schedule of
    ours) has it set the loader up before (Lightning issue #20550). This callback reads the place
    from the checkpoint and gives it to the loaders when training starts, before the first batch.
    A checkpoint saved mid-epoch without the place (by an ssl-rs from before it was kept) resumes
    with one warning: that epoch restarts its data order."""
    from lightning.pytorch.callbacks import Callback

    from .data.loader import ResumableLoader

    class TrainingDataPosition(Callback):
        def __init__(self) -> None:
            self.saved: Optional[List[Dict[str, Any]]] = None

        def on_load_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
            fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
            self.saved = (fit_loop.get("state_dict") or {}).get("combined_loader")

        def on_train_start(self, trainer, pl_module) -> None:
            saved, self.saved = self.saved, None
            loop = trainer.fit_loop
            done, per_epoch = loop.epoch_loop.batch_progress.current.completed, trainer.num_training_batches
            if not (getattr(loop, "restarted_mid_epoch", loop.restarting) and 0 < done < per_epoch):
                return
            given = trainer.train_dataloader
            given = list(given.values()) if isinstance(given, dict) else list(given) if isinstance(
                given, (list, tuple)) else [given]
            loaders = [loader for loader in given if isinstance(loader, ResumableLoader)]
            if not loaders or any(loader.restored for loader in loaders):
                return  # not ours, or Lightning restored them itself
            if saved and len(saved) == len(loaders):
                for loader, state in zip(loaders, saved):
                    loader.load_state_dict(state)
                return
            if trainer.is_global_zero:
                log.warning("--resume: %s was saved after %d of the %d batches of epoch %d, without the training "
                            "data's position (an older ssl-rs): the epoch's other %d batches restart its data order, "
                            "so some of its samples are trained twice and others not at all", trainer.ckpt_path,
                            done, per_epoch, trainer.current_epoch + 1, per_epoch - done)

    return TrainingDataPosition()


def make_trainer(cfg: DictConfig, run_dir: Path, monitor: Optional[str], steps_per_epoch: Optional[int] = None,
                 extra_callbacks: Tuple["Callback", ...] = ()) -> "Trainer":
    """The trainer of ``cfg.trainer``, logging to ``run_dir/tb`` and checkpointing to
    ``run_dir/checkpoints``: ``last.ckpt`` at the end of every epoch, and ``best.ckpt`` by the
    ``monitor`` metric (the online k-NN) when there is one; progress on stderr
    (:func:`training_progress`) when ``trainer.progress_bar`` is set."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    quiet_lightning()
    t = cfg.trainer
    log_every = min(t.log_every_n_steps, steps_per_epoch) if steps_per_epoch else t.log_every_n_steps
    precision = t.precision or ("bf16-mixed" if torch.cuda.is_available() and t.accelerator != "cpu" else "32-true")
    ckpt_dir = run_dir / "checkpoints"
    # Lightning saves `save_last` only together with a top-k checkpoint, so "last" is its own
    # callback, written at the end of every epoch (what --resume needs).
    callbacks: List["Callback"] = [ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                                  save_on_train_epoch_end=True, enable_version_counter=False)]
    if monitor:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="max",
                                         save_top_k=1, enable_version_counter=False))
    # the learning rate of every parameter group (lr-<Optimizer>/<group>); methods log no lr of their own
    callbacks.append(LearningRateMonitor(logging_interval="step"))
    if t.progress_bar:
        callbacks.append(training_progress())
    callbacks.append(training_data_position())
    callbacks += list(extra_callbacks)
    kwargs: Dict[str, Any] = dict(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=precision, log_every_n_steps=max(1, log_every),
        # no placeholder hp_metric: the run's config and final metrics are written as hparams after
        # the final evaluation (ssl_rs.train), which TensorBoard's HPARAMS tab then compares across runs
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False),
        # Lightning's bar is off: it writes to stdout, training_progress() to stderr
        callbacks=callbacks, deterministic=t.deterministic, enable_progress_bar=False,
        check_val_every_n_epoch=max(1, t.knn_every_n_epochs), num_sanity_val_steps=0,
        enable_model_summary=False,
        # GeoNeighborBatchSampler splits its batches across processes itself (Lightning cannot
        # rebuild it around a DistributedSampler), and the monitoring loaders then use RankShardSampler
        use_distributed_sampler=cfg.data.sampler != "geo_neighbors",
    )
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = train_batch_limit(t)
    return L.Trainer(**kwargs)
