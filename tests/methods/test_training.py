"""Training end to end on a tiny synthetic world: every method x regularizer, the loss mix,
EMA updates, exact resume, checkpoints evaluated by the harness."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from ssl_rs.config import load_config, packaged_config_dir
from ssl_rs.errors import ConfigError, DataError
from ssl_rs.geo.base import GeoRegularizer
from ssl_rs.registry import METHODS, REGULARIZERS
from ssl_rs.checkpoint import load_encoder
from ssl_rs.train import build, pretrain
from ssl_rs.trainer import make_trainer

CONFIGS = packaged_config_dir() / "synthetic"


TINY = {
    "mocov2": ["method.args.queue_size=64"],
    "dino": [],
}


def config(world, tmp_path, method="mocov2", regularizer=None, *extra):
    overrides = [
        f"data.path={world}", f"output.dir={tmp_path}/runs", "data.batch_size=32", "data.num_workers=0",
        "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0",
        "eval.schemes=null", *TINY.get(method, []),
    ]
    if regularizer:
        overrides += [f"geo.name={regularizer}"]
        if regularizer == "ayush":
            overrides += ["geo.args.num_clusters=8"]
        if regularizer == "tile2vec":
            overrides += ["data.sampler=geo_neighbors"]
    cfg = load_config(CONFIGS / f"{method}.yaml", overrides + list(extra))
    if cfg.backbone.name == "tiny_cnn":
        cfg.backbone.args.width = 8  # tiny and fast; other backbones are sized by their configs
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("regularizer", [None, *REGULARIZERS.names()])
@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_x_regularizer_trains_one_epoch(tiny_world, tmp_path, method, regularizer):
    cfg = config(tiny_world, tmp_path, method, regularizer)
    result = pretrain(cfg, evaluate_after=False)
    assert result["epochs"] == 1 and result["steps"] >= 2
    ckpt = Path(result["run_dir"]) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()


class ConstantRegularizer(GeoRegularizer):
    needs = frozenset({"lat", "lon"})

    def forward(self, z, batch):
        return z.sum() * 0 + 3.0


def test_loss_mixes_ssl_and_geo_with_alpha(tiny_world, tmp_path):
    cfg = config(tiny_world, tmp_path, "simclr", None, "trainer.max_epochs=1")
    built = build(cfg)
    method = built.method
    method.regularizer, method.alpha = ConstantRegularizer(), 0.3
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, enable_model_summary=False)
    trainer.fit(method, built.train_loader)
    m = trainer.callback_metrics
    assert m["train/loss_geo"] == pytest.approx(3.0)
    assert m["train/loss"] == pytest.approx(0.7 * float(m["train/loss_ssl"]) + 0.3 * 3.0, rel=1e-5)


def test_regularizer_needs_are_checked_before_training(tiny_world, tmp_path, monkeypatch, capsys):
    from ssl_rs.cli import main

    # a registered regularizer made to read `group`, which the tiny world (one date per place) lacks;
    # through the CLI's pretrain: one line, exit 2, and no run directory (config, checkpoint) written
    monkeypatch.setattr(REGULARIZERS.get("geobasic").factory, "needs", frozenset({"lat", "lon", "group"}))
    fits = []
    real_fit = L.Trainer.fit
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    runs = tmp_path / "runs"
    code = main(["pretrain", "-c", str(CONFIGS / "mocov2.yaml"), f"data.path={tiny_world}", f"output.dir={runs}",
                 "geo.name=geobasic", "data.batch_size=32", "data.num_workers=0", "trainer.max_epochs=1",
                 "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0", "eval.schemes=null",
                 "backbone.args.width=8", "method.args.queue_size=64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert fits == [], "the regularizer's needs were checked only once training had started"
    assert not runs.exists(), sorted(str(p.relative_to(tmp_path)) for p in runs.rglob("*"))
    assert len(err) == 1 and err[0].startswith("ssl-rs: error: ") and "needs group" in err[0], err
    assert str(tiny_world) in err[0]


def test_ema_update_after_each_step(tiny_world, tmp_path):
    cfg = config(tiny_world, tmp_path, "byol", None, "method.args.base_tau=0.9")
    built = build(cfg)
    method = built.method
    seen = {}

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 0:  # runs before the module's own hook: online updated, target not yet
                seen["online"] = [p.detach().clone() for p in pl_module.projector.parameters()]
                seen["target"] = [p.detach().clone() for p in pl_module.momentum_projector.parameters()]
                seen["tau"] = pl_module.tau_at(trainer.global_step - 1)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                seen["after"] = [p.detach().clone() for p in pl_module.momentum_projector.parameters()]

    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, callbacks=[Probe()], enable_model_summary=False)
    trainer.fit(method, built.train_loader)
    tau = seen["tau"]
    assert tau == pytest.approx(0.9)  # the first update uses base_tau, as BYOL and solo-learn do
    for online, target, after in zip(seen["online"], seen["target"], seen["after"]):
        assert torch.allclose(after, tau * target + (1 - tau) * online, atol=1e-6)


class StopAfter(L.Callback):
    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


@pytest.mark.parametrize("method", ["mocov2", "dino"])
def test_resume_matches_uninterrupted_run(tiny_world, tmp_path, method):
    def run(name, stop=None, resume=None):
        cfg = config(tiny_world, tmp_path, method, None, "trainer.max_epochs=4", f"output.name={name}")
        L.seed_everything(0, verbose=False)
        built = build(cfg)
        run_dir = tmp_path / "runs" / name
        trainer = make_trainer(cfg, run_dir, None)
        if stop:
            trainer.callbacks.append(StopAfter(stop))
        trainer.fit(built.method, built.train_loader, ckpt_path=resume)
        return built.method, run_dir / "checkpoints" / "last.ckpt", trainer

    full, _, t_full = run("full")
    _, last, t_half = run("half", stop=2)
    assert t_half.current_epoch == 2
    resumed, _, t_res = run("resumed", resume=str(last))
    assert t_res.global_step == t_full.global_step
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_pretrain_writes_results_and_checkpoint_evaluates(tiny_world, tmp_path):
    cfg = config(tiny_world, tmp_path, "mocov2", "georank", "trainer.max_epochs=2", "trainer.knn_every_n_epochs=1")
    result = pretrain(cfg)
    run_dir = Path(result["run_dir"])
    saved = json.loads((run_dir / "results.json").read_text())
    knn = saved["eval"]["random"]["metrics"]["knn"]
    assert set(knn) >= {"acc_macro", "acc_micro"}
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "config.yaml").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    backbone, cfg_saved = load_encoder(run_dir / "checkpoints" / "last.ckpt")
    assert cfg_saved["geo"]["name"] == "georank" and len(cfg_saved["data_bands"]) == 12
    from ssl_rs.evaluation.harness import evaluate

    again = evaluate(backbone, tiny_world, progress=False)["metrics"]["knn"]
    assert again == pytest.approx(knn)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    from ssl_rs.errors import ConfigError

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"ssl_rs_config": {}, "payload": Evil()}, path)
    with pytest.raises(ConfigError, match="not a loadable ssl-rs checkpoint"):
        load_encoder(path)


def test_temporal_positives_with_ayush(tmp_path):
    from ssl_rs.data.synth import synthesize

    world = synthesize(tmp_path / "dates.h5", n=96, size=16, dates=3, seed=2, progress=False)
    cfg = config(world, tmp_path, "mocov2", "ayush", "data.temporal_positives=true")
    built = build(cfg)
    batch = next(iter(built.train_loader))
    assert "image_positive" in batch and not torch.equal(batch["image"], batch["image_positive"])
    result = pretrain(cfg, evaluate_after=False)
    assert result["steps"] >= 2


def test_existing_run_is_not_overwritten_silently(tiny_world, tmp_path):
    from ssl_rs.errors import ConfigError

    cfg = config(tiny_world, tmp_path, "simclr", None)
    pretrain(cfg, evaluate_after=False)
    with pytest.raises(ConfigError, match="a run already exists there; continue it with --resume"):
        pretrain(cfg, evaluate_after=False)
    cfg.output.overwrite = True
    assert pretrain(cfg, evaluate_after=False)["epochs"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["satmae", "scalemae", "neighbormae", "csp"])
def test_checkpoint_of_non_contrastive_methods_evaluates_the_same(tiny_world, tmp_path, method):
    from ssl_rs.evaluation.harness import evaluate

    cfg = config(tiny_world, tmp_path, method, None)
    result = pretrain(cfg)
    in_run = result["eval"]["random"]["metrics"]["knn"]
    backbone, saved = load_encoder(Path(result["run_dir"]) / "checkpoints" / "last.ckpt")
    again = evaluate(backbone, tiny_world, bands=saved["data_bands"], size=saved["augmentation"]["size"],
                     progress=False)["metrics"]["knn"]
    assert again == pytest.approx(in_run)


def _unlabelled(world, tmp_path):
    import shutil

    import h5py

    path = tmp_path / "unlabelled.h5"
    shutil.copy(world, path)
    with h5py.File(path, "r+") as f:
        del f["label"]
        del f.attrs["class_names"]
    return path


def test_unlabelled_pretraining_data_skips_the_final_evaluation_or_uses_eval_data(tiny_world, tmp_path):
    from ssl_rs.errors import ConfigError

    unlabelled = _unlabelled(tiny_world, tmp_path)
    cfg = config(unlabelled, tmp_path, "simclr", None)
    result = pretrain(cfg)
    assert result["eval"] == {} and "has no labels" in result["eval_skipped"]
    saved = json.loads((Path(result["run_dir"]) / "results.json").read_text())
    assert saved["eval_skipped"] == result["eval_skipped"]
    # a labelled file for the final evaluation (its own default split scheme)
    cfg = config(unlabelled, tmp_path, "simclr", None, f"eval.data={tiny_world}", "output.name=evaldata")
    result = pretrain(cfg)
    assert "eval_skipped" not in result and result["eval"]["random"]["n_test"] > 0
    # mistakes surface before training, not after it
    for override, error in ((f"eval.data={tmp_path}/missing.h5", "eval.data: .*missing.h5 not found"),
                            ("eval.schemes=[spatial-block]", "splits/spatial-block: split scheme not found")):
        cfg = config(tiny_world, tmp_path, "simclr", None, override, "output.name=early")
        with pytest.raises((ConfigError, DataError), match=error):
            pretrain(cfg)
        assert not (tmp_path / "runs" / "early").exists()


class _Payload:
    """Pickles to a call that writes a marker file: what a forged checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("content", ["pickle", "random", "empty", "other_method"])
