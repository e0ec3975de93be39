"""Masked image modelling (MAE, ScaleMAE, SatMAE): masks, masked-only losses, normalised targets, GSD-scaled
encodings, and a few training steps through Lightning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightly.models.utils import get_2d_sine_cosine_positional_embedding, patchify

from ssl_rs.backbones import create_backbone
from ssl_rs.data.bands import S2_BANDS
from ssl_rs.errors import ConfigError
from ssl_rs.methods.mae import MAE
from ssl_rs.methods.satmae import S2_GROUPS, SatMAE, resolve_band_groups
from ssl_rs.methods.scalemae import ScaleMAE, frequency_targets, random_square_crops
from ssl_rs.methods.vit_utils import (
    encode_visible,
    masked_patch_mse,
    normalize_patches,
    num_masked,
    random_patch_mask,
    sincos_pos_embed,
)
from ssl_rs.train import load_backbone_from_checkpoint, pretrain


def vit(in_chans=3):
    return create_backbone("vit_tiny", in_chans=in_chans, img_size=16, patch_size=4, depth=2)


def tiny_decoder():
    return dict(decoder_dim=32, decoder_depth=1, decoder_heads=2)


@pytest.mark.parametrize("n, ratio, masked", [(16, 0.75, 12), (16, 0.5, 8), (49, 0.75, 37), (4, 0.9, 3), (4, 0.05, 1)])
def test_mask_covers_the_stated_ratio_exactly(n, ratio, masked):
    assert num_masked(n, ratio) == masked
    keep, mask = random_patch_mask(5, n, ratio)
    assert mask.shape == (5, masked) and keep.shape == (5, n - masked)
    for k, m in zip(keep, mask):  # every patch is either kept or masked, never both
        assert sorted(torch.cat([k, m]).tolist()) == list(range(n))


def test_loss_counts_masked_patches_only():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    idx_mask = torch.tensor([[0, 3], [5, 1]])
    base = masked_patch_mse(pred, target, idx_mask)
    expected = torch.stack([((pred[b, i] - target[b, i]) ** 2).mean() for b in range(2) for i in idx_mask[b]]).mean()
    assert base == pytest.approx(float(expected), rel=1e-6)
    visible = target.clone()
    visible[0, 1] += 5.0
    visible[1, 4] -= 3.0
    assert masked_patch_mse(pred, visible, idx_mask) == pytest.approx(float(base), rel=1e-6)
    masked = target.clone()
    masked[1, 5] += 1.0
    assert masked_patch_mse(pred, masked, idx_mask) != pytest.approx(float(base), rel=1e-3)


def test_normalised_pixel_targets():
    torch.manual_seed(0)
    patches = torch.randn(2, 5, 48) * 3 + 7
    normed = normalize_patches(patches)
    assert torch.allclose(normed.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(normed.std(-1), torch.ones(2, 5), atol=1e-4)  # unbiased, as the MAE code
    pred, idx_mask = torch.randn(2, 5, 48), torch.tensor([[1, 2], [0, 4]])
    scale = torch.rand(2, 5, 1) + 0.5  # a per-patch affine change of the target leaves the loss unchanged
    a = masked_patch_mse(pred, patches, idx_mask, norm_pix=True)
    b = masked_patch_mse(pred, patches * scale - 4.0, idx_mask, norm_pix=True)
    assert a == pytest.approx(float(b), rel=1e-4)


def test_mae_reconstructs_only_masked_patches_of_the_target():
    torch.manual_seed(0)
    method = MAE(vit(5), mask_ratio=0.75, norm_pix_loss=False, **tiny_decoder()).eval()
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
    # the patch layout of the target matches lightly's patchify: (row, column, band) per patch
    assert patchify(images, 4).shape == (2, 16, 4 * 4 * 5)


def test_mae_encoder_is_the_backbone_and_sees_only_visible_tokens():
    torch.manual_seed(0)
    backbone = vit(4)
    method = MAE(backbone, **tiny_decoder()).eval()
    images = torch.randn(2, 4, 16, 16)
    everything = torch.arange(16).expand(2, -1)
    tokens = method.vit._pos_embed(method.vit.patch_embed(images))
    with torch.no_grad():
        full = method.vit.forward_head(encode_visible(method.vit, tokens, everything), pre_logits=True)
        assert torch.allclose(full, backbone(images), atol=1e-5)  # no masking = the harness features
        assert encode_visible(method.vit, tokens, everything[:, :4]).shape == (2, 1 + 4, 192)
    assert not any(name.startswith("vit.") for name, _ in method.named_parameters())


def test_mim_methods_need_a_vit():
    with pytest.raises(ConfigError, match="ViT backbone"):
        MAE(create_backbone("tiny_cnn", in_chans=3, width=8))
    for ratio in (0.0, 1.0):
        with pytest.raises(ConfigError, match="mask_ratio"):
            MAE(vit(), mask_ratio=ratio)


def test_scalemae_encoding_changes_with_gsd():
    ours = sincos_pos_embed(64, 4)
    lightly_mae = torch.as_tensor(get_2d_sine_cosine_positional_embedding(64, 4, cls_token=False)).float()
    assert torch.allclose(ours, lightly_mae, atol=1e-6)
    doubled = sincos_pos_embed(64, 4, 2.0)
    assert not torch.allclose(doubled, ours, atol=1e-3)
    # scaling positions by 2 = the unscaled encoding at the even positions of an 8 x 8 grid
    even = sincos_pos_embed(64, 8).reshape(8, 8, 64)[::2, ::2].reshape(16, 64)
    assert torch.allclose(doubled, even, atol=1e-5)
    batched = sincos_pos_embed(64, 4, torch.tensor([1.0, 2.0]))
    assert torch.allclose(batched[0], ours, atol=1e-6) and torch.allclose(batched[1], doubled, atol=1e-6)

    method = ScaleMAE(vit(3), gsd=10.0, reference_gsd=20.0, **tiny_decoder()).eval()
    assert method.gsd_ratio(16, 16) == pytest.approx(0.5)  # whole tile at 10 m vs reference 20 m
    assert method.gsd_ratio(8, 16) == pytest.approx(0.25)  # half the tile resampled to 16 px: 5 m
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = method.embed_tokens(images, torch.tensor([1.0, 1.0]))
        b = method.embed_tokens(images, torch.tensor([1.0, 0.5]))
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1], atol=1e-3)


def test_scalemae_refuses_views_cropped_elsewhere():
    import ssl_rs.augmentations  # noqa: F401  (fills the registry)
    from ssl_rs.registry import AUGMENTATIONS

    geometric = AUGMENTATIONS.create("geometric", size=16, mean=[0.0] * 3, std=[1.0] * 3, n_views=1)
    with pytest.raises(ConfigError, match="augmentation.name: eval"):
        ScaleMAE(vit(3), augmentation=geometric, **tiny_decoder())


def test_scalemae_backbone_forward_uses_the_native_gsd_encoding():
    torch.manual_seed(0)
    backbone = vit(3)
    method = ScaleMAE(backbone, **tiny_decoder()).eval()
    assert not method.vit.pos_embed.requires_grad
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        encoded = encode_visible(method.vit, method.embed_tokens(images, torch.ones(2)), torch.arange(16).expand(2, -1))
        assert torch.allclose(method.vit.forward_head(encoded, pre_logits=True), backbone(images), atol=1e-5)


def test_scalemae_targets_and_crops():
    images = torch.randn(2, 3, 16, 16)
    low, high = frequency_targets(images)
    assert low.shape == (2, 3, 8, 8) and high.shape == images.shape
    up = torch.nn.functional.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(up + high, images, atol=1e-6)
    crops = random_square_crops(torch.arange(2 * 16 * 16.0).reshape(2, 1, 16, 16), 4)
    assert crops.shape == (2, 1, 4, 4)
    assert torch.all(crops[:, :, :, 1:] - crops[:, :, :, :-1] == 1)  # contiguous rows of the source
    assert torch.all(crops[:, :, 1:] - crops[:, :, :-1] == 16)


@pytest.mark.parametrize("name", ["mae", "scalemae"])
def test_trains_a_few_steps_and_checkpoint_rebuilds_the_encoder(tiny_world, tiny_mim_config, name):
    cfg = tiny_mim_config(tiny_world, name)
    result = pretrain(cfg, evaluate_after=False)
    assert result["steps"] >= 2
    ckpt = Path(result["run_dir"]) / "checkpoints" / "last.ckpt"
    backbone, _ = load_backbone_from_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(backbone.model.pos_embed, state["backbone.model.pos_embed"])
    assert backbone(torch.randn(2, backbone.in_chans, 16, 16)).shape == (2, 192)


# -- SatMAE ------------------------------------------------------------------------------


def test_satmae_groups_cover_every_band_exactly_once_by_name():
    bands = ["B8A", "B01", "B2", "B03", "b04", "B05", "B06", "B07", "B08", "B09", "B11", "B12"]  # any order, spelling
    groups = resolve_band_groups(S2_GROUPS, bands)
    assert [[bands[i] for i in g] for g in groups[:3]] == [
        ["B2", "B03", "b04", "B08"], ["B05", "B06", "B07", "B8A"], ["B11", "B12"]]
    assert [bands[i] for i in groups[3]] == ["B01", "B09"]  # the bands of no group form one more
    assert sorted(i for g in groups for i in g) == list(range(len(bands)))
    dropped = resolve_band_groups(S2_GROUPS, S2_BANDS, extra_bands="drop")
    assert sorted(S2_BANDS[i] for g in dropped for i in g) == sorted(b for g in S2_GROUPS for b in g)
    with pytest.raises(ConfigError, match="more than one group"):
        resolve_band_groups([["B02", "B03"], ["B3"]], S2_BANDS)
    with pytest.raises(ConfigError, match="band B05 is not in"):
        resolve_band_groups(S2_GROUPS, ["B02", "B03", "B04", "B08"])
    assert resolve_band_groups([[0, 2], [1]], ["red", "green", "blue"]) == [[0, 2], [1]]


def satmae(masking="independent", bands=("B02", "B03", "B04", "B08", "B11", "B12")):
    return SatMAE(vit(len(bands)), band_groups=[["B02", "B03", "B04", "B08"], ["B11", "B12"]], masking=masking,
                  norm_pix_loss=False, bands=list(bands), **tiny_decoder()).eval()


@pytest.mark.parametrize("masking", ["independent", "consistent"])
def test_satmae_masking_over_group_tokens(masking):
    method = satmae(masking)
    keep, mask = method.mask(3, 16)
    assert mask.shape[1] == method.num_masked_tokens(16) == (24 if masking == "independent" else 2 * 12)
    for k, m in zip(keep, mask):
        assert sorted(torch.cat([k, m]).tolist()) == list(range(32))
        if masking == "consistent":  # the same patches are masked in both groups
            assert set((m[m < 16]).tolist()) == set((m[m >= 16] - 16).tolist())


def test_satmae_group_embeddings_see_only_their_bands_and_loss_only_masked_tokens():
    torch.manual_seed(0)
    method = satmae()
    images = torch.randn(2, 6, 16, 16)
    changed = images.clone()
    changed[:, 4] += 1.0  # B11: second group only
    with torch.no_grad():
        a, b = method.backbone.tokens(images), method.backbone.tokens(changed)
    assert torch.equal(a[:, : 1 + 16], b[:, : 1 + 16]) and not torch.allclose(a[:, 17:], b[:, 17:])
    keep, mask = method.mask(2, 16)
    with torch.no_grad():
        base, z = method.reconstruct(images, keep, mask)

        def with_target_changed_at(token):  # token g * 16 + n: patch n of group g, in sample 0
            group, patch = divmod(int(token), 16)
            target = images.clone()
            row, col = divmod(patch, 4)
            band = 0 if group == 0 else 4
            target[0, band, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 1.0
            return method.reconstruct(images, keep, mask, target=target)[0]

        assert with_target_changed_at(keep[0, 0]) == pytest.approx(float(base), rel=1e-6)
        assert with_target_changed_at(mask[0, 0]) > base
    assert z.shape == (2, 192)


def test_satmae_trains_and_checkpoint_encoder_rebuilds(tiny_world, tiny_mim_config):
    cfg = tiny_mim_config(tiny_world, "satmae")
    cfg.method.args.masking = "consistent"
    result = pretrain(cfg, evaluate_after=False)
    assert result["steps"] >= 2
    ckpt = torch.load(Path(result["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    plain = create_backbone("vit_tiny", in_chans=len(ckpt["ssl_rs_bands"]), **ckpt["ssl_rs_config"]["backbone"]["args"])
    encoder = SatMAE.checkpoint_encoder(plain, ckpt["ssl_rs_config"]["method"]["args"], ckpt["ssl_rs_bands"])
    prefix = "backbone."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    assert encoder.eval()(torch.randn(2, len(ckpt["ssl_rs_bands"]), 16, 16)).shape == (2, 192)


def test_satmae_temporal_views_share_one_crop_and_tokens_cover_both_dates():
    import ssl_rs.augmentations  # noqa: F401  (fills the registry)
    from ssl_rs.registry import AUGMENTATIONS

    torch.manual_seed(0)
    geometric = AUGMENTATIONS.create("geometric", size=16, mean=[0.0] * 6, std=[1.0] * 6, n_views=1)
    bands = ["B02", "B03", "B04", "B08", "B11", "B12"]
    method = SatMAE(vit(6), band_groups=[bands[:4], bands[4:]], temporal=True, norm_pix_loss=False,
                    augmentation=geometric, bands=bands, **tiny_decoder()).eval()
    image = torch.rand(2, 6, 16, 16)
    later = image.clone()
    later[:, :3] += 7  # the second date differs only by a constant in the visible bands
    first, second = method.make_views({"image": image, "image_positive": later})
    assert torch.allclose(second[:, :3] - first[:, :3], torch.full_like(first[:, :3], 7.0), atol=1e-3)
    assert torch.allclose(second[:, 3:], first[:, 3:])
    keep, mask = method.mask(2, 16)
    assert keep.shape[1] + mask.shape[1] == 2 * 2 * 16 and mask.shape[1] == method.num_masked_tokens(16) == 48
    with torch.no_grad():
        base, z = method.reconstruct([first, second], keep, mask)

        def loss_with_date2_changed_at(tokens):  # tokens 32..47: date 2, first group (band 0)
            row, col = divmod(next(t for t in tokens.tolist() if 32 <= t < 48) - 32, 4)
            target = [first, second.clone()]
            target[1][0, 0, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 1.0
            return method.reconstruct([first, second], keep, mask, target=target)[0]

        assert loss_with_date2_changed_at(keep[0]) == pytest.approx(float(base), rel=1e-6)
        assert loss_with_date2_changed_at(mask[0]) != pytest.approx(float(base), rel=1e-3)
    assert z.shape == (2, 192)
    with pytest.raises(ConfigError, match="temporal_positives"):
        method.make_views({"image": image})


def test_satmae_temporal_trains_on_two_dates(tmp_path, tiny_mim_config):
    from ssl_rs.data.synth import synthesize

    world = tmp_path / "dates.h5"
    synthesize(world, n=96, size=16, seed=2, dates=2, num_classes=4, progress=False)
    cfg = tiny_mim_config(world, "satmae")
    cfg.method.args.temporal = True
    cfg.data.temporal_positives = True
    assert pretrain(cfg, evaluate_after=False)["steps"] >= 2
