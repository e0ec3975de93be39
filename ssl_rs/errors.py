"""User-facing errors, and the interruption every command reports the same way.

Anything a user can cause with bad input (a wrong path, a malformed file, an unknown
name) raises a subclass of :class:`SslRsError`. The CLI prints its message as one line
and exits with status 2; library users can catch it like any other exception.
"""


class SslRsError(Exception):
    """Base class for errors caused by user input; the message is shown as is."""


class DataError(SslRsError, ValueError):
    """A dataset file or its contents are missing or malformed."""


class ConfigError(SslRsError, ValueError):
    """A configuration, a name or an argument is invalid."""


class Interrupted(KeyboardInterrupt):
    """A command stopped by SIGINT (Ctrl-C) or SIGTERM: the CLI prints ``ssl-rs: interrupted``
    and exits with 128 + ``signum`` (130 / 143). ``checkpoint`` is the ``last.ckpt`` a stopped
    pretraining can ``--resume`` from, None if there is none."""

    def __init__(self, signum: int, checkpoint=None):
        import signal

        self.signum, self.checkpoint = int(signum), checkpoint
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")
