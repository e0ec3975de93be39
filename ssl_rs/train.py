"""Pretraining: config -> data, backbone, views, method, regularizer -> Lightning Trainer ->
shared k-NN evaluation -> ``results.json`` in the run directory.

Run directory layout (``<output.dir>/<output.name>``)::

    config.yaml          the full resolved config
    checkpoints/         last.ckpt, best.ckpt (best online k-NN on the val split)
    tb/                  TensorBoard logs (every loss term, lr, EMA momentum, online k-NN)
    results.json         final k-NN (and linear) metrics per split scheme of the pretraining
                         file or of ``eval.data``, timing; ``eval_skipped`` says why there are
                         none (a file without labels)
    .lock                held (``flock``, with the owner's pid) by the one process writing the run
    .previous/           while a new run replaces an old one: the old run, until the new run's
                         first checkpoint (restored if the new run fails before it)

SIGINT (Ctrl-C) and SIGTERM (a scheduler's notice before preemption) stop the training after the
current step, save a resumable ``checkpoints/last.ckpt`` and raise :class:`Interrupted` (the CLI
exits with 130 or 143).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler

from .config import check_args, to_dict, validate
from .errors import ConfigError, DataError, Interrupted

CHECKPOINT_CONFIG_KEY = "ssl_rs_config"

log = logging.getLogger(__name__)


class SeededRandomSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on (seed, epoch), so a resumed run
    visits the samples in the same order as an uninterrupted one (Lightning calls set_epoch)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class RankShardSampler(Sampler[int]):
    """This process's share of ``0..n-1`` in order, padded to equal shares like
    ``DistributedSampler(shuffle=False)``; the rank is read when iterating (after Lightning has
    initialised ``torch.distributed``). For the monitoring loaders of runs whose training loader
    shards itself (the ``geo_neighbors`` batch sampler), where Lightning must not inject samplers."""

    def __init__(self, n: int):
        self.n = n

    @staticmethod
    def shard() -> Tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def __iter__(self) -> Iterator[int]:
        world, rank = self.shard()
        padded = [i % self.n for i in range(len(self) * world)]
        return iter(padded[rank::world])

    def __len__(self) -> int:
        return -(-self.n // self.shard()[0])


_worker_sigterms = 0


def _worker_sigterm(signum, frame) -> None:
    global _worker_sigterms
    _worker_sigterms += 1
    if _worker_sigterms > 1:
        os._exit(0)


def _worker_init(worker_id: int) -> None:
    """DataLoader workers outlive a first SIGTERM. A scheduler signals every process of a job (SLURM,
    ``kill -TERM -PGID``), and PyTorch's workers die of a SIGTERM their parent did not send, which
    crashes the main process in the middle of a step; the main process instead stops after the
    step and shuts its workers down. A second SIGTERM (a parent's terminate()) ends a worker.
    Lightning's seeding of workers (``seed_everything(workers=True)``) is kept."""
    signal.signal(signal.SIGTERM, _worker_sigterm)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)  # the rank is the process's, as Lightning's own hook has it


def _import_registries() -> None:
    from . import augmentations, backbones, methods  # noqa: F401  (registration on import)
    from .geo import regularizers  # noqa: F401


