"""The fine-tuning protocol (ssl_rs/evaluation/finetune.py): it learns, it never touches the caller's
backbone, multi-label targets work, layer-wise decay builds timm's groups, bad options are one line,
and it runs through the harness, the CLI and a pretraining config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ssl_rs.backbones import create_backbone
from ssl_rs.data.dataset import GeoDataset
from ssl_rs.errors import ConfigError
from ssl_rs.evaluation.finetune import ClassificationTask, finetune, param_groups, warmup_cosine


def tiny_cnn(in_chans: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone("tiny_cnn", in_chans=in_chans, width=8)


@pytest.fixture(scope="module")
def splits(tiny_world):
    return GeoDataset(tiny_world, split="train"), GeoDataset(tiny_world, split="test")


def test_finetuning_beats_chance_and_leaves_the_caller_alone(splits):
    train, test = splits
    backbone = tiny_cnn().eval()
    backbone.model.features[0].weight.requires_grad_(False)  # the caller froze something: still so afterwards
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    rng = torch.get_rng_state()
    result = finetune(backbone, train, test, epochs=8, lr=1e-2, batch_size=16, progress=False)
    assert set(result) == {"acc_micro", "acc_macro", "train_loss"}  # the linear probe's names
    assert result["acc_micro"] > 50.0  # 4 classes: chance is 25 %
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert not backbone.training and not backbone.model.features[0].weight.requires_grad
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched


def test_deterministic_under_a_seed(splits):
    train, test = splits
    runs = [finetune(tiny_cnn(), train, test, epochs=2, batch_size=32, seed=s, progress=False) for s in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0]["train_loss"] != runs[2]["train_loss"]


def test_multi_label(tmp_path):
    from ssl_rs.data.layout import write_dataset

    rng = np.random.default_rng(0)
    n, classes = 64, 3
    labels = [[c for c in range(classes) if rng.random() < 0.5] for _ in range(n)]
    images = rng.integers(900, 1100, (n, classes, 8, 8)).astype(np.uint16)
    for i, present in enumerate(labels):
        images[i, present] += 600  # class c brightens band c
    path = write_dataset(tmp_path / "ml.h5", images, np.linspace(-10, 10, n), np.linspace(20, 30, n),
                         bands=["B02", "B03", "B04"], size=(8, 8), gsd=10.0, source="test", labels=labels,
                         class_names=["a", "b", "c"], multi_label=True, split=["train"] * 48 + ["test"] * 16)
    train, test = GeoDataset(path, split="train"), GeoDataset(path, split="test")
    result = finetune(tiny_cnn(in_chans=3), train, test, epochs=10, lr=1e-2, batch_size=16, progress=False)
    assert set(result) == {"ap_macro", "ap_micro", "f1_micro", "f1_macro", "train_loss"}
    assert result["ap_macro"] > 75.0 and result["f1_micro"] > 60.0


def test_layer_decay_param_groups_for_a_tiny_vit():
    vit = create_backbone("vit_tiny", in_chans=3, img_size=16, patch_size=8, depth=2)
    head = torch.nn.Linear(vit.num_features, 5)
    groups = param_groups(vit, head, lr=1e-3, backbone_lr_scale=0.5, layer_decay=0.5, weight_decay=0.05)
    owner = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in owner  # in exactly one group
            owner[id(p)] = g
    named = dict(vit.named_parameters())
    assert set(owner) == {id(p) for p in [*named.values(), *head.parameters()]}

    def lr(name):
        return owner[id(named[name])]["lr"]

    def wd(name):
        return owner[id(named[name])]["weight_decay"]

    assert owner[id(head.weight)]["lr"] == pytest.approx(1e-3)
    # stem two layers below the top, block 0 one below, the last block at the backbone's rate
    assert lr("model.patch_embed.proj.weight") == pytest.approx(1e-3 * 0.5 * 0.25)
    assert lr("model.cls_token") == pytest.approx(1e-3 * 0.5 * 0.25)
    assert lr("model.blocks.0.attn.qkv.weight") == pytest.approx(1e-3 * 0.5 * 0.5)
    assert lr("model.blocks.1.mlp.fc1.weight") == pytest.approx(1e-3 * 0.5)
    assert wd("model.blocks.0.attn.qkv.weight") == 0.05
    assert wd("model.blocks.0.attn.qkv.bias") == 0.0 and wd("model.pos_embed") == 0.0  # 1-D and no_weight_decay()
    # without layer decay: one backbone group at the scaled rate
    plain = param_groups(vit, head, lr=1e-3, backbone_lr_scale=0.5)
    assert [(g["name"], g["lr"]) for g in plain] == [("head", 1e-3), ("backbone", 5e-4)]


def test_a_tiny_vit_finetunes_with_layer_decay(splits):
    train, test = splits
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny", in_chans=12, img_size=16, patch_size=8, depth=2)
    result = finetune(vit, train, test, epochs=1, layer_decay=0.75, batch_size=42, progress=False)
    assert np.isfinite(result["train_loss"]) and 0 <= result["acc_micro"] <= 100


def test_training_augmentation_turns_and_flips_images_only():
    task = ClassificationTask(4)
    images = torch.arange(64 * 2 * 4 * 4, dtype=torch.float32).view(64, 2, 4, 4)
    targets = torch.arange(64) % 4
    torch.manual_seed(0)
    out, same = task.augment(images, targets)
    assert same is targets and out.shape == images.shape and not torch.equal(out, images)
    assert torch.equal(out.flatten(1).sort(1).values, images.flatten(1).sort(1).values)  # pixels permuted, not changed


def test_schedule_warms_up_then_decays_to_a_tenth():
    f = warmup_cosine(1000)  # 100 warmup steps
    assert f(0) == pytest.approx(0.1) and f(50) == pytest.approx(0.55) and f(100) == pytest.approx(1.0)
    assert f(1000) == pytest.approx(0.1) and f(550) == pytest.approx(0.55)
    assert warmup_cosine(10, warmup_steps=0)(0) == pytest.approx(1.0)


@pytest.mark.parametrize("option, value, message", [
    ("epochs", 0, "epochs: must be an integer >= 1, got 0"),
    ("lr", -1.0, "lr: must be a learning rate > 0, got -1.0"),
    ("lr", float("nan"), "lr: must be a learning rate > 0"),
    ("backbone_lr_scale", 0, "backbone_lr_scale: must be > 0"),
    ("layer_decay", 1.5, "layer_decay: must be in \\(0, 1\\]"),
    ("weight_decay", -0.1, "weight_decay: must be >= 0"),
    ("warmup_steps", 2.5, "warmup_steps: must be an integer >= 0"),
    ("batch_size", 0, "batch_size: must be an integer >= 1"),
])
def test_bad_options_are_one_line(splits, option, value, message):
    train, test = splits
    with pytest.raises(ConfigError, match=message) as error:
        finetune(tiny_cnn(), train, test, progress=False, **{option: value})
    assert "\n" not in str(error.value)


def test_layer_decay_without_layers_and_a_bad_task(splits):
    train, test = splits
    with pytest.raises(ConfigError, match="layer_decay: backbone 'tiny_cnn' has no layers to decay"):
        finetune(tiny_cnn(), train, test, layer_decay=0.75, progress=False)
    with pytest.raises(ConfigError, match="unknown fine-tuning task 'detection'"):
        finetune(tiny_cnn(), train, test, task="detection", progress=False)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        ClassificationTask(1)


def test_harness_runs_finetune_next_to_frozen_protocols(tiny_world):
    from ssl_rs.evaluation.harness import evaluate

    backbone = tiny_cnn()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    res = evaluate(backbone, tiny_world, protocols=["knn", "finetune"], finetune_epochs=1, batch_size=32,
                   device="cpu", progress=False)
    assert set(res["metrics"]) == {"knn", "finetune"} and res["feature_dim"] == 32
    assert set(res["metrics"]["finetune"]) == {"acc_micro", "acc_macro", "train_loss"}
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    with pytest.raises(ConfigError, match="^finetune_lr: must be"):
        evaluate(backbone, tiny_world, protocols=["finetune"], finetune_lr=0.0, progress=False)
    with pytest.raises(ConfigError, match="^finetune_layer_decay: backbone 'tiny_cnn' has no layers"):
        evaluate(backbone, tiny_world, protocols=["finetune"], finetune_layer_decay=0.5, progress=False)


def test_cli_end_to_end_with_json(tiny_world, tmp_path, capsys):
    from ssl_rs.cli import main

    out = tmp_path / "ft.json"
    rc = main(["eval", "finetune", "--backbone", "tiny_cnn", "--backbone-args", '{"width": 8}', "--data",
               str(tiny_world), "--epochs", "2", "--lr", "0.01", "--backbone-lr-scale", "1", "--batch-size", "32",
               "--device", "cpu", "--json", str(out)])
    assert rc == 0
    assert "| finetune |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == {"finetune"} and result["task"] == "single-label"
    assert set(result["metrics"]["finetune"]) == {"acc_micro", "acc_macro", "train_loss"}


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0"], "--lr: must be a learning rate > 0, got 0.0"),
    (["--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
    (["--backbone-lr-scale", "-1"], "--backbone-lr-scale: must be > 0"),
    (["--layer-decay", "0.75"], "--layer-decay: backbone 'tiny_cnn' has no layers to decay"),
])
def test_cli_bad_options_exit_2_in_one_line(tiny_world, capsys, argv, message):
    from ssl_rs.cli import main

    rc = main(["eval", "finetune", "--backbone", "tiny_cnn", "--data", str(tiny_world), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_pretraining_config_accepts_finetune(tiny_world):
    from ssl_rs.config import load_config as load
    from ssl_rs.config import validate

    def load_config(name, overrides):
        cfg = load(name, overrides)
        validate(cfg)  # what pretrain checks first
        return cfg

    from ssl_rs.evaluation.plan import check_evaluation, eval_protocols

    base = ["data.path=" + str(tiny_world), "eval.schemes=null"]
    cfg = load_config("synthetic/mocov2", [*base, "eval.protocols=[knn,finetune]", "eval.finetune_epochs=3"])
    assert eval_protocols(cfg) == ["knn", "finetune"] and cfg.eval.finetune_epochs == 3
    assert check_evaluation(cfg) is None
    with pytest.raises(ConfigError, match="^eval.finetune_lr: must be a learning rate > 0"):
        load_config("synthetic/mocov2", [*base, "eval.finetune_lr=-1"])
    with pytest.raises(ConfigError, match=r"^eval.finetune_layer_decay: must be in \(0, 1\]"):
        load_config("synthetic/mocov2", [*base, "eval.finetune_layer_decay=2"])
    cfg = load_config("synthetic/mocov2", [*base, "eval.protocols=[finetune]", "eval.finetune_layer_decay=0.75"])
    with pytest.raises(ConfigError, match="^eval.finetune_layer_decay: backbone 'tiny_cnn' has no layers"):
        check_evaluation(cfg)


def test_segmentation_task_by_name_gets_the_preprocess(tmp_path, monkeypatch):
    """``finetune(task="segmentation", preprocess=P)``: the labels follow P's resize and crop, so the
    task is made with P (before, only the harness passed it; by name the labels were only resized)."""
    from ssl_rs.augmentations import Preprocess
    from ssl_rs.data.synth import synthesize
    import ssl_rs.evaluation.segmentation as segmentation

    path = tmp_path / "seg.h5"
    synthesize(path, n=40, size=16, seed=0, num_classes=3, progress=False, masks=True)
    train, test = GeoDataset(path, split="train"), GeoDataset(path, split="test")
    made = []
    real = segmentation.segmentation_task

    def recording(dataset, preprocess=None, decoder="auto"):
        made.append(preprocess)
        return real(dataset, preprocess=preprocess, decoder=decoder)

    monkeypatch.setattr(segmentation, "segmentation_task", recording)
    crop = Preprocess(8, train.band_mean, train.band_std, resize=16)  # resize to 16, centre crop of 8
    out = finetune(tiny_cnn(), train, test, task="segmentation", preprocess=crop, epochs=1, batch_size=16,
                   progress=False, device="cpu")
    assert made == [crop] and 0 <= out["miou"] <= 100
    task = real(train, preprocess=crop)
    masks = torch.arange(16 * 16, dtype=torch.int64).reshape(1, 16, 16) % 3
    assert torch.equal(task._fit(masks, (8, 8)), masks[:, 4:12, 4:12])  # the crop, not a resize of the whole


def test_worker_processes_give_the_same_scores(tmp_path):
    """With DataLoader workers the harness's loaders hand batches over through the shared-memory
    ring (ssl_rs.data.loader); every protocol scores exactly as when it reads in-process."""
    from ssl_rs.data.synth import synthesize
    from ssl_rs.evaluation.harness import evaluate

    path = tmp_path / "seg.h5"
    synthesize(path, n=60, size=16, seed=0, num_classes=3, progress=False, masks=True)
    runs = [evaluate(tiny_cnn(), path, protocols=["knn", "finetune", "segmentation"], num_workers=workers,
                     batch_size=16, finetune_epochs=1, segmentation_epochs=1, device="cpu", progress=False)
            for workers in (0, 1)]
    assert runs[0]["metrics"] == runs[1]["metrics"]


def test_georank_schedule_is_the_authors_scheduler_per_step(splits, monkeypatch):
    """``schedule="georank"``: the learning rate of each step is the authors' (linear.georank_schedule,
    held to their scheduler by test_reference_eval), here for a run of more than 100 steps (100 warmup steps)."""
    from ssl_rs.evaluation.linear import georank_schedule

    train, test = splits
    seen = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append([g["lr"] / g["initial_lr"] for g in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    batch, epochs = 8, 12  # 12 x 84 / 8 = 126 steps by the authors' count: 100 of warmup
    finetune(tiny_cnn(), train, test, epochs=epochs, batch_size=batch, schedule="georank", augment=False,
             progress=False)
    expected = georank_schedule(epochs, len(train), batch)
    assert len(seen) > 101 and all(f == pytest.approx(expected(s), rel=1e-9) for s, fs in enumerate(seen) for f in fs)
    assert seen[0][0] == pytest.approx(0.1) and seen[99][0] == pytest.approx(1.0)  # the peak at step 99, as theirs
    with pytest.raises(ConfigError, match=r"^schedule: must be one of ssl-rs, georank, got 'step'$"):
        finetune(tiny_cnn(), train, test, schedule="step", progress=False)
    with pytest.raises(ConfigError, match=r"^warmup_steps: the georank schedule sets its own warmup"):
        finetune(tiny_cnn(), train, test, schedule="georank", warmup_steps=5, progress=False)
