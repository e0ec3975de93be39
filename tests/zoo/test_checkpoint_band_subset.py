"""A checkpoint evaluated on a file with more bands than it was trained on takes its own bands
by name; stderr says, in one line, which of the file's bands it leaves out."""

from __future__ import annotations

import pytest

from ssl_rs.cli import main
from ssl_rs.data.bands import S2_BANDS


@pytest.fixture(scope="module")
def world13(tmp_path_factory):
    from ssl_rs.data.synth import synthesize

    path = tmp_path_factory.mktemp("world13") / "world13.h5"
    synthesize(path, n=120, size=16, seed=1, num_classes=4, bands=S2_BANDS, progress=False)
    return path


def test_a_12_band_checkpoint_on_13_band_data_names_the_band_it_leaves_out(tiny_run, world13, capsys):
    assert main(["eval", "knn", "--checkpoint", str(tiny_run), "--data", str(world13)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "left out" in line]
    assert lines == [f"ssl-rs: bands: evaluating on 12 of the 13 bands of {world13}, matched by name; "
                     "left out: B10"], err


def test_the_checkpoints_own_bands_leave_nothing_out(tiny_run, tiny_world, capsys):
    assert main(["eval", "knn", "--checkpoint", str(tiny_run), "--data", str(tiny_world)]) == 0
    assert "left out" not in capsys.readouterr().err