def build(cfg: DictConfig) -> Dict[str, Any]:
    """Build datasets, loaders and the method from a validated config."""
    from .augmentations import Preprocess
    from .data.dataset import GeoDataset
    from .registry import AUGMENTATIONS, BACKBONES, METHODS, REGULARIZERS

    _import_registries()
    d = cfg.data
    if d.temporal_positives and d.neighbor_pairs:
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
    if len(train_ds) < d.batch_size:
        raise ConfigError(
            f"data.batch_size: {d.batch_size} is larger than the {len(train_ds)} training samples of {d.path}"
        )
    method_entry = METHODS.get(cfg.method.name)
    if getattr(method_entry.factory, "needs_neighbor_pairs", False) and not d.neighbor_pairs:
        raise ConfigError(f"method {cfg.method.name!r} needs neighbour pairs: set data.neighbor_pairs=true")
    backbone_entry = BACKBONES.get(cfg.backbone.name)
    aug_entry = AUGMENTATIONS.get(cfg.augmentation.name)
    check_args("method", cfg.method.name, method_entry.factory.__init__, dict(cfg.method.args))
    check_args("backbone", cfg.backbone.name, backbone_entry.factory, dict(cfg.backbone.args), reserved=("in_chans",))
    check_args("augmentation", cfg.augmentation.name, aug_entry.factory, dict(cfg.augmentation.args),
               reserved=("size", "mean", "std", "n_views", "seed"))
    # paired datasets come before the model so that a file unfit for them fails fast
    train_source = train_ds
    if d.temporal_positives:
        from .data.temporal import TemporalPositives

        train_source = TemporalPositives(train_ds, seed=cfg.trainer.seed)
    if d.neighbor_pairs:
        from .data.neighbors import NeighborPairs

        train_source = NeighborPairs(train_ds, max_offset=d.neighbor_max_offset, seed=cfg.trainer.seed)
        paired = round(train_source.neighbor_fraction * len(train_source))
        report = log.info if paired else log.warning  # no pair at all: the method sees only self-pairs
        rest = "; the rest are paired with themselves" if paired < len(train_source) else ""
        report("neighbour pairs: %d of %d training samples have a neighbour within %g footprint sides%s",
               paired, len(train_source), d.neighbor_max_offset, rest)
    regularizer = None
    if cfg.geo.name:
        reg_entry = REGULARIZERS.get(cfg.geo.name)
        check_args("geo", cfg.geo.name, reg_entry.factory, dict(cfg.geo.args))
        regularizer = reg_entry.factory(**cfg.geo.args)
        regularizer.check_needs(train_ds.keys, str(d.path))

    size = cfg.augmentation.size or train_ds.size[0]
    backbone = backbone_entry.factory(in_chans=train_ds.in_chans, **cfg.backbone.args)
    aug_kwargs = dict(size=size, mean=train_ds.band_mean, std=train_ds.band_std, **cfg.augmentation.args)
    n_views = getattr(method_entry.factory, "n_views", 2)
    if n_views > 0:
        aug_kwargs["n_views"] = n_views
    augmentation = aug_entry.factory(**aug_kwargs)
    method = method_entry.factory(
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
        **cfg.method.args,
    )
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
    method.run_config = to_dict(cfg)
    method.data_bands = list(train_ds.bands)

    common = dict(num_workers=d.num_workers, persistent_workers=d.num_workers > 0,
                  pin_memory=torch.cuda.is_available(), worker_init_fn=_worker_init if d.num_workers > 0 else None)
    if d.sampler == "geo_neighbors":
        from .geo.samplers import GeoNeighborBatchSampler

        batch_sampler = GeoNeighborBatchSampler(train_ds.lat, train_ds.lon, d.batch_size,
                                                neighbor_km=d.neighbor_km, seed=cfg.trainer.seed)
        train_loader = DataLoader(train_source, batch_sampler=batch_sampler, **common)
    elif d.sampler is None:
        train_loader = DataLoader(train_source, batch_size=d.batch_size, drop_last=True,
                                  sampler=SeededRandomSampler(len(train_source), cfg.trainer.seed), **common)
    else:
        raise ConfigError(f"data.sampler: unknown sampler {d.sampler!r} (use geo_neighbors or leave it empty)")

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
    return {"method": method, "train_loader": train_loader, "val_loaders": val_loaders, "train_dataset": train_ds}


def run_dir_of(cfg: DictConfig) -> Path:
    name = cfg.output.name or (cfg.method.name + (f"_{cfg.geo.name}" if cfg.geo.name else ""))
    return Path(cfg.output.dir) / name


