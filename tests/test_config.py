"""Config loading: composition, dotted overrides, unknown keys with suggestions."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_rs.config import check_args, load_config
from ssl_rs.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "zoo_configs"


def test_composition_and_overrides():
    cfg = load_config(CONFIGS / "ssl4eo" / "mocov2_georank.yaml", ["trainer.max_epochs=2", "geo.alpha=0.3"])
    assert cfg.geo.name == "georank" and cfg.geo.alpha == 0.3 and cfg.trainer.max_epochs == 2
    assert cfg.method.name == "mocov2" and cfg.method.args.queue_size == 4092  # from mocov2.yaml
    assert cfg.augmentation.size == 120 and cfg.backbone.name == "resnet18"  # from _data.yaml
    assert cfg.optimizer.name == "lars" and cfg.eval.knn_k == 20  # from defaults.yaml
    assert len(cfg.data.bands) == 10


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_epoch=2", "unknown config key 'trainer.max_epoch'; did you mean 'trainer.max_epochs'?"),
        ("geo.aplha=0.3", "did you mean 'geo.alpha'?"),
        ("optimiser.lr=1", "unknown config key 'optimiser"),
        ("trainer.max_epochs=two", "trainer.max_epochs"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        load_config(CONFIGS / "synthetic" / "mocov2.yaml", [override])


def test_bad_method_args():
    from ssl_rs.methods.mocov2 import MoCoV2

    with pytest.raises(ConfigError, match="has no argument 'temprature'; did you mean 'temperature'"):
        check_args("method", "mocov2", MoCoV2.__init__, {"temprature": 0.1})
    check_args("method", "mocov2", MoCoV2.__init__, {"temperature": 0.1, "base_tau": 0.9, "tau_schedule": "epoch"})
    with pytest.raises(ConfigError, match=r"method.args.lr: optimiser settings go in .*optimizer.lr"):
        check_args("method", "mocov2", MoCoV2.__init__, {"lr": 0.1})
    with pytest.raises(ConfigError, match="has no argument 'seed'"):  # set by build from trainer.seed
        check_args("method", "mocov2", MoCoV2.__init__, {"seed": 1})


def test_renamed_optimizer_key_is_named():
    with pytest.raises(ConfigError, match="optimizer.scale_lr was renamed optimizer.lr_scaling"):
        load_config(CONFIGS / "synthetic" / "mocov2.yaml", ["optimizer.scale_lr=false"])


def test_missing_file_and_data_path(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="data.path"):
        load_config(None, [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        load_config(bad)


def test_every_zoo_config_loads():
    for path in sorted(CONFIGS.rglob("*.yaml")):
        if path.name.startswith("_") or path.name == "defaults.yaml":
            continue
        cfg = load_config(path)
        assert cfg.method.name
