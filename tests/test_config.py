"""Config loading: composition, dotted overrides, unknown keys with suggestions."""

from __future__ import annotations

import pytest

from ssl_rs.config import (
    check_args,
    config_summary,
    load_config,
    packaged_config_dir,
    packaged_configs,
    resolve_config,
)
from ssl_rs.errors import ConfigError

CONFIGS = packaged_config_dir()


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
        check_args("method", "mocov2", MoCoV2, {"temprature": 0.1})
    check_args("method", "mocov2", MoCoV2, {"temperature": 0.1, "base_tau": 0.9, "tau_schedule": "epoch"})
    with pytest.raises(ConfigError, match=r"method.args.lr: optimiser settings go in .*optimizer.lr"):
        check_args("method", "mocov2", MoCoV2, {"lr": 0.1})
    with pytest.raises(ConfigError, match="has no argument 'seed'"):  # set by build from trainer.seed
        check_args("method", "mocov2", MoCoV2, {"seed": 1})


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


# ----------------------------------------------------------------------------- packaged configs


def test_every_zoo_config_loads_by_name():
    names = packaged_configs()
    assert "synthetic/mocov2" in names and "ssl4eo/mocov2_georank" in names
    assert not any(n == "defaults" or n.rsplit("/", 1)[-1].startswith("_") for n in names)  # layers, not runs
    for name in names:
        cfg = load_config(name)  # the packaged defaults: chains (../defaults.yaml, _data.yaml) resolve too
        assert cfg.method.name and config_summary(resolve_config(name))


def test_a_packaged_name_resolves_from_anywhere_and_a_local_file_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = CONFIGS / "synthetic" / "mocov2.yaml"
    assert resolve_config("synthetic/mocov2") == packaged
    assert resolve_config("synthetic/mocov2.yaml") == packaged
    assert load_config("synthetic/mocov2_georank").geo.name == "georank"
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "mocov2.yaml").write_text("method: {name: simclr}\ndata: {path: x.h5}\n")
    for name in ("synthetic/mocov2", "synthetic/mocov2.yaml"):
        assert resolve_config(name) == tmp_path / "synthetic" / "mocov2.yaml"
        assert load_config(name).method.name == "simclr"


def test_unknown_config_name_is_one_line_with_the_closest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"synthetic/mocov2_georak: config file not found.*"
                                          r"did you mean 'synthetic/mocov2_georank'\?") as info:
        load_config("synthetic/mocov2_georak")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config("../../../configs/synthetic/mocov2")  # a name never leaves the package


def test_a_users_file_composes_packaged_defaults(tmp_path):
    user = tmp_path / "elsewhere" / "mine.yaml"
    user.parent.mkdir()
    user.write_text("defaults: [synthetic/mocov2_georank]\ntrainer: {max_epochs: 3}\n")
    cfg = load_config(user)
    assert (cfg.method.name, cfg.geo.name, cfg.trainer.max_epochs) == ("mocov2", "georank", 3)
    assert cfg.backbone.name == "tiny_cnn" and cfg.eval.knn_k == 20  # the packaged _data.yaml and defaults.yaml
    (tmp_path / "elsewhere" / "synthetic").mkdir()  # a file next to the user's wins over the packaged one
    local = tmp_path / "elsewhere" / "synthetic" / "mocov2_georank.yaml"
    local.write_text("method: {name: byol}\ndata: {path: x.h5}\n")
    assert load_config(user).method.name == "byol"
    user.write_text("defaults: [synthetic/nope]\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: defaults: synthetic/nope: config file not found"):
        load_config(user)


def test_config_summary_is_the_leading_comment_or_the_parts(tmp_path):
    summary = config_summary(CONFIGS / "synthetic" / "mocov2_georank.yaml")
    assert summary == "MoCo v2 + GeoRank on the synthetic geo-world"
    bare = tmp_path / "bare.yaml"
    bare.write_text("defaults: [synthetic/mocov2]\ngeo: {name: tile2vec}\n")
    assert config_summary(bare) == "mocov2 + tile2vec"



def test_ema_arguments_only_for_momentum_methods():
    """A method's accepted arguments are its own and its base classes' (through ``**kwargs``):
    SimCLR has no EMA target, so ``base_tau`` is refused before training, not a TypeError later."""
    from ssl_rs.methods.byol import BYOL
    from ssl_rs.methods.simclr import SimCLR

    check_args("method", "byol", BYOL, {"base_tau": 0.99, "final_tau": 1.0})
    with pytest.raises(ConfigError, match="'simclr' has no argument 'base_tau'"):
        check_args("method", "simclr", SimCLR, {"base_tau": 0.99})


@pytest.mark.parametrize("written, batches", [("1", 1), ("2", 2), ("1.0", 1.0), ("0.25", 0.25), ("3.0", 3)])
def test_limit_train_batches_counts_an_integer_and_takes_a_float_as_a_fraction(written, batches, tmp_path):
    """Lightning's rule: an int is a number of batches, a float in (0, 1] a fraction of the epoch;
    ``trainer.limit_train_batches=1`` must mean one batch, not (as a float) the whole epoch."""
    from ssl_rs.config import validate
    from ssl_rs.trainer import make_trainer

    cfg = load_config(CONFIGS / "synthetic" / "mocov2.yaml", [f"trainer.limit_train_batches={written}",
                                                             "trainer.accelerator=cpu", "trainer.progress_bar=false"])
    validate(cfg)
    limit = make_trainer(cfg, tmp_path, monitor=None).limit_train_batches
    assert limit == batches and type(limit) is type(batches)


@pytest.mark.parametrize("written", ["0", "-1", "1.5", "0.0", "true", "all"])
def test_limit_train_batches_refuses_what_is_neither_a_count_nor_a_fraction(written):
    from ssl_rs.config import validate

    with pytest.raises(ConfigError, match=r"^trainer.limit_train_batches: must be a number of batches \(an integer"):
        validate(load_config(CONFIGS / "synthetic" / "mocov2.yaml", [f"trainer.limit_train_batches={written}"]))
