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
