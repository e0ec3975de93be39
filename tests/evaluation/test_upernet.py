"""The GeoRank authors' SSL segmentation evaluation in ssl-rs: the ``upernet`` decoder held to their
``UperNetHead`` + ``UperNetFCNHead`` (fixtures/upernet_reference.pt, made by
fixtures/make_upernet_reference.py from their code), the ``georank`` recipe held to their
optimiser and loss, the probe with both, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_rs.augmentations import Preprocess
from ssl_rs.backbones import create_backbone
from ssl_rs.cli import main
from ssl_rs.errors import ConfigError
from ssl_rs.evaluation import segmentation, upernet
from ssl_rs.evaluation.segmentation import (
    NO_IGNORE,
    build_decoder,
    decoder_optimizer,
    recipe_settings,
    segmentation_loss,
    segmentation_probe,
)
from ssl_rs.evaluation.upernet import FCN_WIDTH, FUSED, HIDDEN, POOL_SCALES, UPerNetDecoder
from test_segmentation import NODATA, VIT, majority_miou, write_masked  # the probe's tests (same folder)

REFERENCE = torch.load(Path(__file__).with_name("fixtures") / "upernet_reference.pt", weights_only=True)


def reference_decoder() -> UPerNetDecoder:
    """ssl-rs's decoder at the fixture's widths, holding the authors' weights."""
    channels = [int(m.shape[1]) for m in REFERENCE["maps"]]
    decoder = UPerNetDecoder(channels, REFERENCE["num_classes"], **REFERENCE["widths"]).double()
    decoder.load_state_dict(REFERENCE["state"], strict=True)
    return decoder


@pytest.fixture
def small_width(monkeypatch):
    """The authors' pyramid is 1024 wide (111M parameters on a ResNet-18): the probe tests run it 16 wide."""
    monkeypatch.setattr(upernet, "HIDDEN", 16)


@pytest.fixture(scope="module")
def masked_world(tmp_path_factory):
    return write_masked(tmp_path_factory.mktemp("upernet") / "masked.h5")


# ---------------------------------------------------------------- the decoder is theirs
def test_decoder_matches_theirs_in_eval_and_train_mode():
    decoder = reference_decoder()
    maps, size = REFERENCE["maps"], tuple(REFERENCE["size"].tolist())
    with torch.no_grad():
        decoder.eval()
        assert torch.allclose(decoder(maps, size), REFERENCE["eval_logits"], rtol=0, atol=1e-6)
        decoder.train()
        assert torch.allclose(decoder(maps, size), REFERENCE["train_logits"], rtol=0, atol=1e-6)
    after = decoder.state_dict()
    for name, value in REFERENCE["train_buffers"].items():  # batch statistics folded in as theirs
        assert torch.allclose(after[name].double(), value.double(), rtol=0, atol=1e-6), name


