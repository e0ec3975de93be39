"""Cross-Scale MAE: the cross-scale InfoNCE on an exact small case, masked-only reconstruction,
the two nested views, and a few training steps whose checkpoint evaluates like the run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ssl_rs.backbones import create_backbone
from ssl_rs.errors import ConfigError
from ssl_rs.methods.crossscalemae import CrossScaleMAE, cross_scale_info_nce
from ssl_rs.methods.vit_utils import random_patch_mask
from ssl_rs.train import load_backbone_from_checkpoint, pretrain


def vit(in_chans=3):
    return create_backbone("vit_tiny", in_chans=in_chans, img_size=16, patch_size=4, depth=2)


def tiny_decoder():
    return dict(decoder_dim=32, decoder_depth=1, decoder_heads=2)


# a 3 x 3 case: unit vectors, so the logits are the plain dot products over the temperature
Z1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
Z2 = torch.tensor([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8]])


def hand_info_nce(z1, z2, t):
    """(CE over rows + CE over columns) / 2 of s_ij = <z1_i, z2_j> / t, written out element by element."""
    n = len(z1)
    s = [[sum(a * b for a, b in zip(z1[i], z2[j])) / t for j in range(n)] for i in range(n)]
    rows = sum(-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(n))) for i in range(n)) / n
    cols = sum(-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (rows + cols)


def test_consistency_term_is_a_hand_computed_cross_entropy():
    z1, z2 = Z1.tolist(), Z2.tolist()
    expected = hand_info_nce(z1, z2, 0.1)
    # worked by hand: Z1 = I, so s_ij = Z2[j][i] / 0.1: rows (6, 0, 0), (8, 10, 6), (0, 0, 8)
    e = math.exp
    rows = (-6 + math.log(e(6) + 2)) + (-10 + math.log(e(8) + e(10) + e(6))) + (-8 + math.log(2 + e(8)))
    cols = (-6 + math.log(e(6) + e(8) + 1)) + (-10 + math.log(e(10) + 2)) + (-8 + math.log(1 + e(6) + e(8)))
    assert expected == pytest.approx(0.5 * (rows / 3 + cols / 3), rel=1e-6)  # float32 inputs
    assert float(cross_scale_info_nce(Z1, Z2, 0.1)) == pytest.approx(expected, rel=1e-5)
    # cosine similarity: the scale of either encoding does not matter
    assert float(cross_scale_info_nce(Z1 * 3.0, Z2 * 0.5, 0.1)) == pytest.approx(expected, rel=1e-5)
    assert float(cross_scale_info_nce(Z1, Z2, 0.5)) == pytest.approx(hand_info_nce(z1, z2, 0.5), rel=1e-5)


def test_ssl_loss_adds_weighted_consistency_of_stubbed_encodings(monkeypatch):
    torch.manual_seed(0)
    method = CrossScaleMAE(vit(3), consistency_weight=0.5, temperature=0.1, **tiny_decoder()).eval()
    calls = []

    def stub(images, idx_keep, idx_mask, target=None):  # hand-set encoder output per view
        calls.append(images)
        rec = torch.tensor(0.25) if len(calls) == 1 else torch.tensor(0.75)
        return rec, (Z1 if len(calls) == 1 else Z2)

    monkeypatch.setattr(method, "reconstruct", stub)
    loss, z, logs = method.ssl_loss([torch.randn(3, 3, 16, 16)], {})
    expected = hand_info_nce(Z1.tolist(), Z2.tolist(), 0.1)
    assert float(logs["loss_consistency"]) == pytest.approx(expected, rel=1e-5)
    assert float(loss) == pytest.approx(0.25 + 0.75 + 0.5 * expected, rel=1e-5)
    assert torch.equal(z, Z1)  # the regularizer sees view 1
    assert len(calls) == 2 and calls[0].shape == calls[1].shape == (3, 3, 16, 16)


def test_reconstruction_counts_masked_patches_only():
    torch.manual_seed(0)
    method = CrossScaleMAE(vit(5), mask_ratio=0.75, norm_pix_loss=False, **tiny_decoder()).eval()
    images = torch.randn(2, 5, 16, 16)
    keep, mask = random_patch_mask(2, 16, 0.75)
    with torch.no_grad():
        base, z = method.reconstruct(images, keep, mask, target=images)
    assert z.shape == (2, 192) and method.embed_dim == 192

    def changed_at(patch):  # add 1 to every band of one patch of sample 0 in the target only
        target = images.clone()
        row, col = divmod(int(patch), 4)
        target[0, :, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 1.0
        with torch.no_grad():
            return method.reconstruct(images, keep, mask, target=target)[0]

    assert changed_at(keep[0, 0]) == pytest.approx(float(base), rel=1e-6)
    assert changed_at(mask[0, 0]) > base


def test_two_views_are_nested_scales_of_the_same_ground():
    torch.manual_seed(0)
    images = torch.arange(2 * 16 * 16.0).reshape(2, 1, 16, 16)
    same = CrossScaleMAE(vit(1), crop_scale=(1.0, 1.0), **tiny_decoder())
    v1, v2, _ = same.two_scales(images)
    assert torch.equal(v1, images) and torch.equal(v2, images)  # default view 1 = the whole input
    nested = CrossScaleMAE(vit(1), large_scale=(0.25, 0.25), crop_scale=(0.25, 0.25), **tiny_decoder())
    v1, v2, sides = nested.two_scales(images)
    assert sides == {"side_1": 8.0, "side_2": 4.0}
    assert v1.shape == v2.shape == images.shape
    for a, b in zip(v1, v2):  # bilinear resizes stay inside their crop's range; crop 2 lies inside crop 1
        assert a.min() <= b.min() and b.max() <= a.max() and (b.max() - b.min()) < (a.max() - a.min())


def test_needs_a_vit_and_valid_args():
    with pytest.raises(ConfigError, match="ViT backbone"):
        CrossScaleMAE(create_backbone("tiny_cnn", in_chans=3, width=8))
    for bad in (dict(mask_ratio=1.0), dict(crop_scale=(0.0, 0.5)), dict(large_scale=(0.5, 0.2)),
                dict(temperature=0.0), dict(consistency_weight=-1.0)):
        with pytest.raises(ConfigError):
            CrossScaleMAE(vit(), **bad, **tiny_decoder())


def test_registered():
    import ssl_rs.methods  # noqa: F401
    from ssl_rs.registry import METHODS

    assert "crossscalemae" in METHODS.names()


def test_trains_and_checkpoint_evaluates_like_the_run(tiny_world, tiny_mim_config):
    from ssl_rs.evaluation.harness import evaluate

    cfg = tiny_mim_config(tiny_world, "crossscalemae")
    result = pretrain(cfg)
    assert result["steps"] >= 2
    in_run = result["eval"]["random"]["metrics"]["knn"]
    backbone, saved = load_backbone_from_checkpoint(Path(result["run_dir"]) / "checkpoints" / "last.ckpt")
    assert backbone(torch.randn(2, backbone.in_chans, 16, 16)).shape == (2, 192)
    again = evaluate(backbone, tiny_world, bands=saved["data_bands"], size=saved["augmentation"]["size"],
                     progress=False)["metrics"]["knn"]
    assert again == pytest.approx(in_run)
