"""The segmentation probe: metrics and loss that ignore no-data, nearest-neighbour labels, the
backbones' feature maps, the decoders, the harness protocol and ``ssl-rs eval segmentation``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_rs.augmentations import Preprocess
from ssl_rs.backbones import create_backbone
from ssl_rs.cli import main
from ssl_rs.errors import ConfigError, DataError
from ssl_rs.evaluation.segmentation import (
    ConfusionMatrix,
    GeoRankHead,
    MultiLevelHead,
    build_decoder,
    decoder_for,
    label_geometry,
    resize_labels,
    segmentation_loss,
    segmentation_metrics,
    segmentation_probe,
)

CLASSES = ["water", "forest", "field"]
NODATA = 255
#: each class's reflectance in 4 bands: the classes are separable pixel by pixel
SPECTRA = np.array([[1000, 3000, 2000, 500], [3000, 1000, 500, 2000], [2000, 2000, 3000, 3000]])
VIT = {"img_size": 16, "patch_size": 4}


def write_masked(path, n=48, size=16, block=4, seed=0, nodata_rows=2):
    """A tiny world with per-pixel masks: ``block`` px class blocks, the top ``nodata_rows`` rows
    unlabelled, 3/4 of the samples in train, the rest in test."""
    from ssl_rs.data.writer import H5Writer

    rng = np.random.default_rng(seed)
    with H5Writer(path, bands=["B02", "B03", "B04", "B08"], size=(size, size), gsd=10.0, source="test",
                  mask_classes=CLASSES, mask_nodata=NODATA) as w:
        for i in range(n):
            blocks = rng.integers(0, 3, (size // block, size // block))
            mask = np.kron(blocks, np.ones((block, block), dtype=np.int64)).astype(np.uint8)
            image = SPECTRA[mask].transpose(2, 0, 1) + rng.normal(0, 300, (4, size, size))
            mask[:nodata_rows] = NODATA
            w.append(np.clip(image, 0, 65535).astype(np.uint16), lat=45 + 0.01 * i, lon=7.0, mask=mask,
                     split="train" if i < n * 3 // 4 else "test")
    return path


@pytest.fixture(scope="module")
def masked_world(tmp_path_factory):
    return write_masked(tmp_path_factory.mktemp("seg") / "masked.h5")


# ---------------------------------------------------------------- metrics and loss
def test_metrics_known_values_and_nodata_ignored():
    # labels (255: no-data)       predictions
    #   0   0   1   255             0   1   1   2
    #   1   2   2   255             1   2   0   0
    targets = torch.tensor([[[0, 0, 1, 255], [1, 2, 2, 255]]], dtype=torch.uint8)
    preds = torch.tensor([[[0, 1, 1, 2], [1, 2, 0, 0]]])
    # 6 labelled pixels, 4 right. class 0: tp 1, fp 1, fn 1 -> IoU 1/3, F1 1/2
    # class 1: tp 2, fp 1, fn 0 -> IoU 2/3, F1 4/5; class 2: tp 1, fp 0, fn 1 -> IoU 1/2, F1 2/3
    got = segmentation_metrics(preds, targets, 3, ignore_index=NODATA, class_names=CLASSES)
    expected = {"iou_water": 100 / 3, "iou_forest": 200 / 3, "iou_field": 50.0, "pixel_acc": 400 / 6,
                "miou": 100 * (1 / 3 + 2 / 3 + 1 / 2) / 3, "f1_macro": 100 * (1 / 2 + 4 / 5 + 2 / 3) / 3}
    assert got == pytest.approx(expected)
    # whatever is predicted on no-data pixels changes nothing
    assert segmentation_metrics(torch.where(targets == NODATA, 1, preds), targets, 3, NODATA, CLASSES) == got
    # (B, C, H, W) scores give the same as their argmax
    scores = F.one_hot(preds, 3).permute(0, 3, 1, 2).float()
    assert segmentation_metrics(scores, targets, 3, NODATA, CLASSES) == pytest.approx(got)


def test_a_class_absent_from_labels_and_predictions_has_no_iou():
    targets = torch.tensor([[[0, 1], [1, 0]]])
    got = segmentation_metrics(targets, targets, 3, class_names=CLASSES)
    assert got == {"miou": 100.0, "f1_macro": 100.0, "pixel_acc": 100.0, "iou_water": 100.0, "iou_forest": 100.0}


def test_confusion_accumulates_over_batches():
    rng = np.random.default_rng(0)
    targets = torch.from_numpy(rng.integers(0, 4, (6, 5, 5)))
    preds = torch.from_numpy(rng.integers(0, 4, (6, 5, 5)))
    whole = ConfusionMatrix(4)
    whole.update(preds, targets)
    parts = ConfusionMatrix(4)
    for i in range(0, 6, 2):
        parts.update(preds[i : i + 2], targets[i : i + 2])
    assert torch.equal(whole.counts, parts.counts) and int(whole.counts.sum()) == 150
    assert whole.metrics()["pixel_acc"] == pytest.approx(100 * float((preds == targets).float().mean()))


def test_bad_labels_and_all_nodata_are_one_line_errors():
    with pytest.raises(DataError, match=r"^f.h5: mask: value 7 is not a class index \(0..2\) or the no-data value 255$"):
        ConfusionMatrix(3, NODATA, what="f.h5: mask").update(torch.zeros(1, 2, 2), torch.tensor([[[0, 7], [1, 2]]]))
    with pytest.raises(DataError, match="no labelled pixels"):
        ConfusionMatrix(3, NODATA).metrics()


def test_loss_ignores_nodata_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    targets = torch.randint(0, 3, (2, 4, 4), dtype=torch.uint8)
    targets[:, :2] = NODATA
    loss = segmentation_loss(logits, targets, NODATA)
    valid = targets != NODATA
    by_hand = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], targets[valid].long())
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    loss.backward()
    assert logits.grad[:, :, :2].abs().sum() == 0 and logits.grad[:, :, 2:].abs().sum() > 0
    # a batch without a labelled pixel: 0, not NaN, and backward works
    empty = segmentation_loss(logits, torch.full_like(targets, NODATA), NODATA)
    empty.backward()
    assert empty.item() == 0.0


# ---------------------------------------------------------------- labels follow the images' geometry
def test_labels_are_resized_nearest_neighbour():
    labels = torch.tensor([[[0, 2], [2, 0]]], dtype=torch.uint8)
    up = resize_labels(labels, 4)
    assert up.dtype == torch.uint8
    assert torch.equal(up[0], torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [2, 2, 0, 0], [2, 2, 0, 0]], dtype=torch.uint8))
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2  # 0/2 checkerboard
    for side in (3, 5, 6, 11):  # never an in-between value (bilinear would give 1s)
        assert set(resize_labels(checker[None].to(torch.uint8), side).unique().tolist()) <= {0, 2}
    assert torch.equal(resize_labels(labels, 2), labels)


def test_label_geometry_matches_the_preprocess():
    labels = torch.arange(64, dtype=torch.uint8).view(1, 8, 8)
    # a resize and a centre crop (zoo evaluation transforms): the labels follow both
    pre = Preprocess(4, [0.0], [1.0], resize=8)
    assert torch.equal(label_geometry(labels, pre), labels[:, 2:6, 2:6])
    pre = Preprocess(16, [0.0], [1.0])
    assert torch.equal(label_geometry(labels, pre), labels.repeat_interleave(2, 1).repeat_interleave(2, 2))
    # the image and its labels end at the same size
    images = torch.zeros(1, 1, 8, 8, dtype=torch.int32)
    for p in (Preprocess(12, [0.0], [1.0]), Preprocess(4, [0.0], [1.0], crop_fraction=0.5), Preprocess(6, [0.0], [1.0], resize=10)):
        assert label_geometry(labels, p).shape[-2:] == p(images).shape[-2:]


# ---------------------------------------------------------------- backbones and decoders
@pytest.mark.parametrize("name,args,shapes", [
    ("tiny_cnn", {"width": 8}, [(8, 16), (16, 8), (16, 4), (32, 2)]),
    ("resnet18", {}, [(64, 8), (64, 4), (128, 2), (256, 1), (512, 1)]),
    ("vit_tiny", VIT, [(192, 4)] * 4),
])
def test_backbones_give_feature_maps(name, args, shapes):
    backbone = create_backbone(name, in_chans=4, **args).eval()
    maps = backbone.feature_maps(torch.randn(2, 4, 16, 16))
    assert [(m.shape[0], m.shape[1], m.shape[2]) for m in maps] == [(2, c, s) for c, s in shapes]
    assert all(m.shape[2] == m.shape[3] for m in maps)
    decoder = build_decoder("auto", maps, 3)
    assert isinstance(decoder, MultiLevelHead if name == "vit_tiny" else GeoRankHead)
    assert decoder(maps, (16, 16)).shape == (2, 3, 16, 16)


def test_vit_levels_and_bad_input():
    vit = create_backbone("vit_tiny", in_chans=4, **VIT).eval()
    assert len(vit.feature_maps(torch.randn(1, 4, 16, 16), levels=2)) == 2
    with pytest.raises(ConfigError, match=r"levels must be 1..12"):
        vit.feature_maps(torch.randn(1, 4, 16, 16), levels=13)
    with pytest.raises(ConfigError, match=r"expects \(B, 4, H, W\) input"):
        vit.feature_maps(torch.randn(1, 3, 16, 16))


def test_feature_maps_see_the_input_forward_sees():
    """A forward pre-hook (the zoo's input renormalisation) applies to the maps too."""
    torch.manual_seed(0)
    backbone = create_backbone("tiny_cnn", in_chans=4, width=8).eval()
    x = torch.randn(2, 4, 16, 16)
    plain = backbone.feature_maps(x * 3 + 1)
    backbone.register_forward_pre_hook(lambda module, args: (args[0] * 3 + 1,))
    hooked = backbone.feature_maps(x)
    assert all(torch.allclose(a, b) for a, b in zip(plain, hooked))


def test_a_backbone_without_maps_is_a_clear_error():
    class Pooled(nn.Module):
        name = "pooled"

        def forward(self, x):
            return x.mean(dim=(2, 3))

    with pytest.raises(ConfigError, match=r"^backbone 'pooled' \(Pooled\) gives no spatial feature maps"):
        decoder_for(Pooled(), 3, torch.zeros(1, 4, 8, 8))


def test_georank_head_is_the_authors():
    """One ConvTranspose2d(C, classes, 4, stride 2, padding 1), then bilinear (align_corners) upsampling."""
    head = GeoRankHead([64, 512], 5)
    (conv,) = [m for m in head.modules() if not isinstance(m, GeoRankHead)]
    assert isinstance(conv, nn.ConvTranspose2d) and conv.in_channels == 512 and conv.out_channels == 5
    assert conv.kernel_size == (4, 4) and conv.stride == (2, 2) and conv.padding == (1, 1)
    x = torch.randn(1, 512, 3, 3)
    expected = F.interpolate(conv(x), size=(20, 20), mode="bilinear", align_corners=True)
    assert torch.allclose(head([torch.randn(1, 64, 6, 6), x], (20, 20)), expected)


# ---------------------------------------------------------------- the probe
def majority_miou(path, split="test"):
    """mIoU of predicting the train split's most frequent class everywhere."""
    from ssl_rs.data.dataset import GeoDataset

    train, test = GeoDataset(path, split="train"), GeoDataset(path, split=split)
    train_masks = torch.stack([train[i]["mask"] for i in range(len(train))])
    majority = int(torch.bincount(train_masks[train_masks != train.mask_nodata].long()).argmax())
    test_masks = torch.stack([test[i]["mask"] for i in range(len(test))])
    return segmentation_metrics(torch.full_like(test_masks, majority), test_masks, len(train.mask_classes),
                                train.mask_nodata)["miou"]


def test_probe_beats_the_majority_class(masked_world):
    from ssl_rs.evaluation.harness import evaluate

    result = evaluate("vit_tiny", masked_world, protocols=["segmentation"], backbone_args=VIT, batch_size=16,
                      segmentation_epochs=5, progress=False)
    metrics = result["metrics"]["segmentation"]
    baseline = majority_miou(masked_world)
    assert baseline < 20
    assert metrics["miou"] > baseline + 40, (metrics, baseline)
    assert set(metrics) == {"miou", "f1_macro", "pixel_acc", "iou_water", "iou_forest", "iou_field", "train_loss"}
    assert all(0 <= metrics[k] <= 100 for k in metrics if k != "train_loss")


def test_probe_beats_the_majority_class_on_the_synthetic_world(tmp_path):
    """``ssl-rs data synth --masks``: two land covers per tile, clutter pixels no-data."""
    from ssl_rs.data.synth import synthesize
    from ssl_rs.evaluation.harness import evaluate

    path = synthesize(tmp_path / "world.h5", n=120, size=16, seed=1, num_classes=4, masks=True, progress=False)
    result = evaluate("vit_tiny", path, scheme="random", protocols=["segmentation"], backbone_args=VIT,
                      batch_size=16, segmentation_epochs=8, segmentation_lr=1e-2, progress=False)
    metrics = result["metrics"]["segmentation"]
    baseline = majority_miou(path)
    assert metrics["miou"] > baseline + 30, (metrics, baseline)


def test_cnn_probe_with_the_georank_head_learns(tmp_path):
    """tiny_cnn's last map is 2x2 at 16 px: classes in 8 px blocks are within its reach."""
    path = write_masked(tmp_path / "coarse.h5", block=8)
    torch.manual_seed(0)
    backbone = create_backbone("tiny_cnn", in_chans=4, width=32)
    from ssl_rs.data.dataset import GeoDataset
    from ssl_rs.evaluation.segmentation import evaluate_segmentation

    train, test = GeoDataset(path, split="train"), GeoDataset(path, split="test")
    pre = Preprocess(16, train.band_mean, train.band_std)
    metrics = evaluate_segmentation(backbone, train, test, preprocess=pre, batch_size=8, epochs=10, lr=1e-2,
                                    progress=False)
    assert metrics["miou"] > majority_miou(path) + 25


def test_probe_is_deterministic_and_the_cache_is_optional(masked_world):
    from ssl_rs.data.dataset import GeoDataset
    from torch.utils.data import DataLoader

    train, test = GeoDataset(masked_world, split="train"), GeoDataset(masked_world, split="test")
    pre = Preprocess(16, train.band_mean, train.band_std)
    torch.manual_seed(0)
    backbone = create_backbone("tiny_cnn", in_chans=4, width=8)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    rng_state = torch.get_rng_state()

    def run(**kw):
        loaders = [DataLoader(d, batch_size=8, shuffle=s, generator=torch.Generator().manual_seed(0))
                   for d, s in ((train, True), (test, False))]
        return segmentation_probe(backbone, *loaders, num_classes=3, nodata=NODATA, preprocess=pre, epochs=2,
                                  progress=False, **kw)

    first = run()
    assert run() == first
    streamed = run(cache_bytes=0)  # maps recomputed batch by batch each epoch
    assert streamed.keys() == first.keys() and math.isfinite(streamed["train_loss"])
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())  # frozen
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG untouched