class _Signals:
    """SIGINT and SIGTERM for the duration of a ``pretrain``. While Lightning trains
    (:meth:`defer`, from :class:`_StopOnSignal`), a handler only notes the signal, and
    :class:`_StopOnSignal` stops every process after the current step (a consistent, resumable
    checkpoint); no collective runs inside a handler, unlike Lightning's own SIGTERM handler, which
    is replaced for the time. At other times, or at a second Ctrl-C, they raise :class:`Interrupted`
    at once. A signal a launcher set to be ignored (background jobs ignore SIGINT) stays ignored;
    a ``pretrain`` in another thread than the main one keeps the handlers it finds; forked DataLoader
    workers ignore the signals (the main process stops them, see :func:`_worker_init`)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.deferring = False
        self._pid = os.getpid()
        self._saved: Dict[int, Any] = {}
        self._handler = self._handle  # one object, to install again

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._saved[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        self.deferring = False
        for signum, handler in self._saved.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._saved = {}

    def defer(self) -> None:
        """Training has started (Lightning has installed its own handlers): note signals, do not raise."""
        for signum in self._saved:  # Lightning restores ours when it tears down
            signal.signal(signum, self._handler)
        self.deferring = True

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the main process decides when to stop
            return
        if self.signum is None:
            self.signum = signum
            if self.deferring:
                return
        elif self.deferring and signum != signal.SIGINT:
            return  # already stopping after this step
        raise Interrupted(self.signum)


#: what a pretraining writes into its run directory (anything else there is left alone)
RUN_ENTRIES = ("config.yaml", "checkpoints", "tb", "results.json")
LOCK_FILE, PREVIOUS_RUN = ".lock", ".previous"


def _is_rank_zero() -> bool:
    """Whether this process is (or will be) the one of global rank 0, read from what launchers set
    (Lightning's own DDP launcher, torchrun, SLURM) before Lightning has set the ranks up."""
    return all(os.environ.get(v, "0").strip() in ("", "0")
               for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


_LOCKED = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


def _lock_owner_text(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        pid = os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


def _lock_conflict(run_dir: Path, owner: str) -> ConfigError:
    return ConfigError(f"{run_dir}: the run directory is in use by another ssl-rs pretrain ({owner}); "
                       "wait for it to end, or choose another output.name=...")


def check_run_dir(run_dir: Path, fresh: bool, overwrite: bool) -> None:
    """Read-only checks of the run directory, so that a doomed run fails before building anything:
    another process owns it, or (a new run, not ``output.overwrite``) a run is already there.
    :class:`RunDirectory` checks both again under the lock."""
    lock = run_dir / LOCK_FILE
    if lock.is_file():
        try:
            fd = os.open(lock, os.O_RDWR)  # (NFS locks exclusively only what is open for writing)
        except OSError:  # its owner has just ended, or not ours to probe: the lock decides
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in _LOCKED:
                    raise _lock_conflict(run_dir, _lock_owner_text(fd)) from None
            finally:
                os.close(fd)  # releases the probe's lock, if it got it
    if fresh and not overwrite:
        _refuse_existing_run(run_dir)


def _refuse_existing_run(run_dir: Path) -> None:
    for done in ("checkpoints/last.ckpt", "results.json"):
        if (run_dir / done).exists():
            raise ConfigError(
                f"{run_dir}: a run already exists there; continue it with --resume {run_dir}/checkpoints/last.ckpt, "
                "or choose output.name=... or output.overwrite=true"
            )


class RunDirectory:
    """One process (global rank 0) owns a run directory for a whole ``pretrain``: an exclusive
    ``flock`` on ``RUN/.lock`` (holding its pid), released (and the file removed) when it ends; a
    second ``pretrain`` into the same directory gets a one-line ConfigError naming the owner.

    A new run (not a ``--resume`` of this directory's own checkpoint) never mixes with an old one:
    the old run's files (``RUN_ENTRIES``) are moved into ``RUN/.previous`` when it starts, removed
    once it has written its first checkpoint (:meth:`commit`), and put back if it ends before that
    (:meth:`rollback`), together with the removal of what it wrote."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: Optional[int] = None
        self._created: List[Path] = []
        self.replacing = self.committed = False

    # ------------------------------------------------------------------ lock
    def acquire(self) -> "RunDirectory":
        missing, p = [], self.path
        while not p.exists():
            missing.append(p)
            p = p.parent
        self.path.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first; removed again if left empty
        lock = self.path / LOCK_FILE
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in _LOCKED:  # a file system without locks: run, unguarded
                    log.warning("%s: cannot lock (%s); make sure no other pretrain writes this run",
                                lock, e.strerror)
                    break
                owner = _lock_owner_text(fd)
                os.close(fd)
                self._remove_created()
                raise _lock_conflict(self.path, owner) from None
            try:  # an owner that ended removes the file: a lock on its old inode is no lock
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path / LOCK_FILE)  # still holding it: see the inode check in acquire
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for d in self._created:
            try:
                d.rmdir()
            except OSError:
                break

    # ------------------------------------------------------------------ replacing an old run
    def start(self, fresh: bool, overwrite: bool) -> None:
        """Under the lock: finish what a killed owner left half done, refuse to mix with an existing
        run (unless ``overwrite``), and move the old run aside for a new one."""
        self._recover()
        if not fresh:
            return
        if not overwrite:
            _refuse_existing_run(self.path)
        old = [e for e in RUN_ENTRIES if (self.path / e).exists()]
        if old:
            previous = self.path / PREVIOUS_RUN
            previous.mkdir()
            for entry in old:
                os.rename(self.path / entry, previous / entry)
            log.info("%s: the previous run is kept in %s until this one's first checkpoint", self.path, previous)
        self.replacing = True

    def _recover(self) -> None:
        previous = self.path / PREVIOUS_RUN
        if not previous.is_dir():
            return
        if (self.path / "checkpoints" / "last.ckpt").exists():  # its replacement had checkpointed
            shutil.rmtree(previous)
        else:
            log.warning("%s: restoring the previous run from %s (a replacement ended before its first checkpoint)",
                        self.path, previous)
            self._restore(previous)

    def _restore(self, previous: Path) -> None:
        for entry in RUN_ENTRIES:
            new = self.path / entry
            if new.is_dir() and not new.is_symlink():
                shutil.rmtree(new)
            elif new.exists() or new.is_symlink():
                new.unlink()
        if previous.is_dir():
            for entry in previous.iterdir():
                os.rename(entry, self.path / entry.name)
            previous.rmdir()

    def commit(self, finished: bool = False) -> None:
        """The new run has its first checkpoint (or has ``finished`` its training): the old one goes."""
        if self.replacing and not self.committed and (finished or (self.path / "checkpoints" / "last.ckpt").exists()):
            shutil.rmtree(self.path / PREVIOUS_RUN, ignore_errors=True)
            self.committed = True

    def rollback(self) -> None:
        """The new run ended before its first checkpoint: remove what it wrote, restore the old run."""
        if self.replacing and not self.committed:
            self._restore(self.path / PREVIOUS_RUN)
            self.replacing = False


class _StopOnSignal(Callback):
    """Ends the training for a signal noted by :class:`_Signals`: after each step, the processes
    agree (any of them noted one) and, if so, all raise Lightning's own ``SIGTERMException`` at the
    end of that same step; this saves ``last.ckpt`` then, a consistent state to resume from."""

    def __init__(self, signals: _Signals, path: Path):
        self.signals, self.path, self.saved = signals, Path(path), False
        #: called on global rank 0 whenever a checkpoint may have been written (RunDirectory.commit)
        self.checkpointed: Optional[Callable[[], None]] = None

    def _checkpointed(self, trainer) -> None:
        if self.checkpointed is not None and trainer.is_global_zero:
            self.checkpointed()

    def on_train_start(self, trainer, pl_module) -> None:
        self.signals.defer()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._checkpointed(trainer)  # the last epoch's end wrote last.ckpt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.reduce_boolean_decision(self.signals.signum is not None, all=False):
            # Lightning's stop flag: the loop raises SIGTERMException at the end of this step
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        try:
            trainer.save_checkpoint(self.path, weights_only=False)  # the full, resumable state
        except Exception as e:  # keep the interruption; the end-of-epoch last.ckpt (if any) stays
            log.warning("could not save %s on interruption: %s", self.path, e)
            return
        self.saved = True
        self._checkpointed(trainer)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def _quiet_lightning() -> None:
    """Keep Lightning's useful lines (devices, checkpoints) and drop its adverts and the
    deprecation noise of its own internals, which users cannot act on."""
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in logger.filters):
            logger.addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
    # the online k-NN is computed on features gathered from every process, so syncing it is moot
    warnings.filterwarnings("ignore", message=r".*self\.log\('val/knn_.*sync_dist=True.*")


def make_trainer(cfg: DictConfig, run_dir: Path, monitor: Optional[str], steps_per_epoch: Optional[int] = None,
                 extra_callbacks: Tuple[Callback, ...] = ()):
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import TensorBoardLogger

    _quiet_lightning()
    t = cfg.trainer
    log_every = min(t.log_every_n_steps, steps_per_epoch) if steps_per_epoch else t.log_every_n_steps
    precision = t.precision or ("bf16-mixed" if torch.cuda.is_available() and t.accelerator != "cpu" else "32-true")
    ckpt_dir = run_dir / "checkpoints"
    # Lightning saves `save_last` only together with a top-k checkpoint, so "last" is its own
    # callback, written at the end of every epoch (what --resume needs).
    callbacks: List[Callback] = [ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                                save_on_train_epoch_end=True, enable_version_counter=False)]
    if monitor:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="max",
                                         save_top_k=1, enable_version_counter=False))
    callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += list(extra_callbacks)
    kwargs: Dict[str, Any] = dict(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=precision, log_every_n_steps=max(1, log_every),
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tb", version=""),
        callbacks=callbacks, deterministic=t.deterministic, enable_progress_bar=t.progress_bar,
        check_val_every_n_epoch=max(1, t.knn_every_n_epochs), num_sanity_val_steps=0,
        enable_model_summary=False,
        # GeoNeighborBatchSampler splits its batches across processes itself (Lightning cannot
        # rebuild it around a DistributedSampler), and the monitoring loaders then use RankShardSampler
        use_distributed_sampler=cfg.data.sampler != "geo_neighbors",
    )
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = t.limit_train_batches
    return L.Trainer(**kwargs)


def pretrain(cfg: DictConfig, resume: Optional[str] = None, evaluate_after: bool = True) -> Dict[str, Any]:
    """Train, checkpoint, then score the backbone with the shared harness.

    Everything a user can get wrong (values, the ``--resume`` checkpoint, data, evaluation plan,
    an existing run, another process writing the run) fails with a one-line error before the run
    directory is touched; the run directory is then owned (:class:`RunDirectory`) until the end.
    SIGINT / SIGTERM end the training with a resumable ``last.ckpt`` and raise :class:`Interrupted`."""
    import lightning as L

    run_dir = run_dir_of(cfg)
    last = run_dir / "checkpoints" / "last.ckpt"
    fresh = not resume or Path(resume).resolve().parent != last.parent.resolve()
    run: Optional[RunDirectory] = None
    signals = _Signals()
    on_interrupt = _StopOnSignal(signals, last)

    def ours(path: Path) -> bool:  # is `path` (still) this run's checkpoint to resume from?
        return path.is_file() and (on_interrupt.saved or not fresh or (run is not None and run.committed))

    with signals:
        try:
            validate(cfg)
            L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
            resume_state = check_resume_checkpoint(resume, cfg) if resume else None  # before anything is written
            if _is_rank_zero():
                check_run_dir(run_dir, fresh, cfg.output.overwrite)  # before building; again under the lock
            skipped = check_evaluation(cfg) if evaluate_after else None  # before hours of training, not after
            if skipped:
                log.warning("%s", skipped)
            built = build(cfg)
            method, train_ds = built["method"], built["train_dataset"]
            if resume_state is not None:
                check_resume_shapes(resume, resume_state, method)
                del resume_state
            monitor = None
            if built["val_loaders"]:
                monitor = "val/knn_ap_macro" if train_ds.multi_label else "val/knn_acc_macro"
            trainer = make_trainer(cfg, run_dir, monitor, steps_per_epoch=len(built["train_loader"]),
                                   extra_callbacks=(on_interrupt,))
            if trainer.is_global_zero:  # the ranks as Lightning will set them up
                run = RunDirectory(run_dir).acquire()
                run.start(fresh, cfg.output.overwrite)
                on_interrupt.checkpointed = run.commit
                OmegaConf.save(cfg, run_dir / "config.yaml")
            start = time.perf_counter()
            try:
                trainer.fit(method, train_dataloaders=built["train_loader"],
                            val_dataloaders=built["val_loaders"] or None, ckpt_path=resume,
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
            train_seconds = time.perf_counter() - start
            if run is not None:
                run.commit(finished=True)
            result: Dict[str, Any] = {"run_dir": str(run_dir), "train_seconds": train_seconds,
                                      "epochs": trainer.current_epoch, "steps": trainer.global_step,
                                      "config": to_dict(cfg)}
            if evaluate_after and trainer.is_global_zero:
                if skipped:
                    result["eval"], result["eval_skipped"] = {}, skipped
                else:
                    result["eval"] = evaluate_method(method, cfg, progress=cfg.trainer.progress_bar)
                (run_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
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


def load_tensors_only(path: Path, prefix: str = "") -> Any:
    """A checkpoint file loaded with an explicit ``weights_only=True`` (which holds even under
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``: a pickled payload is refused, never run); a missing or
    unreadable file is one line, ``prefix`` + the path + what is wrong."""
    if not path.is_file():
        raise ConfigError(f"{prefix}{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{prefix}{path}: not a loadable ssl-rs checkpoint (tensors only: {first})") from None


def check_resume_checkpoint(path: str, cfg: DictConfig) -> Dict[str, Any]:
    """A ``--resume`` checkpoint must exist, load as tensors only (an explicit ``weights_only=True``
    holds even under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, so a pickled payload is refused, not
    run) and come from a run of the same method; a one-line ConfigError otherwise. Returns its
    ``state_dict`` for :func:`check_resume_shapes`."""
    p = Path(path)
    ckpt = load_tensors_only(p, "--resume: ")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"--resume: {p}: state_dict: not a training checkpoint")
    saved = ((ckpt.get(CHECKPOINT_CONFIG_KEY) or {}).get("method") or {}).get("name")
    if saved is not None and saved != cfg.method.name:
        raise ConfigError(f"--resume: {p} is a {saved!r} checkpoint; the config trains {cfg.method.name!r}")
    return ckpt["state_dict"]


def check_resume_shapes(path: str, state: Dict[str, Any], method: torch.nn.Module) -> None:
    """The checkpoint's weights must fit the model the config builds (same keys and shapes), or
    Lightning would fail half-way through restoring with a traceback."""
    own = method.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ConfigError(f"--resume: {path}: state_dict: no {missing[0]!r} ({len(missing)} weights of the "
                          "configured model missing: another backbone or method settings?)")
    for key, value in own.items():
        saved = state[key]
        if tuple(saved.shape) != tuple(value.shape):
            raise ConfigError(f"--resume: {path}: state_dict: {key} has shape {tuple(saved.shape)}, the config's "
                              f"model {tuple(value.shape)} (other method, backbone or data settings?)")


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
    from .data.dataset import GeoDataset

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
    from .evaluation.harness import evaluate

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


def load_backbone_from_checkpoint(path: str | os.PathLike) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Rebuild the backbone of a training checkpoint (``weights_only`` loading, no pickled code).

    Returns the backbone (eval mode) and the run's config dict (with ``data_bands``).
    """
    from .backbones import create_backbone

    p = Path(path)
    ckpt = load_tensors_only(p)
    if not isinstance(ckpt, dict) or CHECKPOINT_CONFIG_KEY not in ckpt:
        raise ConfigError(f"{p}: {CHECKPOINT_CONFIG_KEY}: not an ssl-rs training checkpoint")
    cfg = ckpt[CHECKPOINT_CONFIG_KEY]
    bands = ckpt.get("ssl_rs_bands") or []
    backbone = create_backbone(cfg["backbone"]["name"], in_chans=len(bands), **cfg["backbone"]["args"])
    _import_registries()
    from .registry import METHODS

    method_cls = METHODS.get(cfg["method"]["name"]).factory
    method_args = cfg["method"].get("args") or {}
    # Methods whose encoder is not the plain backbone (SatMAE's band-group ViT) rebuild it here.
    rebuild = getattr(method_cls, "checkpoint_encoder", None)
    if rebuild is not None:
        backbone = rebuild(backbone, method_args, bands)
    prefix = method_cls.checkpoint_backbone_prefix(method_args)  # DINO: its teacher by default
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    backbone.load_state_dict(state)
    return backbone.eval(), {**cfg, "data_bands": bands}