def test_resume_refuses_bad_checkpoints_before_writing_anything(tiny_world, tmp_path, monkeypatch, content):
    """Tensors only even under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (the pickled payload never runs),
    one line naming the file, and no config.yaml or tb/ left behind."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    bad = tmp_path / "bad.ckpt"
    marker = tmp_path / "payload_ran"
    if content == "pickle":
        torch.save({"state_dict": {}, "x": _Payload(marker)}, bad)
    elif content == "random":
        bad.write_bytes(bytes(range(256)) * 4)
    elif content == "empty":
        bad.write_bytes(b"")
    else:
        torch.save({"state_dict": {}, "ssl_rs_config": {"method": {"name": "byol"}}}, bad)
    cfg = config(tiny_world, tmp_path, "mocov2", None, "output.name=resumed")
    with pytest.raises(ConfigError, match=r"--resume: .*bad\.ckpt") as err:
        pretrain(cfg, resume=str(bad), evaluate_after=False)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    assert not (tmp_path / "runs" / "resumed").exists()


def test_resume_refuses_a_checkpoint_of_other_shapes_before_writing_anything(tiny_world, tmp_path):
    """Same method, other settings (projection width): one line naming the weight, nothing written."""
    first = pretrain(config(tiny_world, tmp_path, "mocov2", None, "output.name=small",
                            "method.args.proj_output_dim=16"), evaluate_after=False)
    last = Path(first["run_dir"]) / "checkpoints" / "last.ckpt"
    cfg = config(tiny_world, tmp_path, "mocov2", None, "output.name=other", "method.args.proj_output_dim=32")
    with pytest.raises(ConfigError, match=r"--resume: .*last\.ckpt: state_dict: .* has shape") as err:
        pretrain(cfg, resume=str(last), evaluate_after=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs" / "other").exists()
