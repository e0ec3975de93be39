"""The run directory of a pretraining (``<output.dir>/<output.name>``), owned by one process.

Layout::

    config.yaml          the full resolved config
    checkpoints/         last.ckpt, best.ckpt (best online k-NN on the val split)
    tb/                  TensorBoard logs (every loss term, lr, EMA momentum, online k-NN)
    results.json         final k-NN (and linear) metrics per split scheme of the pretraining
                         file or of ``eval.data``, timing; ``eval_skipped`` says why there are
                         none (a file without labels)
    .lock                held (``flock``, with the owner's pid) by the one process writing the run
    .previous/           while a new run replaces an old one: the old run, until the new run's
                         first checkpoint (restored if the new run fails before it)
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig

from .errors import ConfigError

log = logging.getLogger(__name__)


def run_dir_of(cfg: DictConfig) -> Path:
    """Where a config's run goes: ``output.dir/output.name`` (default name: <method>[_<regularizer>])."""
    name = cfg.output.name or (cfg.method.name + (f"_{cfg.geo.name}" if cfg.geo.name else ""))
    return Path(cfg.output.dir) / name


#: what a pretraining writes into its run directory (anything else there is left alone)
RUN_ENTRIES = ("config.yaml", "checkpoints", "tb", "results.json")
LOCK_FILE, PREVIOUS_RUN = ".lock", ".previous"


def is_rank_zero() -> bool:
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
