"""Atomic output files: the one policy of every ssl-rs command that writes a file.

* Output is written to a temporary file beside the target, ``.NAME.part`` (one name per output,
  so a rerun replaces a stale one), flushed to disk and moved into place with one
  ``os.replace``: a reader sees the old file or the new one, never part of one.
* When a write of NAME starts, a ``.NAME.part`` left by a killed run is removed (and so is a
  ``.NAME.XXXXXXXX.part`` of the ``mkstemp`` naming older versions used). While it writes, the
  writer holds an advisory lock (``flock``) on its part file, so a second process writing the
  same output at the same time is refused (or, for caches, waits) instead of deleting it.
* Files get the usual mode for the umask (0644 under umask 022), like any file a program creates.
* Replacing an existing output is allowed and said on the log (``ssl-rs: replaced OUT``).
* An ``OSError`` while writing (no space left, permission denied, read-only file system) ends as a
  :class:`~ssl_rs.errors.DataError` of one line, ``OUT: no space left on device``, and nothing of
  the attempt is left behind.

``with atomic_output(path) as out: out.file.write(data)`` writes through the part file's object
(``out.file``, binary, readable and seekable, which h5py accepts too) or ``out.part`` (its path,
for libraries that open a path themselves); ``write_bytes`` / ``write_text`` / ``copy_file``
cover the one-shot cases.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

from .errors import DataError, Interrupted

try:  # POSIX advisory locks; without them (Windows) concurrent writers are not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
PART_SUFFIX = ".part"

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a parent directory is not a directory",
    errno.EISDIR: "is a directory",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
}

# errors of the device written to, whoever raises them
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def part_path(path: PathLike) -> Path:
    """The temporary file an output is written to before it is moved into place: ``.NAME.part``."""
    path = Path(path)
    return path.with_name(f".{path.name}{PART_SUFFIX}")


def os_error(path: PathLike, error: OSError) -> DataError:
    """The one-line :class:`DataError` for an ``OSError`` met while writing ``path``."""
    reason = _REASONS.get(error.errno) if error.errno is not None else None
    if reason is None:
        reason = (error.strerror or str(error) or type(error).__name__).splitlines()[0]
        reason = reason[:1].lower() + reason[1:]
    return DataError(f"{path}: {reason}")


def check_output(path: PathLike) -> Path:
    """``path`` as a Path, if it can be an output file: not a directory, and its nearest existing
    ancestor is a directory (missing ones are created when writing starts)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: output: is a directory, expected a file path")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise DataError(f"{path}: output: {parent} is not a directory")
            break
    return path


