"""Verified downloads into the weights cache.

The file is streamed to a temporary file inside the cache directory while its sha256 is
computed; only a file whose size and hash match is renamed (atomically) to its final name.
A failed, truncated or interrupted transfer leaves nothing in the cache.

An entry that knows only the first digits of its sha256 (``sha256_prefix``, the 8 hex digits in
torchgeo's file names) is checked the way torch.hub's ``check_hash`` checks it: the file's sha256
must start with them. A registered size is compared with the server's ``Content-Length`` before
the body is read (a changed file costs no download), and with the bytes received after.

Cache hits: the size is checked every time; the full hash is recorded in a ``<file>.sha256``
sidecar written after a verified download and trusted on later hits (re-hashing 100 MB on
every load would cost more than it protects against). For a prefix-only entry the sidecar is
where its full sha256 becomes known. A file without a matching sidecar is hashed once; a cached
file that fails either check is deleted and downloaded again.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Optional, Union

from ..errors import DataError, SslRsError
from ..files import AtomicOutput, atomic_output, sha256_file, write_text
from .weights import SHA256_RE, ZOO, WeightsEntry

CHUNK = 1 << 20
TIMEOUT_S = 60


class UnverifiedWeightsError(SslRsError):
    """The weights have no known sha256 and the user did not accept that."""


def cache_dir() -> Path:
    """``$SSL_RS_HOME/weights`` if set, else ``<torch hub dir>/ssl_rs``."""
    home = os.environ.get("SSL_RS_HOME")
    if home:
        return Path(home).expanduser() / "weights"
    import torch.hub

    return Path(torch.hub.get_dir()) / "ssl_rs"


def cached_path(entry: WeightsEntry, root: Optional[Path] = None) -> Path:
    return (root or cache_dir()) / entry.name / entry.filename


def _expected_hash(entry: WeightsEntry, sha256: Optional[str], allow_unverified: bool) -> Optional[str]:
    """The full sha256 the file must have, or None (then a prefix, or nothing, is checked)."""
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not SHA256_RE.match(sha256):
            raise DataError(f"--sha256: expected 64 hex digits, got {sha256!r}")
        if entry.sha256 is not None and sha256 != entry.sha256:
            raise DataError(f"weights {entry.name!r}: --sha256 {sha256} differs from the registered {entry.sha256}")
        if entry.sha256_prefix is not None and not sha256.startswith(entry.sha256_prefix):
            raise DataError(f"weights {entry.name!r}: --sha256 {sha256} does not start with the registered prefix "
                            f"{entry.sha256_prefix}")
        return sha256
    if entry.sha256 is None and entry.sha256_prefix is None and not allow_unverified:
        raise UnverifiedWeightsError(
            f"weights {entry.name!r} have no verified sha256: pass --sha256 HEX (Python: sha256=...) "
            "from a source you trust, or allow_unverified=True to accept whatever the server sends"
        )
    return entry.sha256


def _write_sidecar(path: Path, digest: str) -> None:
    write_text(path.with_name(path.name + ".sha256"), digest + "\n", announce=False)


def _hash_ok(digest: str, expected: Optional[str], prefix: Optional[str]) -> bool:
    return (expected is None or digest == expected) and (prefix is None or digest.startswith(prefix))


def _check_cached(path: Path, entry: WeightsEntry, expected: Optional[str]) -> bool:
    """True if the cached file can be used; a bad one is removed."""
    if not path.is_file():
        return False
    sidecar = path.with_name(path.name + ".sha256")
    if entry.size is not None and path.stat().st_size != entry.size:
        _remove(path, sidecar)
        return False
    recorded = sidecar.read_text().strip() if sidecar.is_file() else None
    if recorded is not None and _hash_ok(recorded, expected, entry.sha256_prefix):
        return True
    digest = sha256_file(path)
    if not _hash_ok(digest, expected, entry.sha256_prefix):
        _remove(path, sidecar)
        return False
    _write_sidecar(path, digest)
    return True


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def download(
    weights: Union[str, WeightsEntry],
    *,
    sha256: Optional[str] = None,
    allow_unverified: bool = False,
    progress: bool = True,
    root: Optional[Union[str, os.PathLike]] = None,
) -> Path:
    """Return the path of the verified, cached weights file, downloading it if needed.

    ``sha256`` supplies the hash of an entry registered without one (it must agree with a
    registered hash or prefix). An entry with only ``sha256_prefix`` downloads as torch.hub would
    (the file's hash must start with it); the full hash is then recorded next to the file.
    ``allow_unverified=True`` accepts an entry without any hash: it warns loudly and records the
    computed hash next to the file.
    """
    entry = weights if isinstance(weights, WeightsEntry) else ZOO.get(weights)
    expected = _expected_hash(entry, sha256, allow_unverified)
    path = cached_path(entry, Path(root) if root is not None else None)
    if _check_cached(path, entry, expected):
        return path
    # The download goes to .<file>.part beside the cached file (ssl_rs.files): a stale one of a
    # killed download is replaced; another process downloading the same file is waited for.
    output = atomic_output(path, announce=False, wait=True)
    try:
        output.__enter__()
    except DataError as e:
        reason = str(e)[len(f"{path}: "):] if str(e).startswith(f"{path}: ") else str(e)
        raise DataError(f"{path.parent}: cannot write the weights cache ({reason}); set SSL_RS_HOME") from None
    try:
        if _check_cached(path, entry, expected):  # another process cached it while we waited
            output.discard()
            return path
        digest, n_bytes = _stream(entry, _CheckedWriter(output), progress)
        if entry.size is not None and n_bytes != entry.size:
            raise DataError(f"{entry.url}: size: got {n_bytes} bytes, expected {entry.size} (truncated or changed file)")
        if expected is not None and digest != expected:
            raise DataError(f"{entry.url}: sha256: got {digest}, expected {expected}; the file was not cached")
        if entry.sha256_prefix is not None and not digest.startswith(entry.sha256_prefix):
            raise DataError(f"{entry.url}: sha256: got {digest}, expected one starting with {entry.sha256_prefix}; "
                            "the file was not cached")
        output.commit()  # atomic: the cache holds a verified file or nothing
    except BaseException as e:
        output.__exit__(type(e), e, None)  # removes the part file; a full disk becomes one line
        raise
    _write_sidecar(path, digest)
    if expected is None and entry.sha256_prefix is None:
        msg = (f"WARNING: weights {entry.name!r} were downloaded WITHOUT verification (allow_unverified); "
               f"their sha256 is {digest}: compare it with a trusted source before relying on them")
        print(msg, file=sys.stderr)
        warnings.warn(msg, stacklevel=2)
    return path


class _CheckedWriter:
    """Writes to an output's part file and stops the transfer at the first failed write."""

    def __init__(self, output: AtomicOutput):
        self.output = output

    def write(self, chunk: bytes) -> int:
        n = self.output.file.write(chunk)
        self.output.check()
        return n


def _stream(entry: WeightsEntry, out, progress: bool):
    """Copy the URL into ``out``; returns (sha256 hex, bytes). Transfer errors are DataError."""
    from ..progress import Progress

    digest, n_bytes = hashlib.sha256(), 0
    request = urllib.request.Request(entry.url, headers={"User-Agent": "ssl-rs"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            # A changed or wrong file is refused from the header, before its body is read; without
            # a Content-Length the size is checked after the transfer (download()).
            if length and length.isdigit() and entry.size is not None and int(length) != entry.size:
                raise DataError(f"{entry.url}: size: the server announces {length} bytes, expected {entry.size} "
                                "(changed file?); nothing was downloaded")
            total = int(length) if length and length.isdigit() else entry.size
            with Progress(total, entry.name, "B", enabled=progress) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    n_bytes += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DataError(f"{entry.url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DataError(f"{entry.url}: cannot connect ({e.reason})") from None
    except http.client.IncompleteRead as e:
        raise DataError(f"{entry.url}: transfer cut short after {n_bytes + len(e.partial)} bytes") from None
    except (OSError, socket.timeout, http.client.HTTPException) as e:
        raise DataError(f"{entry.url}: transfer failed after {n_bytes} bytes ({type(e).__name__}: {e})") from None
    if length and length.isdigit() and n_bytes != int(length):
        raise DataError(f"{entry.url}: transfer cut short: got {n_bytes} of {length} bytes")
    return digest.hexdigest(), n_bytes