# ---------------------------------------------------------------- errors, harness and CLI
def test_data_without_masks_is_one_line_error(tiny_world, capsys):
    from ssl_rs.evaluation.harness import evaluate

    with pytest.raises(DataError, match=r": mask: the file has no per-pixel masks \(segmentation needs them; "
                                        r"convert with a mask converter or `ssl-rs data synth --masks`\)$"):
        evaluate("tiny_cnn", tiny_world, protocols=["segmentation"], progress=False)
    code = main(["eval", "segmentation", "--backbone", "tiny_cnn", "--data", str(tiny_world)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"ssl-rs: error: {tiny_world}: mask: the file has no per-pixel masks")
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
    (["--lr", "-1"], "--lr: must be a finite number > 0, got -1.0"),
])
def test_bad_options_are_named_by_their_flag(masked_world, capsys, argv, message):
    code = main(["eval", "segmentation", "--backbone", "tiny_cnn", "--data", str(masked_world), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err == f"ssl-rs: error: {message}\n"


def test_cli_end_to_end_json(masked_world, tmp_path, capsys):
    out = tmp_path / "seg.json"
    code = main(["eval", "segmentation", "--backbone", "vit_tiny", "--backbone-args", json.dumps(VIT),
                 "--data", str(masked_world), "--epochs", "3", "--batch-size", "16", "--size", "24",
                 "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "| segmentation | miou" in text and "iou_forest" in text
    result = json.loads(out.read_text())
    metrics = result["metrics"]["segmentation"]
    assert result["n_train"] == 36 and result["n_test"] == 12 and result["feature_dim"] == 192
    assert {"miou", "f1_macro", "pixel_acc", "iou_water"} <= set(metrics)
    assert metrics["miou"] > majority_miou(masked_world)


def test_final_evaluation_plan_checks_masks(tiny_world, masked_world):
    from omegaconf import OmegaConf

    from ssl_rs.config import load_config, validate
    from ssl_rs.evaluation.plan import check_evaluation, eval_protocols

    cfg = load_config("synthetic/mocov2", [f"data.path={tiny_world}", "eval.schemes=null",
                                           "eval.protocols=[segmentation]"])
    assert eval_protocols(cfg) == ["segmentation"]
    with pytest.raises(DataError, match="mask: the file has no per-pixel masks"):
        check_evaluation(cfg)
    cfg = OmegaConf.merge(cfg, {"eval": {"data": str(masked_world), "schemes": None}})
    assert check_evaluation(cfg) is None
    with pytest.raises(ConfigError, match="eval.segmentation_epochs"):
        validate(load_config("synthetic/mocov2", [f"data.path={tiny_world}", "eval.segmentation_epochs=0"]))


# ---------------------------------------------------------------- fine-tuning
def test_finetune_segmentation_task(masked_world):
    """The same decoder with the backbone unfrozen (a copy: the caller's stays as it was)."""
    from ssl_rs.data.dataset import GeoDataset
    from ssl_rs.evaluation.finetune import finetune
    from ssl_rs.evaluation.segmentation import segmentation_task

    train, test = GeoDataset(masked_world, split="train"), GeoDataset(masked_world, split="test")
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", in_chans=4, **VIT)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    metrics = finetune(backbone, train, test, task=segmentation_task(train), epochs=2, batch_size=16, progress=False)
    assert metrics["miou"] > majority_miou(masked_world) + 40
    assert {"miou", "f1_macro", "pixel_acc", "iou_water", "train_loss"} <= set(metrics)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())


def test_segmentation_task_labels_follow_the_geometry_and_the_augmentation():
    from ssl_rs.evaluation.segmentation import SegmentationTask

    task = SegmentationTask(3, CLASSES, NODATA, preprocess=Preprocess(4, [0.0], [1.0], resize=8))
    labels = torch.randint(0, 3, (2, 8, 8), dtype=torch.uint8)
    logits = F.one_hot(labels[:, 2:6, 2:6].long(), 3).permute(0, 3, 1, 2).float() * 10
    assert task.loss(logits, labels).item() < 1e-3  # the labels were centre-cropped like the images
    assert task.metrics(task.outputs(logits), labels)["miou"] == 100.0
    # an image and its labels get the same flip / quarter turn
    images = labels[:, None].float().repeat(1, 2, 1, 1)
    torch.manual_seed(3)
    turned, turned_labels = task.augment(images, labels)
    assert torch.equal(turned[:, 0].to(torch.uint8), turned_labels) and not torch.equal(turned_labels, labels)
    with pytest.raises(DataError, match=r"^f.h5: mask: value 9 is not a class index"):
        SegmentationTask(3, nodata=NODATA, what="f.h5: mask").targets({"mask": torch.full((1, 2, 2), 9)}, "cpu")


def test_finetune_task_by_name_and_through_the_cli(masked_world, tiny_world, tmp_path, capsys):
    from ssl_rs.evaluation.finetune import TASKS

    assert "segmentation" in TASKS
    out = tmp_path / "ft.json"
    code = main(["eval", "finetune", "--task", "segmentation", "--backbone", "vit_tiny", "--backbone-args",
                 json.dumps(VIT), "--data", str(masked_world), "--epochs", "2", "--batch-size", "16", "--size", "24",
                 "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(out.read_text())["metrics"]["finetune"]
    assert {"miou", "f1_macro", "pixel_acc", "iou_field"} <= set(metrics)
    assert metrics["miou"] > majority_miou(masked_world)
    # a file without masks: one line, before any training
    code = main(["eval", "finetune", "--task", "segmentation", "--backbone", "tiny_cnn", "--data", str(tiny_world)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "mask: the file has no per-pixel masks" in err