def test_decoder_reads_the_last_four_maps():
    """ssl-rs's ResNets also give the stem's map (stride 2): the decoder leaves it out, as the authors
    read layers 1-4."""
    decoder = reference_decoder().eval()
    maps, size = REFERENCE["maps"], tuple(REFERENCE["size"].tolist())
    stem = torch.randn(2, 7, 14, 14, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(decoder([stem, *maps], size), decoder(maps, size))


def test_widths_and_structure_are_their_defaults():
    head, fcn = REFERENCE["defaults"]["UperNetHead"], REFERENCE["defaults"]["UperNetFCNHead"]
    used = REFERENCE["defaults"]["UPerSegmentationModel"]
    assert POOL_SCALES == tuple(head["pool_scales"]) and HIDDEN == head["hidden_size"]
    assert FUSED == head["num_labels"] == fcn["aux_in_channels"] and FCN_WIDTH == fcn["aux_channels"]
    assert (fcn["aux_num_convs"], fcn["aux_concat_input"], fcn["kernel_size"], fcn["dilation"]) == (1, True, 3, 1)
    assert used["in_index"] == 0  # their FCN head reads the fused map, not a backbone level
    # their fixed input channels are ResNet-18's layers 1-4, the last four of ssl-rs's resnet18 maps
    backbone = create_backbone("resnet18", in_chans=4).eval()
    with torch.no_grad():
        maps = backbone.feature_maps(torch.zeros(1, 4, 32, 32))
    decoder = build_decoder("upernet", maps, 5)
    assert isinstance(decoder, UPerNetDecoder)
    assert tuple(m[0].in_channels for m in decoder.lateral) + (decoder.pyramid[0][1][0].in_channels,) == \
        used["in_channels"]
    assert [m[1][0].out_channels for m in decoder.pyramid] == [HIDDEN] * 4 and decoder.classifier.out_channels == 5
    assert not any(isinstance(m, nn.Dropout) for m in decoder.modules())


def test_the_fcn_head_is_the_output_not_an_auxiliary():
    """Their FCN head is the decoder's last stage: the one output, and so the one loss (weight 1,
    no auxiliary term)."""
    decoder = reference_decoder().eval()
    maps, size = REFERENCE["maps"], tuple(REFERENCE["size"].tolist())
    with torch.no_grad():
        out = decoder(maps, size)
        assert isinstance(out, torch.Tensor) and out.shape == (2, REFERENCE["num_classes"], *size)
        decoder.classifier.weight.zero_()
        decoder.classifier.bias.fill_(0.25)
        assert torch.equal(decoder(maps, size), torch.full_like(out, 0.25))


def test_loss_is_their_criterion():
    criterion = REFERENCE["criterion"]
    assert criterion == {"name": "CrossEntropyLoss", "ignore_index": NO_IGNORE, "reduction": "mean",
                         "label_smoothing": 0.0}
    loss = segmentation_loss(REFERENCE["train_logits"], REFERENCE["targets"], None)
    assert loss.item() == pytest.approx(REFERENCE["loss"].item(), rel=1e-12)


# ---------------------------------------------------------------- the recipe is theirs
def test_georank_recipe_builds_their_optimizer():
    theirs = REFERENCE["optimizer"]
    decoder = reference_decoder()
    optimizer, schedule = decoder_optimizer(decoder.parameters(), recipe_settings("georank"), total_steps=100)
    assert type(optimizer).__name__ == theirs["name"] == "SGD"
    group = optimizer.param_groups[0]
    assert {k: group[k] for k in ("lr", "momentum", "weight_decay", "dampening", "nesterov")} == \
        {k: theirs[k] for k in ("lr", "momentum", "weight_decay", "dampening", "nesterov")}
    assert schedule is None  # a constant rate: their configure_optimizers returns no scheduler
    assert len(group["params"]) == len(list(decoder.parameters()))  # BatchNorm's too, all decayed
    assert recipe_settings("georank")["batch_size"] == 512  # their dataset.batch_size (conf/ssl_config.yaml)
    assert recipe_settings("georank", lr=0.05)["lr"] == 0.05


def test_ssl_rs_recipe_stays_the_default():
    optimizer, schedule = decoder_optimizer(nn.Linear(2, 2).parameters(), recipe_settings(), total_steps=10)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 1e-2
    for _ in range(5):
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # half way down the cosine
    assert recipe_settings()["batch_size"] is None


def test_probe_runs_their_recipe_on_a_frozen_backbone(masked_world, small_width, monkeypatch):
    """The probe builds their optimiser, keeps its rate constant, and leaves the backbone's weights and
    BatchNorm statistics as they were (their encoder stays in eval mode)."""
    from torch.utils.data import DataLoader

    from ssl_rs.data.dataset import GeoDataset

    built = []

    def spy(parameters, settings, total_steps):
        optimizer, schedule = decoder_optimizer(parameters, settings, total_steps)
        built.append((optimizer, schedule))
        return optimizer, schedule

    monkeypatch.setattr(segmentation, "decoder_optimizer", spy)
    train, test = GeoDataset(masked_world, split="train"), GeoDataset(masked_world, split="test")
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", in_chans=4).train()  # its train mode is restored after
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    loaders = [DataLoader(d, batch_size=12, shuffle=s) for d, s in ((train, True), (test, False))]
    metrics = segmentation_probe(backbone, *loaders, num_classes=3, nodata=NODATA, epochs=2, decoder="upernet",
                                 recipe="georank", preprocess=Preprocess(32, train.band_mean, train.band_std),
                                 progress=False)
    (optimizer, schedule), = built
    assert isinstance(optimizer, torch.optim.SGD) and schedule is None
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.02, 0.9, 1e-4)  # still, after 6 steps
    assert all(optimizer.state[p]["momentum_buffer"] is not None for p in group["params"])
    assert not any(p in optimizer.state for p in backbone.parameters())
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())  # weights and BN statistics
    assert backbone.training and all(p.requires_grad for p in backbone.parameters())
    assert {"miou", "pixel_acc", "train_loss"} <= set(metrics)


