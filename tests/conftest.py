"""Shared fixtures: a tiny synthetic geo-world and the path to the real samples."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """120 samples, 12 bands, 16 px, 4 classes, default random split (read-only: copy to modify)."""
    from ssl_rs.data.synth import synthesize

    path = tmp_path_factory.mktemp("world") / "world.h5"
    synthesize(path, n=120, size=16, seed=1, num_classes=4, progress=False)
    return path


@pytest.fixture
def world_copy(tiny_world, tmp_path) -> Path:
    """A private copy of the tiny world that a test may modify."""
    import shutil

    dst = tmp_path / "world.h5"
    shutil.copy(tiny_world, dst)
    return dst


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real Sentinel-2 samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(root)`` emulates a read-only directory even as root (where chmod does not stop
    writes): creating, or opening for writing, anything under ``root`` raises PermissionError."""
    import builtins
    import io
    import os

    def apply(root: Path) -> None:
        root_text = str(root)

        def inside(path) -> bool:
            try:
                text = os.path.abspath(os.fspath(path))
            except TypeError:
                return False
            return text == root_text or text.startswith(root_text + os.sep)

        def deny(path):
            raise PermissionError(13, "Permission denied", str(path))

        real_os_open, real_open, real_mkdir = os.open, builtins.open, os.mkdir
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

        def os_open(path, flags, *args, **kwargs):
            if flags & write_flags and inside(path):
                deny(path)
            return real_os_open(path, flags, *args, **kwargs)

        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and not isinstance(file, int) and inside(file):
                deny(file)
            return real_open(file, mode, *args, **kwargs)

        def mkdir(path, *args, **kwargs):
            if inside(path):
                deny(path)
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(os, "mkdir", mkdir)

    return apply
