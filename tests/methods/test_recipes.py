"""Each method's optimisation recipe reaches a run started from its zoo config through the CLI
(the bug: DINO's and SimSiam's recipes were overwritten by the config schema's SGD defaults)."""

from __future__ import annotations

import pytest
import torch
import yaml

from ssl_rs.cli import main
from ssl_rs.config import packaged_config_dir
from ssl_rs.errors import ConfigError
from ssl_rs.methods import BaseMethod, OptimRecipe
from ssl_rs.methods.base import clip_each_parameter
from ssl_rs.registry import METHODS


BATCH = 32

# What each zoo config's run must get: optimiser class, peak lr (per global batch of 32),
# weight decay at the first step, extra settings. Written out by hand from the papers (see
# docs/methods.md), so a recipe that silently changes fails here.
EXPECTED = {
    "mocov2": ("SGD", 0.03 * BATCH / 256, 1e-4, {"momentum": 0.9}),
    "simclr": ("LARS", 0.3 * BATCH / 256, 1e-6, {"momentum": 0.9}),
    "byol": ("LARS", 0.2 * BATCH / 256, 1.5e-6, {"momentum": 0.9}),
    "simsiam": ("SGD", 0.05 * BATCH / 256, 1e-4, {"momentum": 0.9}),
    "dino": ("AdamW", 5e-4 * BATCH / 256, 0.04, {"weight_decay_end": 0.4, "grad_clip": 3.0,
                                                 "grad_clip_mode": "per_parameter", "min_lr": 1e-6}),
    "mae": ("AdamW", 1.5e-4 * BATCH / 256, 0.05, {"betas": (0.9, 0.95)}),
    "satmae": ("AdamW", 1e-4 * BATCH / 256, 0.05, {"betas": (0.9, 0.95)}),
    "scalemae": ("AdamW", 1.5e-4 * BATCH / 256, 0.05, {"betas": (0.9, 0.95)}),
    "crossscalemae": ("AdamW", 1.5e-4 * BATCH / 256, 0.05, {"betas": (0.9, 0.95)}),
    "neighbormae": ("AdamW", 1.5e-4 * BATCH / 256, 0.05, {"betas": (0.9, 0.95)}),
    # the synthetic config overrides CSP's recipe (Adam 5e-4, no decay, unscaled) with AdamW 1e-3, wd 1e-4
    "csp": ("AdamW", 1e-3, 1e-4, {"schedule": "constant"}),
}


@pytest.fixture
def recorded(monkeypatch):
    """The optimiser, its parameter groups when training starts and ends, and the recipe of every
    run started in the test."""
    runs = []
    start, end = BaseMethod.on_train_start, BaseMethod.on_train_end

    def groups(self):
        return [{k: v for k, v in g.items() if k != "params"} for g in self.trainer.optimizers[0].param_groups]

    def on_train_start(self):
        runs.append({"class": type(self.trainer.optimizers[0]).__name__, "recipe": self.optim,
                     "groups": groups(self)})
        start(self)

    def on_train_end(self):
        runs[-1]["groups_end"] = groups(self)
        end(self)

    monkeypatch.setattr(BaseMethod, "on_train_start", on_train_start)
    monkeypatch.setattr(BaseMethod, "on_train_end", on_train_end)
    return runs


def test_every_registered_method_has_an_expectation():
    assert sorted(EXPECTED) == sorted(METHODS.names())


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_zoo_config_recipe_reaches_the_optimizer(method, tiny_world, tmp_path, recorded):
    extra = ["method.args.queue_size=64"] if method == "mocov2" else []
    if method == "neighbormae":
        extra += ["data.neighbor_pairs=true"]
    code = main(["pretrain", "-c", str(packaged_config_dir() / "synthetic" / f"{method}.yaml"),
                 f"data.path={tiny_world}", f"output.dir={tmp_path}", f"data.batch_size={BATCH}",
                 "data.num_workers=0", "trainer.max_epochs=1",
                 "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0", "eval.schemes=null",
                 *extra, *(["backbone.args.width=8"] if method in ("mocov2", "simclr", "byol", "simsiam", "dino", "csp")
                           else [])])
    assert code == 0
    (run,) = recorded
    opt_class, lr, wd, extras = EXPECTED[method]
    assert run["class"] == opt_class
    decay = next(g for g in run["groups"] if g["name"] == "decay")
    assert decay["initial_lr"] == pytest.approx(lr, rel=1e-9)
    assert decay["weight_decay"] == pytest.approx(wd, rel=1e-9)
    for key, value in extras.items():
        got = getattr(run["recipe"], key)
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key
        if key in ("momentum", "betas"):
            assert decay[key] == (pytest.approx(value) if isinstance(value, float) else value)
    if method == "simsiam":  # the predictor keeps its lr (--fix-pred-lr), the rest follows the cosine
        names = [g["name"] for g in run["groups_end"]]
        assert names == ["decay", "decay_fixed_lr"]  # every parameter decays (exclude_from_decay: none)
        fixed, scheduled = run["groups_end"][1], run["groups_end"][0]
        assert fixed["lr"] == fixed["initial_lr"] and scheduled["lr"] < scheduled["initial_lr"]
    # what the run used is in its config.yaml
    (config_file,) = tmp_path.glob("*/config.yaml")
    written = yaml.safe_load(config_file.read_text())["optimizer"]
    assert written["name"] == run["recipe"].name and written["lr"] == pytest.approx(run["recipe"].lr)
    assert written["weight_decay"] == pytest.approx(wd)


