"""SIGINT (Ctrl-C) and SIGTERM (a scheduler's notice before preemption) during a pretraining:
they stop the training after the current step, which saves a resumable ``checkpoints/last.ckpt``,
and raise :class:`~ssl_rs.errors.Interrupted` (the CLI exits with 130 or 143).

:class:`SignalHandlers` are installed for the duration of a ``pretrain``; :class:`StopOnSignal`,
a Lightning callback, stops every process at the end of one same step;
:func:`dataloader_worker_init` keeps DataLoader workers alive through the first SIGTERM, for the
main process to stop them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .errors import Interrupted

log = logging.getLogger(__name__)

_worker_sigterms = 0


def _worker_sigterm(signum, frame) -> None:
    global _worker_sigterms
    _worker_sigterms += 1
    if _worker_sigterms > 1:
        os._exit(0)


def dataloader_worker_init(worker_id: int) -> None:
    """DataLoader workers outlive a first SIGTERM. A scheduler signals every process of a job (SLURM,
    ``kill -TERM -PGID``), and PyTorch's workers die of a SIGTERM their parent did not send, which
    crashes the main process in the middle of a step; the main process instead stops after the
    step and shuts its workers down. A second SIGTERM (a parent's terminate()) ends a worker.
    Lightning's seeding of workers (``seed_everything(workers=True)``) is kept."""
    signal.signal(signal.SIGTERM, _worker_sigterm)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)  # the rank is the process's, as Lightning's own hook has it


class SignalHandlers:
    """SIGINT and SIGTERM for the duration of a ``pretrain``. While Lightning trains
    (:meth:`defer`, from :class:`StopOnSignal`), a handler only notes the signal, and
    :class:`StopOnSignal` stops every process after the current step (a consistent, resumable
    checkpoint); no collective runs inside a handler, unlike Lightning's own SIGTERM handler, which
    is replaced for the time. At other times, or at a second Ctrl-C, they raise :class:`Interrupted`
    at once. A signal a launcher set to be ignored (background jobs ignore SIGINT) stays ignored;
    a ``pretrain`` in another thread than the main one keeps the handlers it finds; forked DataLoader
    workers ignore the signals (the main process stops them, see :func:`dataloader_worker_init`)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.deferring = False
        self._pid = os.getpid()
        self._saved: Dict[int, Any] = {}
        self._handler = self._handle  # one object, to install again

    def __enter__(self) -> "SignalHandlers":
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


class StopOnSignal(Callback):
    """Ends the training for a signal noted by :class:`SignalHandlers`: after each step, the
    processes agree (any of them noted one) and, if so, all raise Lightning's own
    ``SIGTERMException`` at the end of that same step; this saves ``last.ckpt`` then, a consistent
    state to resume from."""

    def __init__(self, signals: SignalHandlers, path: Path):
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