def nearest_existing(path: PathLike) -> Path:
    """``path`` or its closest ancestor that exists (what an output's missing folders would be
    created in)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe_writable(directory: PathLike) -> None:
    """Create and remove one hidden file in ``directory``: a real probe, since ``os.access`` says
    yes to root and knows nothing of read-only mounts. Raises the OSError a write would meet."""
    import tempfile

    fd, probe = tempfile.mkstemp(prefix=".ssl-rs-probe-", dir=directory)
    os.close(fd)
    os.unlink(probe)


# ----------------------------------------------------------------------------- the part file
class PartFile(io.RawIOBase):
    """Binary, seekable, readable file object over the part file's descriptor.

    A failing write (e.g. ENOSPC) is recorded in :attr:`error`, not raised: from then on writes
    go to memory (:attr:`_unsaved`, read back over the disk's bytes), so a library writing through
    it (h5py's file-object driver) finishes its call cleanly and reads back what it wrote, instead
    of failing half-way, which for HDF5 means pages of errors, or a crash when it re-reads
    metadata that never reached the disk. The owner checks :attr:`error` (``AtomicOutput.check``)
    as work progresses, so little is held in memory, and gives up with one line.
    """

    def __init__(self, fd: int, name: str):
        super().__init__()
        self._fd = fd
        self.name = name
        self._pos = 0
        self._end = 0  # furthest byte written, also while discarding
        self.error: Optional[OSError] = None
        self.discarding = False
        self._unsaved: list = []  # (offset, bytes) written after a failure, oldest first

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = max(os.fstat(self._fd).st_size, self._end) + offset
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        start = self._pos
        data = os.pread(self._fd, len(view), start)
        n = min(len(view), max(len(data), self._end - start, 0))
        view[: len(data)] = data
        view[len(data):n] = bytes(n - len(data))
        for offset, chunk in self._unsaved:  # what was written after a failure, in order
            lo, hi = max(offset, start), min(offset + len(chunk), start + n)
            if lo < hi:
                view[lo - start:hi - start] = chunk[lo - offset:hi - offset]
        self._pos += n
        return n

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        done = 0
        if self.error is None and not self.discarding:
            try:
                while done < n:
                    done += os.pwrite(self._fd, view[done:], self._pos + done)
            except OSError as e:
                self.error = e
        if done < n:
            self._unsaved.append((self._pos + done, bytes(view[done:])))
        self._pos += n
        self._end = max(self._end, self._pos)
        return n

    def truncate(self, size: Optional[int] = None) -> int:
        size = self._pos if size is None else size
        if self.error is None and not self.discarding:
            try:
                os.ftruncate(self._fd, size)
            except OSError as e:
                self.error = e
        self._end = size
        return size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()


def _lock(fd: int, wait: bool) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _remove_legacy_parts(path: Path) -> None:
    """Remove ``.NAME.XXXXXXXX.part`` files of ``path`` (``tempfile.mkstemp`` names of older versions)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}{re.escape(PART_SUFFIX)}")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        if pattern.fullmatch(entry.name):
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def _open_part(path: Path, part: Path, wait: bool) -> int:
    """Create ``part`` afresh (removing a stale one) and lock it; returns the descriptor."""
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        try:
            fd = os.open(part, flags)
        except FileNotFoundError:
            pass
        else:
            try:
                if not _lock(fd, wait):
                    raise DataError(f"{path}: another process is writing this file (its {part.name} is locked)")
                if _same_file(fd, part):  # unlocked: a killed run's leftover (or one just finished)
                    os.unlink(part)
            finally:
                os.close(fd)
        try:
            fd = os.open(part, flags | os.O_CREAT | os.O_EXCL, 0o666)  # the umask gives the mode
        except FileExistsError:
            continue  # another writer created it in between: look again
        if _lock(fd, False) and _same_file(fd, part):
            return fd
        os.close(fd)  # someone took it in between: look again
    raise DataError(f"{path}: cannot create {part.name}: other processes keep writing this file")


class AtomicOutput:
    """Write ``path`` through its part file; see the module docstring. Use as a context manager:
    a clean exit commits (moves the part file into place), an exception discards it.

    ``announce``: log ``replaced PATH`` when an existing file is replaced (outputs a user asked
    for); caches pass False. ``wait``: if another process is writing the same file, wait for it
    instead of refusing (the caller then usually finds the file it wanted).
    """

    def __init__(self, path: PathLike, *, announce: bool = True, wait: bool = False):
        self.path = Path(path)
        self.part = part_path(self.path)
        self.announce = announce
        self.wait = wait
        self.file: Optional[PartFile] = None
        self.replaced = False

    def __enter__(self) -> "AtomicOutput":
        check_output(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _remove_legacy_parts(self.path)
            fd = _open_part(self.path, self.part, self.wait)
        except OSError as e:
            raise os_error(self.path, e) from None
        self.file = PartFile(fd, str(self.part))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        error = self.file.error if self.file is not None else None
        self.discard()
        if error is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            # the failed write caused whatever was raised after it: report the cause
            raise os_error(self.path, error) from None
        if isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS:
            # a library writing to ``part`` by name (an OSError about an input passes unchanged)
            raise os_error(self.path, exc) from None

    def check(self) -> None:
        """Raise the one-line error of a write that failed so far (call it as work progresses)."""
        if self.file is not None and self.file.error is not None:
            raise os_error(self.path, self.file.error)

    def commit(self) -> None:
        """Flush the part file to disk and move it into place (logs when it replaced a file)."""
        assert self.file is not None, "the output is not open"
        try:
            self.check()
            raise_pending_signal()  # never move an interrupted output into place
            os.fsync(self.file.fileno())
            self.replaced = os.path.lexists(self.path)
            os.replace(self.part, self.path)
        except OSError as e:
            self.discard()
            raise os_error(self.path, e) from None
        except BaseException:
            self.discard()
            raise
        self.file.close()  # releases the lock, now on the file at ``path``
        self.file = None
        _fsync_dir(self.path.parent)
        if self.replaced and self.announce:
            log.info("replaced %s", self.path)

    def discard(self) -> None:
        """Remove the part file; nothing of this attempt stays."""
        if self.file is None:
            return
        self.file.discarding = True
        try:
            if _same_file(self.file.fileno(), self.part):
                os.unlink(self.part)
        except OSError:
            pass
        finally:
            self.file.close()
            self.file = None


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_output(path: PathLike, *, announce: bool = True, wait: bool = False) -> AtomicOutput:
    """``with atomic_output(path) as out:`` write ``out.file`` (or the path ``out.part``)."""
    return AtomicOutput(path, announce=announce, wait=wait)


def write_bytes(path: PathLike, data: bytes, *, announce: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_output(path, announce=announce) as out:
        out.file.write(data)
    return Path(path)


def write_text(path: PathLike, text: str, *, announce: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"), announce=announce)


def sha256_file(path: PathLike) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB chunks (weights files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def copy_file(src: PathLike, path: PathLike, *, announce: bool = True) -> Path:
    """Copy the contents of ``src`` to ``path`` atomically; returns ``path``."""
    with atomic_output(path, announce=announce) as out:
        with open(src, "rb") as f:
            shutil.copyfileobj(f, out.file, 1 << 20)
    return Path(path)


# ----------------------------------------------------------------------------- SIGTERM
@contextmanager
def terminate_cleanly() -> Iterator[None]:
    """While active (main thread only), SIGTERM raises :class:`~ssl_rs.errors.Interrupted` in the main thread,
    so writers remove their part files on the way out (as they do for Ctrl-C) instead of leaving
    them behind as a plain kill would."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    global _pending_signal

    def handler(signum, frame):
        global _pending_signal
        _pending_signal = signum  # kept: an exception raised inside a GC callback is swallowed
        raise Interrupted(signum)

    _pending_signal = None
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        yield
        return
    try:
        yield
        raise_pending_signal()  # a swallowed one still ends the command as interrupted
    finally:
        signal.signal(signal.SIGTERM, previous)
        _pending_signal = None


#: the signal :func:`terminate_cleanly` caught, until the command ends
_pending_signal: Optional[int] = None


def raise_pending_signal() -> None:
    """Raise :class:`~ssl_rs.errors.Interrupted` if a SIGTERM arrived whose exception was lost
    (Python ignores exceptions raised while a garbage-collection callback runs)."""
    if _pending_signal is not None:
        raise Interrupted(_pending_signal)