def test_dino_run_shows_adamw_and_weight_decay_schedule_in_tensorboard(tiny_world, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code = main(["pretrain", "-c", str(packaged_config_dir() / "synthetic" / "dino.yaml"),
                 f"data.path={tiny_world}", f"output.dir={tmp_path}", f"data.batch_size={BATCH}",
                 "data.num_workers=0", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
                 "backbone.args.width=8", "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0",
                 "eval.schemes=null"])
    assert code == 0
    (tb,) = tmp_path.glob("*/tb")
    events = EventAccumulator(str(tb)).Reload()
    tags = events.Tags()["scalars"]
    assert "lr-AdamW/decay" in tags, tags
    wd = [e.value for e in events.Scalars("train/weight_decay")]
    assert wd[0] == pytest.approx(0.04, rel=1e-3) and wd[-1] > wd[0]  # cosine 0.04 -> 0.4


def test_config_overrides_only_the_keys_it_sets():
    recipe = OptimRecipe(name="adamw", lr=5e-4, weight_decay=0.04, weight_decay_end=0.4, grad_clip=3.0)
    out = recipe.override({"lr": 1e-3, "name": None, "grad_clip": 0})
    assert out.lr == 1e-3 and out.name == "adamw" and out.weight_decay_end == 0.4 and out.grad_clip is None
    with pytest.raises(ConfigError, match="optimizer.name: must be one of"):
        recipe.override({"name": "adam"})
    with pytest.raises(ConfigError, match="optimizer.lr_scaling"):
        recipe.override({"lr_scaling": "quadratic"})
    assert OptimRecipe(lr=0.4, lr_scaling="none").scaled_lr(512) == 0.4
    assert OptimRecipe(lr=0.3, lr_scaling="sqrt").scaled_lr(1024) == pytest.approx(0.6)


def test_per_parameter_clipping_is_dino_clip_gradients():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4])
    clip_each_parameter([a, b], 1.0)
    assert a.grad.norm() == pytest.approx(1.0, rel=1e-5)  # 5 -> 1
    assert torch.equal(b.grad, torch.tensor([0.3, 0.4]))  # 0.5 < 1: untouched


def test_paper_setting_config_trains_moco_as_the_georank_authors(tiny_world, tmp_path, recorded):
    """LARS at a constant lr 0.4 (unscaled), weight decay on every parameter, one direction."""
    code = main(["pretrain", "-c", str(packaged_config_dir() / "ssl4eo" / "mocov2.yaml"),
                 f"data.path={tiny_world}", f"output.dir={tmp_path}", "data.batch_size=32", "data.bands=null",
                 "data.num_workers=0", "augmentation.size=16", "backbone.name=tiny_cnn", "backbone.args.width=8",
                 "method.args.queue_size=64", "trainer.max_epochs=1",
                 "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0", "eval.schemes=null"])
    assert code == 0
    (run,) = recorded
    assert run["class"] == "LARS" and [g["name"] for g in run["groups"]] == ["decay"]
    assert run["groups"][0]["initial_lr"] == 0.4 and run["groups"][0]["weight_decay"] == 1e-6
    assert run["groups_end"][0]["lr"] == 0.4  # constant: no cosine decay after the steps
    assert run["recipe"].schedule == "constant" and run["recipe"].exclude_from_decay == "none"
