"""Masked image modelling (MAE, ScaleMAE, SatMAE): masks, masked-only losses, normalised targets, GSD-scaled
encodings, and a few training steps through Lightning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightly.models.utils import (
    get_1d_sine_cosine_positional_embedding_from_positions,
    get_2d_sine_cosine_positional_embedding,
    patchify,
)

from ssl_rs.backbones import create_backbone
from ssl_rs.data.bands import S2_BANDS
from ssl_rs.errors import ConfigError
from ssl_rs.methods.mae import MAE
from ssl_rs.methods.satmae import S2_GROUPS, SatMAE, group_token_errors, resolve_band_groups
from ssl_rs.methods.crops import random_square_crops
from ssl_rs.methods.losses import masked_patch_mse, normalize_patches
from ssl_rs.methods.scalemae import ScaleMAE, frequency_targets, reference_frequency_targets
from ssl_rs.methods.vit_utils import (
    encode_visible,
    num_masked,
    random_patch_mask,
    sincos_pos_embed,
)
from ssl_rs.checkpoint import load_encoder
from ssl_rs.train import pretrain


FIXTURES = Path(__file__).parent / "fixtures"


def vit(in_chans=3, img_size=16, patch_size=4):
    return create_backbone("vit_tiny", in_chans=in_chans, img_size=img_size, patch_size=patch_size, depth=2)


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

    method = ScaleMAE(vit(3), gsd=10.0, reference_gsd=20.0, base_resolution=1.0, **tiny_decoder()).eval()
    assert method.gsd_ratio(16, 16) == pytest.approx(0.5)  # whole tile at 10 m vs reference 20 m
    assert method.gsd_ratio(8, 16) == pytest.approx(0.25)  # half the tile resampled to 16 px: 5 m
    # the reference's --base_resolution 2.5 multiplies every scale (the default)
    assert ScaleMAE(vit(3), gsd=10.0, reference_gsd=20.0, **tiny_decoder()).gsd_ratio(8, 16) == pytest.approx(0.625)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = method.embed_tokens(images, torch.tensor([1.0, 1.0]))
        b = method.embed_tokens(images, torch.tensor([1.0, 0.5]))
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1], atol=1e-3)


def test_scalemae_refuses_views_cropped_elsewhere():
    from ssl_rs.registry import AUGMENTATIONS

    geometric = AUGMENTATIONS.create("geometric", size=16, mean=[0.0] * 3, std=[1.0] * 3, n_views=1)
    method = ScaleMAE(vit(3), augmentation=geometric, **tiny_decoder())
    with pytest.raises(ConfigError, match="augmentation.name: eval"):
        method.check_contract({"image", "lat", "lon"})


def test_scalemae_backbone_forward_uses_the_native_gsd_encoding():
    torch.manual_seed(0)
    backbone = vit(3)
    method = ScaleMAE(backbone, **tiny_decoder()).eval()
    assert not method.vit.pos_embed.requires_grad
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        native = torch.full((2,), method.native_ratio())  # base_resolution 2.5 x data GSD / reference GSD (1)
        encoded = encode_visible(method.vit, method.embed_tokens(images, native), torch.arange(16).expand(2, -1))
        assert torch.allclose(method.vit.forward_head(encoded, pre_logits=True), backbone(images), atol=1e-5)
    assert method.native_ratio() == pytest.approx(2.5)


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


def test_scalemae_defaults_are_the_reference_recipe():
    method = ScaleMAE(vit(3), **tiny_decoder())
    assert (method.norm_pix_loss, method.target_split, method.target_scale, method.high_pass_size,
            method.band_reduction, method.resample, method.base_resolution) == (
        False, "reference", 2, 7, "sum", "bicubic", 2.5)
    # low band at the input resolution (4 px per patch), high band at twice it (8 px per patch)
    assert method.low_head.out_features == 4 * 4 * 3 and method.high_head.out_features == 8 * 8 * 3
    r = ScaleMAE.recipe  # main_pretrain.py: AdamW, blr 1.5e-4, betas (0.9, 0.95), wd 0.05, 20 warm-up epochs
    assert (r.name, r.lr, r.betas, r.weight_decay, r.warmup_epochs) == ("adamw", 1.5e-4, (0.9, 0.95), 0.05, 20)
    legacy = ScaleMAE(vit(3), target_split="laplacian", target_scale=1, **tiny_decoder())
    assert legacy.low_head.out_features == 2 * 2 * 3 and legacy.high_head.out_features == 4 * 4 * 3
    for bad in (dict(target_split="dog"), dict(band_reduction="max"), dict(target_scale=0), dict(high_pass_size=1.5),
                dict(resample="nearest"), dict(base_resolution=0.0)):
        with pytest.raises(ConfigError):
            ScaleMAE(vit(3), **bad, **tiny_decoder())


def test_scalemae_input_is_the_target_at_half_resolution():
    torch.manual_seed(0)
    method = ScaleMAE(vit(3), **tiny_decoder())
    view = torch.randn(2, 3, 16, 16)
    images, target = method.crop_input_and_target(view, 8)
    assert images.shape == (2, 3, 16, 16) and target.shape == (2, 3, 32, 32)
    # the reference resizes its random resized crop (at the target size) to the input size: bilinear
    # halving without antialiasing, which is the 2 x 2 mean
    assert torch.allclose(images, F.avg_pool2d(target, 2), atol=1e-5)
    low, high = method.frequency_targets(target, 16)
    assert torch.allclose(low, images, atol=1e-5)  # so the low band is the input itself
    blurred = F.interpolate(F.adaptive_avg_pool2d(target, 7), size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(high, target - blurred, atol=1e-5)
    low2, high2 = reference_frequency_targets(target, 16, 2)
    assert torch.allclose(low2, low) and not torch.allclose(high2, high, atol=1e-3)
    # ssl-rs's earlier recipe: input = crop resized bilinearly, which is also the target
    legacy = ScaleMAE(vit(3), target_split="laplacian", target_scale=1, resample="bilinear", **tiny_decoder())
    torch.manual_seed(1)
    images, target = legacy.crop_input_and_target(view, 8)
    torch.manual_seed(1)
    expected = F.interpolate(random_square_crops(view, 8), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(images, expected) and target is images
    with torch.no_grad():
        keep, mask = random_patch_mask(2, 16, 0.75)
        loss, z, logs = method.eval().reconstruct(images, torch.ones(2), keep, mask)  # target made from the input
    assert torch.isfinite(loss) and z.shape == (2, 192) and set(logs) == {"loss_low", "loss_high"}
    with pytest.raises(ConfigError, match="2 x the input side"):
        method.reconstruct(images, torch.ones(2), keep, mask, target=images)


@pytest.mark.parametrize("case", ["default", "coarse_blur_5_bands"])
def test_scalemae_loss_matches_the_authors_forward_loss(case):
    """Targets, band split, masking and reduction against the authors' ``forward_loss``
    (fixtures/make_scalemae_reference.py)."""
    ref = torch.load(FIXTURES / "scalemae_reference.pt", weights_only=True)
    c, p, side = ref[case], ref["patch_size"], ref["input_size"]
    bands = c["targets"].shape[1]
    idx_mask = torch.stack([row.nonzero().flatten() for row in c["mask"]])

    def loss_and_grads(method, norm_pix=False):
        pred_low, pred_high = c["pred_low"].clone().requires_grad_(), c["pred_high"].clone().requires_grad_()
        low, high = method.frequency_targets(c["targets"], side)
        loss = (method.band_loss(patchify(pred_low, method.low_patch), low, method.low_patch, idx_mask, norm_pix)
                + method.band_loss(patchify(pred_high, method.high_patch), high, method.high_patch, idx_mask))
        loss.backward()
        return loss.detach(), pred_low.grad, pred_high.grad

    method = ScaleMAE(vit(bands, img_size=side, patch_size=p), high_pass_size=c["band_config"][0], **tiny_decoder())
    loss, grad_low, grad_high = loss_and_grads(method)
    assert float(loss) == pytest.approx(float(c["loss"]), rel=1e-5)
    assert torch.allclose(grad_low, c["grad_low"], rtol=1e-4, atol=1e-7)
    assert torch.allclose(grad_high, c["grad_high"], rtol=1e-4, atol=1e-7)
    # ssl-rs's earlier split (Laplacian), normalised low band and mean over bands are not the reference's
    legacy = ScaleMAE(vit(bands, img_size=side, patch_size=p), target_split="laplacian", band_reduction="mean",
                      norm_pix_loss=True, **tiny_decoder())
    assert float(loss_and_grads(legacy, norm_pix=True)[0]) != pytest.approx(float(c["loss"]), rel=1e-2)


@pytest.mark.parametrize("name", ["mae", "scalemae"])
def test_trains_a_few_steps_and_checkpoint_rebuilds_the_encoder(tiny_world, tiny_mim_config, name):
    cfg = tiny_mim_config(tiny_world, name)
    result = pretrain(cfg, evaluate_after=False)
    assert result["steps"] >= 2
    ckpt = Path(result["run_dir"]) / "checkpoints" / "last.ckpt"
    backbone, _ = load_encoder(ckpt)
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
    encoder = SatMAE.inference_encoder(plain, ckpt["ssl_rs_config"]["method"]["args"], ckpt["ssl_rs_bands"])
    prefix = "backbone."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    assert encoder.eval()(torch.randn(2, len(ckpt["ssl_rs_bands"]), 16, 16)).shape == (2, 192)


def test_satmae_temporal_views_share_one_crop_and_tokens_cover_both_dates():
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
    with pytest.raises(ConfigError, match="needs 'image_positive': set data.temporal_positives=true"):
        method.check_contract({"image", "lat", "lon", "group"})
    method.check_contract({"image", "lat", "lon", "group", "image_positive"})


def test_satmae_temporal_trains_on_two_dates(tmp_path, tiny_mim_config):
    from ssl_rs.data.synth import synthesize

    world = tmp_path / "dates.h5"
    synthesize(world, n=96, size=16, seed=2, dates=2, num_classes=4, progress=False)
    cfg = tiny_mim_config(world, "satmae")
    cfg.method.args.temporal = True
    cfg.data.temporal_positives = True
    assert pretrain(cfg, evaluate_after=False)["steps"] >= 2


def satmae_loss_from_reference_layout(case, patch_size, **options):
    """ssl-rs's loss and its gradient for the authors' predictions (B, C, L, p^2), bands in the
    order of the concatenated groups, and mask (B, G, L)."""
    groups, (b, _, n, _) = case["groups"], case["pred"].shape
    pred = case["pred"].clone().requires_grad_()
    preds, start = [], 0
    for g in groups:  # each head's output laid out as lightly's patchify: (row, column, band)
        preds.append(pred[:, start:start + len(g)].permute(0, 2, 3, 1).reshape(b, n, -1))
        start += len(g)
    idx_mask = torch.stack([row.nonzero().flatten() for row in case["mask"].flatten(1)])
    errors = group_token_errors(preds, case["images"], groups, patch_size, norm_pix=case["norm_pix"], **options)
    loss = errors.gather(1, idx_mask).mean()
    loss.backward()
    return loss.detach(), pred.grad


@pytest.mark.parametrize("case", ["pix_ordered", "norm_pix_ordered", "pix_s2", "norm_pix_s2"])
def test_satmae_loss_matches_the_authors_forward_loss(case):
    """Against the authors' ``forward_loss`` (fixtures/make_satmae_reference.py): the per-patch
    normalisation over all bands of a spatial patch, and their pairing of the concatenated
    group heads with the bands in data order (``target_band_order: input``)."""
    ref = torch.load(FIXTURES / "satmae_reference.pt", weights_only=True)
    c, p = ref[case], ref["patch_size"]
    loss, grad = satmae_loss_from_reference_layout(c, p, norm_pix_scope="patch", target_band_order="input")
    assert float(loss) == pytest.approx(float(c["loss"]), rel=1e-5)
    assert torch.allclose(grad, c["grad"], rtol=1e-4, atol=1e-7)
    default, _ = satmae_loss_from_reference_layout(c, p)  # target_band_order: group
    if case.endswith("ordered"):  # groups listing the bands in data order: the two pairings agree
        assert float(default) == pytest.approx(float(c["loss"]), rel=1e-5)
    else:  # the Sentinel-2 groups: the reference scores some heads against other groups' bands
        assert float(default) != pytest.approx(float(c["loss"]), rel=1e-3)
    if c["norm_pix"]:  # ssl-rs's earlier per-(group, patch) normalisation is not the reference's
        grouped, _ = satmae_loss_from_reference_layout(c, p, norm_pix_scope="group", target_band_order="input")
        assert float(grouped) != pytest.approx(float(c["loss"]), rel=1e-3)


def test_satmae_norm_pix_scopes():
    torch.manual_seed(0)
    groups = [[0, 1], [2, 3, 4]]
    target = torch.randn(2, 5, 8, 8)
    preds = [torch.randn(2, 16, 4 * 2), torch.randn(2, 16, 4 * 3)]

    def errors(image, scope):
        return group_token_errors(preds, image, groups, 2, norm_pix=True, norm_pix_scope=scope)

    joint = target * 3.0 + 1.0  # one affine change of all bands: neither scope sees it
    one_group = target.clone()
    one_group[:, 2:] = one_group[:, 2:] * 5.0 - 2.0  # only the second group's bands change
    for scope in ("patch", "group"):
        assert torch.allclose(errors(joint, scope), errors(target, scope), atol=1e-4)
    assert torch.allclose(errors(one_group, "group"), errors(target, "group"), atol=1e-4)
    assert not torch.allclose(errors(one_group, "patch"), errors(target, "patch"), atol=1e-2)
    with pytest.raises(ConfigError, match="norm_pix_scope"):
        errors(target, "band")
    # through the method: with norm_pix_loss on, an affine change of one group's bands at a masked
    # patch changes the loss (the reference standardises each spatial patch over all its bands)
    bands = ["B02", "B03", "B11", "B12", "B05"]
    torch.manual_seed(0)
    for scope, unchanged in (("patch", False), ("group", True)):
        options = {} if scope == "patch" else {"norm_pix_scope": scope}  # "patch" is the default
        method = SatMAE(vit(5), band_groups=[bands[:2], bands[2:]], masking="consistent", norm_pix_loss=True,
                        bands=bands, **options, **tiny_decoder()).eval()
        images = torch.randn(2, 5, 16, 16)
        keep, mask = method.mask(2, 16)
        changed = images.clone()
        row, col = divmod(int(mask[0, 0]), 4)  # a patch masked in both groups of sample 0
        changed[0, 2:, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] *= 3.0
        with torch.no_grad():
            a = method.reconstruct(images, keep, mask)[0]
            b = method.reconstruct(images, keep, mask, target=changed)[0]
        assert (float(a) == pytest.approx(float(b), rel=1e-5)) is unchanged


def test_satmae_defaults_and_fixed_encodings_are_the_authors():
    """Defaults follow the reference: raw targets, per-spatial-patch normalisation when on, and
    the fixed sine-cosine position and group codes in separate channel slices (compared with
    the authors' ``util/pos_embed.py`` output in the fixture)."""
    enc = torch.load(FIXTURES / "satmae_reference.pt", weights_only=True)["encodings"]
    bands = ["B02", "B03", "B04", "B08", "B11", "B12", "B05"]
    method = SatMAE(vit(7), band_groups=[bands[:4], bands[4:6], bands[6:]], bands=bands, **tiny_decoder()).eval()
    assert (method.norm_pix_loss, method.norm_pix_scope, method.encoding, method.target_band_order) == (
        False, "patch", "sincos", "group")
    r = SatMAE.recipe  # the multi-spectral pretraining command: blr 1e-4, 20 warm-up epochs (of 200)
    assert (r.name, r.lr, r.betas, r.weight_decay, r.warmup_epochs) == ("adamw", 1e-4, (0.9, 0.95), 0.05, 20)
    d, gd, dd, dgd = enc["embed_dim"], enc["group_dim"], enc["decoder_dim"], enc["decoder_group_dim"]
    encoder, plain = method.backbone, method.backbone.vit
    position = F.pad(enc["pos_embed"], (0, gd))  # (1 + N, D): zero CLS row, zeros in the group slice
    assert torch.allclose(plain.pos_embed[0], position, atol=1e-6) and not plain.pos_embed.requires_grad
    group = F.pad(enc["channel_embed"], (d - gd, 0))
    assert torch.allclose(encoder.group_embed, group, atol=1e-6) and not encoder.group_embed.requires_grad
    images = torch.randn(2, 7, 16, 16)
    with torch.no_grad():
        tokens = encoder.tokens(images)
        second = encoder.patch_embeds[1](images[:, 4:6]).flatten(2).transpose(1, 2)
    assert torch.allclose(tokens[:, 1 + 16:1 + 32], second + position[1:] + group[1], atol=1e-5)
    assert torch.allclose(tokens[:, 0], plain.cls_token[0].expand(2, -1))  # CLS: no position code
    decoder_pos = method.decoder_encoding(4).view(3, 16, dd)
    for g in range(3):
        expected = torch.cat([enc["decoder_pos_embed"][1:], enc["decoder_channel_embed"][g].expand(16, dgd)], dim=1)
        assert torch.allclose(decoder_pos[g], expected, atol=1e-6)
    # 1-D code as MAE's (lightly's copy) too
    lightly_1d = get_1d_sine_cosine_positional_embedding_from_positions(gd, torch.arange(3).numpy())
    assert torch.allclose(encoder.group_embed[:, d - gd:], torch.as_tensor(lightly_1d).float(), atol=1e-6)
    # ssl-rs's earlier encodings: learned ones
    learned = SatMAE(vit(7), band_groups=[bands[:4], bands[4:6], bands[6:]], bands=bands, encoding="learned",
                     **tiny_decoder())
    assert learned.backbone.vit.pos_embed.requires_grad and learned.backbone.group_embed.requires_grad
    assert learned.decoder_group_embed.requires_grad
    with pytest.raises(ConfigError, match="group_encoding_dim"):
        SatMAE(vit(7), band_groups=[bands[:4], bands[4:]], bands=bands, group_encoding_dim=190, **tiny_decoder())
    with pytest.raises(ConfigError, match="encoding"):
        SatMAE(vit(7), band_groups=[bands[:4], bands[4:]], bands=bands, encoding="rope", **tiny_decoder())
