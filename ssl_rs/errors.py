"""User-facing errors.

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
