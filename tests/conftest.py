"""Shared fixtures: a tiny synthetic geo-world and the path to the real samples."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

#: ``cpu``: the ``cuda``-marked tests that take the ``device_under_test`` fixture run on the CPU
#: instead of being skipped, so that their logic can be checked on a machine without a GPU
TEST_DEVICE_VARIABLE = "SSL_RS_TEST_DEVICE"
#: the skip reason of a ``cuda`` test that cannot run here (benchmarks/gpu_check.py counts such a
#: skip on a CUDA machine as a failure)
NEEDS_CUDA = "needs CUDA"


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", f"cuda: runs on a CUDA GPU, skipped ({NEEDS_CUDA!r}) without one; with {TEST_DEVICE_VARIABLE}=cpu "
        "those taking the device_under_test fixture run on the CPU (benchmarks/gpu_check.py runs them: -m cuda)")


def chosen_test_device() -> str:
    """``cuda`` unless :data:`TEST_DEVICE_VARIABLE` says ``cpu``; another value is a usage error."""
    import os

    wanted = os.environ.get(TEST_DEVICE_VARIABLE, "").strip().lower() or "cuda"
    if wanted not in ("cuda", "cpu"):
        raise pytest.UsageError(f"{TEST_DEVICE_VARIABLE}: must be cpu or cuda, "
                                f"got {os.environ[TEST_DEVICE_VARIABLE]!r}")
    return wanted


def pytest_collection_modifyitems(config, items) -> None:
    """Skip the ``cuda``-marked tests that cannot run here: without CUDA all of them, except, with
    ``SSL_RS_TEST_DEVICE=cpu``, those that take ``device_under_test`` (the others call ``.cuda()``)."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked:
        return
    on_cpu = chosen_test_device() == "cpu"
    import torch

    if torch.cuda.is_available():
        return
    reason = NEEDS_CUDA
    if on_cpu:
        reason += f" (it does not take device_under_test, which {TEST_DEVICE_VARIABLE}=cpu sets to the CPU)"
    for item in marked:
        if not (on_cpu and "device_under_test" in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def device_under_test():
    """The device of the ``cuda``-marked tests: ``cuda``, or ``cpu`` with ``SSL_RS_TEST_DEVICE=cpu``."""
    import torch

    return torch.device(chosen_test_device())


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
