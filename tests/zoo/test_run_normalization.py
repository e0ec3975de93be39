"""A training run records its input normalisation in its checkpoints, and the zoo uses it:
``load_backbone(ckpt, data=...)`` maps another file's standardisation to the run's, and
``zoo export`` takes it from the checkpoint even when the training file is gone or changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from ssl_rs.checkpoint import RunMetadata
from ssl_rs.data.dataset import GeoDataset
from ssl_rs.errors import ConfigError
from ssl_rs.zoo import export_run, load_backbone

NORMALIZATION_KEY = "ssl_rs_normalization"  # the checkpoint format's key (ssl_rs.checkpoint)


def _ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _restandardised(world: Path, path: Path) -> Path:
    """A copy of ``world`` whose band statistics differ (the harness standardises with them)."""
    shutil.copy(world, path)
    with h5py.File(path, "r+") as f:
        f.attrs["band_mean"] = np.asarray(f.attrs["band_mean"]) * 0.5 + 100.0
        f.attrs["band_std"] = np.asarray(f.attrs["band_std"]) * 2.0
    return path


def _copy_run(run: Path, to: Path, data_path) -> Path:
    shutil.copytree(run, to)
    cfg = yaml.safe_load((to / "config.yaml").read_text())
    cfg["data"]["path"] = str(data_path)
    (to / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return to


def test_training_checkpoints_record_the_training_datas_standardisation(tiny_run, tiny_world):
    ckpt = _ckpt(tiny_run)
    data = GeoDataset(tiny_world, bands=ckpt["ssl_rs_bands"])
    assert ckpt[NORMALIZATION_KEY] == {"type": "standardize", "mean": pytest.approx(data.band_mean),
                                       "std": pytest.approx(data.band_std)}


def test_run_metadata_checks_its_statistics():
    ckpt = {}
    RunMetadata({"a": 1}, ["B02", "B03"], [1.0, 2.0], [3.0, 4.0]).on_save_checkpoint(None, None, ckpt)
    assert ckpt[NORMALIZATION_KEY] == {"type": "standardize", "mean": [1.0, 2.0], "std": [3.0, 4.0]}
    legacy = {}
    RunMetadata({"a": 1}, ["B02"]).on_save_checkpoint(None, None, legacy)
    assert NORMALIZATION_KEY not in legacy and legacy["ssl_rs_bands"] == ["B02"]
    with pytest.raises(ConfigError, match="2 bands but 1 means"):
        RunMetadata({}, ["B02", "B03"], [1.0], [1.0])


def test_load_backbone_of_a_checkpoint_with_data_maps_to_the_runs_normalisation(tiny_run, tiny_world, tmp_path):
    ckpt_file = tiny_run / "checkpoints" / "last.ckpt"
    other = _restandardised(tiny_world, tmp_path / "other.h5")
    plain = load_backbone(str(ckpt_file))
    matched = load_backbone(str(ckpt_file), data=other)  # failed: "do not record their input normalisation"
    assert matched.normalization["type"] == "standardize"
    train, new = GeoDataset(tiny_world), GeoDataset(other)
    stats = [torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
             for v in (train.band_mean, train.band_std, new.band_mean, new.band_std)]
    raw = torch.rand(3, 12, 16, 16) * 3000
    with torch.no_grad():  # the harness feeds (raw - new stats); the run trained on (raw - its stats)
        torch.testing.assert_close(matched((raw - stats[2]) / stats[3]), plain((raw - stats[0]) / stats[1]),
                                   rtol=1e-4, atol=1e-4)


def test_a_checkpoint_without_the_record_keeps_the_old_message(tiny_run, tiny_world, tmp_path):
    ckpt = _ckpt(tiny_run)
    del ckpt[NORMALIZATION_KEY]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    assert load_backbone(str(old)).normalization is None  # loads; only data= needs the record
    with pytest.raises(ConfigError, match="do not record their input normalisation"):
        load_backbone(str(old), data=tiny_world)


def test_export_takes_the_normalisation_from_the_checkpoint(tiny_run, tiny_world, tmp_path):
    recorded = _ckpt(tiny_run)[NORMALIZATION_KEY]
    gone = _copy_run(tiny_run, tmp_path / "gone", tmp_path / "moved_away.h5")
    entry = export_run(gone, tmp_path / "out_gone")["entry"]
    assert dict(entry.normalization) == recorded  # was {"type": "unknown"} with the file gone

    changed = _copy_run(tiny_run, tmp_path / "changed", _restandardised(tiny_world, tmp_path / "rewritten.h5"))
    out = export_run(changed, tmp_path / "out_changed")
    assert dict(out["entry"].normalization) == recorded  # not the rewritten file's statistics
    assert load_backbone(str(out["weights"])).normalization == recorded