def test_probe_with_upernet_and_their_recipe_learns(tmp_path, small_width):
    """tiny_cnn's four maps (16, 8, 4, 2 px at 16 px), their 20 epochs and optimiser, in batches of 8
    (batches of 512 would be one step an epoch on this tiny world)."""
    from torch.utils.data import DataLoader

    from ssl_rs.data.dataset import GeoDataset

    path = write_masked(tmp_path / "world.h5")
    train, test = GeoDataset(path, split="train"), GeoDataset(path, split="test")
    loaders = [DataLoader(d, batch_size=8, shuffle=s, generator=torch.Generator().manual_seed(0))
               for d, s in ((train, True), (test, False))]
    torch.manual_seed(0)
    backbone = create_backbone("tiny_cnn", in_chans=4, width=8)
    metrics = segmentation_probe(backbone, *loaders, num_classes=3, nodata=NODATA, decoder="upernet",
                                 recipe="georank", preprocess=Preprocess(16, train.band_mean, train.band_std),
                                 progress=False)
    assert metrics["miou"] > majority_miou(path) + 50, metrics


# ---------------------------------------------------------------- harness, CLI, suite and errors
def test_vit_maps_are_refused_in_one_line():
    vit = create_backbone("vit_tiny", in_chans=4, **VIT).eval()
    with torch.no_grad():
        maps = vit.feature_maps(torch.randn(1, 4, 16, 16))
    with pytest.raises(ConfigError, match=r"^decoder: upernet needs feature maps of decreasing size \(a CNN's "
                                          r"stages\); these all are 4x4, as a ViT's are: use the multilevel decoder"):
        build_decoder("upernet", maps, 3)
    with pytest.raises(ConfigError, match=r"^decoder: upernet needs the backbone's last 4 feature maps .* gives 2$"):
        build_decoder("upernet", maps[:2], 3)
    coarse_first = [torch.zeros(1, 2, s, s) for s in (1, 2, 4, 8)]
    with pytest.raises(ConfigError, match=r"from the finest to the coarsest, got sizes 1x1, 2x2, 4x4, 8x8$"):
        build_decoder("upernet", coarse_first, 3)


def test_harness_and_cli(masked_world, small_width, tmp_path, capsys):
    from ssl_rs.evaluation.harness import evaluate

    with pytest.raises(ConfigError, match=r"^segmentation_recipe: unknown recipe 'adam' \(use ssl-rs, georank\)$"):
        evaluate("tiny_cnn", masked_world, protocols=["segmentation"], segmentation_recipe="adam", progress=False)
    with pytest.raises(ConfigError, match=r"^decoder: upernet needs feature maps of decreasing size"):
        evaluate("vit_tiny", masked_world, protocols=["segmentation"], backbone_args=VIT,
                 segmentation_decoder="upernet", progress=False)
    out = tmp_path / "seg.json"
    code = main(["eval", "segmentation", "--backbone", "tiny_cnn", "--backbone-args", '{"width": 8}',
                 "--data", str(masked_world), "--decoder", "upernet", "--recipe", "georank", "--epochs", "2",
                 "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    assert {"miou", "iou_water", "train_loss"} <= set(json.loads(out.read_text())["metrics"]["segmentation"])
    code = main(["eval", "segmentation", "--backbone", "vit_tiny", "--backbone-args", json.dumps(VIT),
                 "--data", str(masked_world), "--decoder", "upernet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ssl-rs: error: decoder: upernet needs feature maps of decreasing size")
    assert err.count("\n") == 1


def test_suite_options_are_checked_by_name(tmp_path):
    from ssl_rs.bench import load_suite

    suite = tmp_path / "s.yaml"
    body = ("name: s\ndata: {synth: {n: 8, size: 8}}\nbase_config: synthetic/mocov2\n"
            "eval: {protocols: [segmentation], segmentation_decoder: upernet, segmentation_recipe: %s}\n")
    suite.write_text(body % "georank")
    assert load_suite(suite).eval_options == {"segmentation_decoder": "upernet", "segmentation_recipe": "georank"}
    suite.write_text(body % "sgd")
    with pytest.raises(ConfigError, match=r"eval.segmentation_recipe: unknown recipe 'sgd' \(use ssl-rs, georank\)$"):
        load_suite(suite)


def test_a_pretraining_config_names_the_decoder_and_recipe(tiny_world, tmp_path, capsys):
    """``eval.segmentation_decoder`` / ``eval.segmentation_recipe`` are checked before training."""
    from ssl_rs.cli import main

    run = ["pretrain", "-c", "synthetic/mocov2", f"data.path={tiny_world}", f"output.dir={tmp_path}",
           "trainer.progress_bar=false", "eval.protocols=[segmentation]", "eval.schemes=null"]
    assert main([*run, "eval.segmentation_recipe=adam"]) == 2
    err = capsys.readouterr().err
    assert "eval.segmentation_recipe" in err and "adam" in err and err.count("\n") == 1
    assert main([*run, "eval.segmentation_decoder=fpn"]) == 2
    assert "eval.segmentation_decoder: unknown decoder 'fpn'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
