"""Cross-Scale MAE: the cross-scale InfoNCE and the cross-scale decoder prediction term on exact
small cases, masked-only reconstruction, the two nested views, GSD-scaled position encodings, and a
few training steps whose checkpoint evaluates like the run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ssl_rs.backbones import create_backbone
from ssl_rs.errors import ConfigError
from ssl_rs.methods import crossscalemae as csmae
from ssl_rs.methods.crossscalemae import (
    CrossScaleMAE,
    ViewOutput,
    cross_decoder_prediction_loss,
    cross_scale_info_nce,
)
from ssl_rs.methods.vit_utils import embed_tokens_at_gsd, encode_visible, random_patch_mask, sincos_pos_embed
from ssl_rs.checkpoint import load_encoder
from ssl_rs.train import pretrain


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


# decoder embeddings (B = 1, N = 2 tokens, 2 features) of the large and the small view
D1 = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
D2 = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])


class Doubling(torch.nn.Module):
    """A stand-in predictor that makes the direction of the term visible."""

    def forward(self, tokens):
        return 2.0 * tokens


def stub_views(calls, decoded=(D1, D2)):
    """A stand-in for ``reconstruct`` with hand-set outputs: view 1 (rec 0.25, Z1, D1), view 2
    (rec 0.75, Z2, D2)."""

    def stub(images, idx_keep, idx_mask, target=None, gsd_ratio=None):
        calls.append(images)
        first = len(calls) == 1
        return ViewOutput(torch.tensor(0.25 if first else 0.75), Z1 if first else Z2, decoded[0 if first else 1])

    return stub


def test_ssl_loss_adds_weighted_consistency_of_stubbed_encodings(monkeypatch):
    torch.manual_seed(0)
    method = CrossScaleMAE(vit(3), consistency_weight=0.5, temperature=0.1, decoder_prediction_weight=0.0,
                           **tiny_decoder()).eval()
    assert method.cross_decoder_predictor is None  # weight 0 builds no predictor
    calls = []
    monkeypatch.setattr(method, "reconstruct", stub_views(calls))
    loss, z, logs = method.ssl_loss([torch.randn(3, 3, 16, 16)], {})
    expected = hand_info_nce(Z1.tolist(), Z2.tolist(), 0.1)
    assert float(logs["loss_consistency"]) == pytest.approx(expected, rel=1e-5)
    assert float(loss) == pytest.approx(0.25 + 0.75 + 0.5 * expected, rel=1e-5)
    assert "loss_cross_decoder" not in logs
    assert torch.equal(z, Z1)  # the regularizer sees view 1
    assert len(calls) == 2 and calls[0].shape == calls[1].shape == (3, 3, 16, 16)


def test_cross_decoder_term_is_a_hand_computed_mse_from_small_to_large(monkeypatch):
    # predictor(D2) = 2 * D2 = [[2, 2], [0, 0]]; minus D1 = [[1, 2], [0, -2]]; mean of squares 9 / 4
    assert float(cross_decoder_prediction_loss(2 * D2, D1)) == pytest.approx(2.25)
    assert float(cross_decoder_prediction_loss(D1, D1)) == 0.0

    torch.manual_seed(0)
    method = CrossScaleMAE(vit(3), consistency_weight=0.5, temperature=0.1, decoder_prediction_weight=2.0,
                           **tiny_decoder()).eval()
    assert isinstance(method.cross_decoder_predictor, csmae.DecoderTokenPredictor)
    method.cross_decoder_predictor = Doubling()
    d1, d2 = D1.clone().requires_grad_(), D2.clone().requires_grad_()
    monkeypatch.setattr(method, "reconstruct", stub_views([], decoded=(d1, d2)))
    loss, _, logs = method.ssl_loss([torch.randn(3, 3, 16, 16)], {})
    assert logs["loss_cross_decoder"].item() == pytest.approx(2.25)  # predicts view 1 from view 2
    expected = 0.25 + 0.75 + 0.5 * hand_info_nce(Z1.tolist(), Z2.tolist(), 0.1) + 2.0 * 2.25
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()  # no stop-gradient: both views' decoder embeddings get gradients
    # d/dD1 of 2 * mean((2 D2 - D1)^2) = -(2 D2 - D1); d/dD2 = 2 (2 D2 - D1)
    assert torch.allclose(d1.grad, torch.tensor([[[-1.0, -2.0], [0.0, 2.0]]]))
    assert torch.allclose(d2.grad, torch.tensor([[[2.0, 4.0], [0.0, -4.0]]]))


def test_decoder_prediction_weight_zero_gives_the_loss_without_the_term():
    def run(weight):
        torch.manual_seed(0)
        images = torch.randn(4, 3, 16, 16)
        method = CrossScaleMAE(vit(3), decoder_prediction_weight=weight, **tiny_decoder())
        torch.manual_seed(1)
        return method, images, method.ssl_loss([images], {"image": images})

    method, images, (loss0, z0, logs0) = run(0.0)
    assert not any("cross_decoder" in name for name, _ in method.named_parameters())
    torch.manual_seed(1)  # the loss before the term existed, step by step
    view1, view2, _ = method.two_scales(images)
    keep1, mask1 = random_patch_mask(4, 16, 0.75)
    keep2, mask2 = random_patch_mask(4, 16, 0.75)
    (rec_1, z1, _), (rec_2, z2, _) = method.reconstruct(view1, keep1, mask1), method.reconstruct(view2, keep2, mask2)
    assert torch.equal(loss0, rec_1 + rec_2 + 1.0 * cross_scale_info_nce(z1, z2, 0.1)) and torch.equal(z0, z1)

    method1, _, (loss1, _, logs1) = run(0.5)  # same weights and draws, plus the term
    for key in ("loss_rec_1", "loss_rec_2", "loss_consistency"):
        assert torch.equal(logs0[key], logs1[key])
    assert torch.isfinite(logs1["loss_cross_decoder"]) and logs1["loss_cross_decoder"] > 0
    assert loss1.item() == pytest.approx((loss0 + 0.5 * logs1["loss_cross_decoder"]).item(), rel=1e-6)
    loss1.backward()  # the predictor (BatchNorm over all tokens of the batch) learns
    assert all(p.grad is not None for p in method1.cross_decoder_predictor.parameters())


def test_reconstruction_counts_masked_patches_only():
    torch.manual_seed(0)
    method = CrossScaleMAE(vit(5), mask_ratio=0.75, norm_pix_loss=False, **tiny_decoder()).eval()
    images = torch.randn(2, 5, 16, 16)
    keep, mask = random_patch_mask(2, 16, 0.75)
    with torch.no_grad():
        base, z, decoded = method.reconstruct(images, keep, mask, target=images)
    assert z.shape == (2, 192) and method.embed_dim == 192 and decoded.shape == (2, 16, 32)

    def changed_at(patch):  # add 1 to every band of one patch of sample 0 in the target only
        target = images.clone()
        row, col = divmod(int(patch), 4)
        target[0, :, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 1.0
        with torch.no_grad():
            return method.reconstruct(images, keep, mask, target=target).reconstruction

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
                dict(temperature=0.0), dict(consistency_weight=-1.0), dict(decoder_prediction_weight=-0.1),
                dict(decoder_predictor_dim=0), dict(decoder_predictor_dim=2.5)):
        with pytest.raises(ConfigError):
            CrossScaleMAE(vit(), **bad, **tiny_decoder())
    CrossScaleMAE(vit(), decoder_prediction_weight=0.0, decoder_predictor_dim=0, **tiny_decoder())  # unused


# -- GSD-scaled position encodings ---------------------------------------------------------


def test_gsd_encoding_scales_each_view_by_its_gsd(monkeypatch):
    torch.manual_seed(0)
    method = CrossScaleMAE(vit(3), gsd_encoding=True, large_scale=(0.25, 0.25), crop_scale=(0.25, 0.25),
                           **tiny_decoder()).eval()
    tokens, decoder_pos = [], []
    real_encode, real_decode = csmae.encode_visible, method.decoder.forward

    def spy_encode(vit_, toks, idx_keep):
        tokens.append(toks)
        return real_encode(vit_, toks, idx_keep)

    def spy_decode(encoded, idx_keep, num_patches, pos=None, keep_valid=None):
        decoder_pos.append(pos)
        return real_decode(encoded, idx_keep, num_patches, pos=pos, keep_valid=keep_valid)

    monkeypatch.setattr(csmae, "encode_visible", spy_encode)
    monkeypatch.setattr(method.decoder, "forward", spy_decode)
    flat = torch.zeros(2, 3, 16, 16)  # a flat image: every patch embeds the same, tokens differ by position only
    with torch.no_grad():
        _, _, logs = method.ssl_loss([flat], {"image": flat})
    # crop sides 8 and 4 of a 16 px input that shows the whole 16 px tile: GSD x 0.5 and x 0.25
    assert logs["gsd_ratio_1"].item() == pytest.approx(0.5) and logs["gsd_ratio_2"].item() == pytest.approx(0.25)
    assert (logs["gsd_ratio_1"] / logs["gsd_ratio_2"]).item() == pytest.approx(logs["scale_ratio"].item())
    assert torch.allclose(decoder_pos[0], sincos_pos_embed(32, 4, torch.full((2,), 0.5)), atol=1e-6)
    # the same ground distance gets the same code: patch (2i, 2j) of view 2 = patch (i, j) of view 1
    for i, j in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        assert torch.allclose(tokens[1][:, 1 + 8 * i + 2 * j], tokens[0][:, 1 + 4 * i + j], atol=1e-5)
        assert torch.allclose(decoder_pos[1][:, 8 * i + 2 * j], decoder_pos[0][:, 4 * i + j], atol=1e-5)
    assert not torch.allclose(tokens[1][:, 2], tokens[0][:, 2], atol=1e-3)
    with torch.no_grad():  # a 32 px tile shown at 16 px: every GSD doubles
        tile = torch.zeros(2, 3, 32, 32)
        logs = method.ssl_loss([flat], {"image": tile})[2]
    assert logs["gsd_ratio_1"].item() == pytest.approx(1.0) and logs["gsd_ratio_2"].item() == pytest.approx(0.5)


def test_gsd_encoding_backbone_forward_uses_the_native_gsd_encoding():
    torch.manual_seed(0)
    backbone = vit(3)
    method = CrossScaleMAE(backbone, gsd_encoding=True, **tiny_decoder()).eval()
    assert not method.vit.pos_embed.requires_grad
    assert torch.allclose(method.vit.pos_embed[0, 1:], sincos_pos_embed(192, 4), atol=1e-6)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens = embed_tokens_at_gsd(method.vit, images, torch.ones(2), "crossscalemae")
        encoded = encode_visible(method.vit, tokens, torch.arange(16).expand(2, -1))
        assert torch.allclose(method.vit.forward_head(encoded, pre_logits=True), backbone(images), atol=1e-5)
    plain = CrossScaleMAE(vit(3), **tiny_decoder())  # off: the backbone's learned embedding, trained
    assert plain.vit.pos_embed.requires_grad


def test_gsd_encoding_refuses_views_cropped_elsewhere():
    from ssl_rs.registry import AUGMENTATIONS

    geometric = AUGMENTATIONS.create("geometric", size=16, mean=[0.0] * 3, std=[1.0] * 3, n_views=1)
    with pytest.raises(ConfigError, match="augmentation.name: eval"):
        CrossScaleMAE(vit(3), augmentation=geometric, gsd_encoding=True, **tiny_decoder()).check_contract({"image"})
    # without it, any single view will do
    CrossScaleMAE(vit(3), augmentation=geometric, **tiny_decoder()).check_contract({"image"})


def test_registered_factory_builds_the_zoo_config_and_learns(tiny_world, tiny_mim_config):
    from ssl_rs.registry import METHODS
    from ssl_rs.train import build

    assert METHODS.get("crossscalemae").factory is CrossScaleMAE
    cfg = tiny_mim_config(tiny_world, "crossscalemae")
    built = build(cfg)
    method, args = built.method, cfg.method.args
    assert isinstance(method, CrossScaleMAE) and method.vit is method.backbone.model
    # every setting of the zoo config reaches the model
    assert method.mask_ratio == args.mask_ratio and method.temperature == args.temperature
    assert method.large_scale == tuple(args.large_scale) and method.crop_scale == tuple(args.crop_scale)
    assert method.consistency_weight == args.consistency_weight
    assert method.decoder_prediction_weight == args.decoder_prediction_weight > 0
    assert method.cross_decoder_predictor.net[0].out_features == args.decoder_predictor_dim
    assert method.norm_pix_loss == args.norm_pix_loss and method.gsd_encoding == args.gsd_encoding
    assert method.decoder.decoder_dim == args.decoder_dim == 32

    batch = next(iter(built.train_loader))
    views = method.make_views(batch)
    assert len(views) == 1 and views[0].shape == (32, 12, 16, 16)  # one view: the method makes the two scales
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(8):  # the same views and masks each step: the loss of a trainable model falls
        torch.manual_seed(0)
        loss, z, logs = method.ssl_loss(views, batch)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert z.shape == (32, method.embed_dim) == (32, 192)
            assert loss.item() == pytest.approx(
                (logs["loss_rec_1"] + logs["loss_rec_2"] + args.consistency_weight * logs["loss_consistency"]
                 + args.decoder_prediction_weight * logs["loss_cross_decoder"]).item(), rel=1e-5)
            untrained = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
            assert untrained == []  # encoder, decoder, both predictors all get gradients
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("gsd_encoding", [False, True])
def test_trains_and_checkpoint_evaluates_like_the_run(tiny_world, tiny_mim_config, gsd_encoding):
    from ssl_rs.evaluation.harness import evaluate

    cfg = tiny_mim_config(tiny_world, "crossscalemae", f"method.args.gsd_encoding={str(gsd_encoding).lower()}")
    result = pretrain(cfg)
    assert result["steps"] >= 2
    in_run = result["eval"]["random"]["metrics"]["knn"]
    backbone, saved = load_encoder(Path(result["run_dir"]) / "checkpoints" / "last.ckpt")
    assert backbone(torch.randn(2, backbone.in_chans, 16, 16)).shape == (2, 192)
    if gsd_encoding:  # the frozen native encoding travels with the checkpoint
        assert torch.allclose(backbone.model.pos_embed[0, 1:], sincos_pos_embed(192, 4), atol=1e-6)
    again = evaluate(backbone, tiny_world, bands=saved["data_bands"], size=saved["augmentation"]["size"],
                     progress=False)["metrics"]["knn"]
    assert again == pytest.approx(in_run)
