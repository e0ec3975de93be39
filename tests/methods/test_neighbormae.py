"""NeighborMAE: the authors' numbers, pair geometry, overlap-adapted masks, the weighted loss on
masked pixels only, the joint encoder's attention mask, and the backbone it leaves behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightly.models.utils import unpatchify

from ssl_rs.augmentations import eval_views, geometric
from ssl_rs.backbones import create_backbone
from ssl_rs.errors import ConfigError
from ssl_rs.methods.neighbormae import (
    POS_EXTENT,
    NeighborMAE,
    box_sincos,
    crop_resize,
    frame_boxes,
    neighbor_weighted_loss,
    normalize_frame,
    pair_iou,
    pair_masks,
    patch_boxes,
    warp_partner,
)

REFERENCE = torch.load(Path(__file__).with_name("fixtures") / "neighbormae_reference.pt", weights_only=True)
CASES = ["pix", "norm_pix"]


def tiny_method(**kwargs) -> NeighborMAE:
    backbone = create_backbone("vit_tiny", in_chans=3, img_size=16, patch_size=4, depth=2)
    aug = eval_views(size=16, mean=[0.0] * 3, std=[1.0] * 3, n_views=1)
    args = dict(decoder_dim=32, decoder_depth=1, decoder_heads=2, weight_kernel=3)
    return NeighborMAE(backbone, augmentation=aug, **{**args, **kwargs})


def authors_masks(case):
    """Their masks, from their noise and their ``len_keep = round((1 - ratio) N)``."""
    n = (REFERENCE["img_size"] // REFERENCE["patch_size"]) ** 2
    len_keep = ((1 - (0.75 + case["miou"] * 0.10)) * n).round().long()
    restore = case["noise"].argsort(-1).argsort(-1)
    return torch.gather(torch.arange(n) < len_keep[..., None], 2, restore), restore


# -- against the authors' code (tests/methods/fixtures/README.md) ---------------------------
@pytest.mark.parametrize("name", CASES)
def test_position_encodings_iou_and_warp_match_the_authors(name):
    case, grid = REFERENCE[name], REFERENCE["img_size"] // REFERENCE["patch_size"]
    boxes = patch_boxes(case["pos"], grid)
    assert torch.allclose(box_sincos(boxes, case["embed_dim"]), case["encoder_pos"], atol=1e-5)
    assert torch.allclose(box_sincos(boxes, case["decoder_dim"]), case["decoder_pos"], atol=1e-5)
    assert torch.allclose(pair_iou(case["pos"]), case["miou"][:, 0], atol=1e-6)
    assert torch.allclose(case["miou"][:, 0], case["miou"][:, 1])  # symmetric: one ratio per pair
    assert torch.allclose(warp_partner(case["images"], case["pos"]), case["warped"], atol=1e-4)
    mask = warp_partner(case["warp_mask_input"].float(), case["pos"], mode="nearest") > 0.5
    assert torch.equal(mask, case["warped_mask"])


@pytest.mark.parametrize("name", CASES)
def test_weighted_and_plain_loss_equal_the_authors(name):
    case, p, s = REFERENCE[name], REFERENCE["patch_size"], REFERENCE["img_size"]
    visible, restore = authors_masks(case)
    pred = case["decoder_pred"]
    pred = torch.gather(pred, 2, restore[..., None].expand(-1, -1, -1, pred.shape[-1]))  # back in image order
    b = pred.shape[0]
    pred = unpatchify(pred.flatten(0, 1), p, REFERENCE["in_chans"]).view(b, 2, -1, s, s)
    terms = neighbor_weighted_loss(pred, case["images"], case["pos"], visible, p, case["norm_pix"], weight_kernel=9)
    assert float(terms["loss"]) == pytest.approx(float(case["weighted_loss"]), rel=1e-5)
    assert float(terms["loss_masked"]) == pytest.approx(float(case["loss"]), rel=1e-5)
    assert float(terms["loss"]) < float(terms["loss_masked"])  # the neighbour lowered some weights


def test_mask_counts_follow_the_authors_rounding_from_their_iou():
    case = REFERENCE["norm_pix"]
    visible, _ = authors_masks(case)
    _, _, ours = pair_masks(case["miou"][:, 0], 16, 0.75, 0.85)
    assert torch.equal(ours.sum(-1), visible.sum(-1))


# -- geometry ------------------------------------------------------------------------------
def test_frame_of_side_by_side_and_identical_pairs():
    full = torch.tensor([0.0, 0.0, 1.0, 1.0])
    crops = full.expand(2, 2, 4)
    boxes = frame_boxes(crops, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert boxes[0].tolist() == [[0, 1, 1, 0], [1, 1, 2, 0]]  # east neighbour: x shifted by one side
    frame = normalize_frame(boxes)
    half = POS_EXTENT / 2
    assert frame[0].tolist() == [[0, POS_EXTENT, half, 0], [half, POS_EXTENT, POS_EXTENT, 0]]
    assert frame[1].tolist() == [[0, POS_EXTENT, POS_EXTENT, 0]] * 2  # one full image = the downstream box
    assert pair_iou(frame).tolist() == [0.0, 1.0]
    north = frame_boxes(torch.tensor([[[0.0, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 0.5]]]), torch.tensor([[0.0, 0.5]]))
    # the anchor's bottom half and the northern neighbour's top half: 0.5 apart, no overlap
    assert north[0].tolist() == [[0, 0.5, 1, 0], [0, 1.5, 1, 1.0]]


def test_patch_boxes_tile_their_box_row_major_from_the_north_west():
    boxes = patch_boxes(torch.tensor([0.0, 32.0, 32.0, 0.0]), 4)
    assert boxes.shape == (16, 4)
    assert boxes[0].tolist() == [0, 32, 8, 24] and boxes[1].tolist() == [8, 32, 16, 24]
    assert boxes[4].tolist() == [0, 24, 8, 16] and boxes[15].tolist() == [24, 8, 32, 0]


def test_crop_resize_copies_pixel_aligned_crops():
    image = torch.arange(64.0).view(1, 1, 8, 8)
    assert torch.allclose(crop_resize(image, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 8), image)
    crop = crop_resize(image, torch.tensor([[0.5, 0.25, 1.0, 0.75]]), 4)
    assert torch.allclose(crop, image[..., 2:6, 4:8], atol=1e-5)


@pytest.mark.parametrize("offset, anchor_cols, anchor_rows, partner_cols, partner_rows", [
    ((0.5, 0.0), slice(8, 16), slice(0, 16), slice(0, 8), slice(0, 16)),  # neighbour half a side east
    ((0.0, 0.5), slice(0, 16), slice(0, 8), slice(0, 16), slice(8, 16)),  # half a side north
])
def test_warped_neighbour_shows_the_shared_ground_at_the_right_pixels(offset, anchor_cols, anchor_rows,
                                                                      partner_cols, partner_rows):
    scene = torch.randn(1, 2, 32, 32)
    dx, dy = int(offset[0] * 16), int(offset[1] * 16)
    anchor = scene[..., 16:32, 0:16]
    neighbour = scene[..., 16 - dy:32 - dy, dx:16 + dx]  # north = up = smaller rows
    views = torch.stack([anchor, neighbour], dim=1)
    boxes = normalize_frame(frame_boxes(torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(1, 2, 4), torch.tensor([offset])))
    warped = warp_partner(views, boxes)
    assert torch.allclose(warped[0, 0, :, anchor_rows, anchor_cols], neighbour[0, :, partner_rows, partner_cols],
                          atol=1e-5)
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[anchor_rows, anchor_cols] = False
    assert torch.all(warped[0, 0, :, outside] == 0)  # beyond the neighbour: nothing


# -- masks -----------------------------------------------------------------------------------
def test_mask_ratio_moves_from_min_to_max_with_the_overlap():
    torch.manual_seed(0)
    iou = torch.tensor([0.0, 0.5, 1.0])
    idx_keep, keep_valid, visible = pair_masks(iou, 100, 0.75, 0.85)
    assert idx_keep.shape == (3, 2, 25)  # room for the most kept, at the minimum ratio
    assert visible.sum(-1).tolist() == [[25, 25], [20, 20], [15, 15]]
    assert keep_valid.sum(-1).tolist() == visible.sum(-1).tolist()
    assert torch.all(keep_valid[..., :-1] >= keep_valid[..., 1:])  # valid ones first
    for b in range(3):
        for k in range(2):
            assert len(set(idx_keep[b, k].tolist())) == 25
            assert set(idx_keep[b, k][keep_valid[b, k]].tolist()) == set(visible[b, k].nonzero()[:, 0].tolist())
    assert not torch.equal(visible[:, 0], visible[:, 1])  # each image its own random mask
    _, _, extreme = pair_masks(torch.tensor([1.0]), 4, 0.9, 0.99)
    assert extreme.sum().item() == 2  # at least one patch kept per image


# -- loss --------------------------------------------------------------------------------------
def test_loss_only_on_masked_pixels_and_lowered_where_the_neighbour_shows_them():
    torch.manual_seed(0)
    views = torch.randn(1, 2, 1, 8, 8)
    views[:, 1] = views[:, 0]  # same ground, same crop: the neighbour shows every pixel it keeps
    boxes = torch.tensor([[[0.0, 32, 32, 0], [0.0, 32, 32, 0]]])
    visible = torch.zeros(1, 2, 4, dtype=torch.bool)
    visible[0, 0, 0] = True  # anchor keeps its top-left patch
    visible[0, 1, 1] = True  # neighbour keeps its top-right patch
    pred = torch.randn(1, 2, 1, 8, 8, requires_grad=True)
    terms = neighbor_weighted_loss(pred, views, boxes, visible, 4, norm_pix=False, weight_kernel=1)
    terms["loss"].backward()
    grad = pred.grad[0, :, 0]
    assert torch.all(grad[0, :4, :4] == 0) and torch.all(grad[1, :4, 4:] == 0)  # visible: no loss
    # masked, but the other image shows them: weight 0
    assert torch.all(grad[0, :4, 4:] == 0) and torch.all(grad[1, :4, :4] == 0)
    assert torch.all(grad[:, 4:] != 0)  # masked and shown by neither: weight 1
    error = (pred.detach() - views).pow(2)[0, :, 0]
    masked_sum = error.sum() - error[0, :4, :4].sum() - error[1, :4, 4:].sum()
    assert float(terms["loss_masked"].detach()) == pytest.approx(float(masked_sum / 96))
    assert float(terms["loss"].detach()) == pytest.approx(float(error[:, 4:].sum() / 96))
    assert float(terms["weight"]) == pytest.approx(64 / 96)


# -- the method ----------------------------------------------------------------------------------
def test_hidden_tokens_do_not_reach_the_visible_ones():
    torch.manual_seed(0)
    method = tiny_method().eval()
    views = torch.randn(2, 2, 3, 16, 16)
    boxes = normalize_frame(frame_boxes(torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(2, 2, 4), torch.zeros(2, 2)))
    idx_keep, keep_valid, _ = pair_masks(torch.tensor([0.0, 1.0]), 16, 0.75, 0.85)
    hidden_patch = int(idx_keep[1, 0, -1])  # pair 1 is at the max ratio: its last kept index is hidden
    assert not keep_valid[1, 0, -1]
    changed = views.clone()
    row, col = divmod(hidden_patch, 4)
    changed[1, 0, :, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 5.0
    with torch.no_grad():
        a = method.encode_pair(views, patch_boxes(boxes, 4), idx_keep, keep_valid)
        b = method.encode_pair(changed, patch_boxes(boxes, 4), idx_keep, keep_valid)
    valid = torch.cat([torch.ones(2, 1, dtype=torch.bool), keep_valid.flatten(1)], dim=1)
    assert torch.allclose(a[valid], b[valid], atol=1e-5)


def test_backbone_keeps_the_single_image_encoding_after_steps():
    torch.manual_seed(0)
    method = tiny_method()
    vit = method.vit
    assert not vit.pos_embed.requires_grad
    with torch.no_grad():
        method.img_embed.add_(1.0)  # as an optimiser step would change it
    method.on_train_batch_end(None, None, 0)
    images = torch.randn(2, 3, 16, 16)
    full = torch.tensor([0.0, POS_EXTENT, POS_EXTENT, 0.0])
    with torch.no_grad():
        tokens = vit.patch_embed(images).flatten(1, 2) + box_sincos(patch_boxes(full, 4), 192) + method.img_embed[0]
        x = vit.norm(vit.blocks(torch.cat([vit.cls_token.expand(2, -1, -1), tokens], dim=1)))
        assert torch.allclose(vit.forward_head(x, pre_logits=True), method.backbone(images), atol=1e-5)


def test_a_step_from_a_batch_logs_its_pair_statistics():
    torch.manual_seed(0)
    method = tiny_method()
    batch = {"image": torch.randint(0, 10000, (4, 3, 16, 16)), "image_neighbor": torch.randint(0, 10000, (4, 3, 16, 16)),
             "neighbor_offset": torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0], [0.2, -0.3]]),
             "has_neighbor": torch.tensor([False, True, True, True])}
    loss, z, logs = method.ssl_loss(method.make_views(batch), batch)
    loss.backward()
    assert z.shape == (4, 192) and torch.isfinite(loss)
    assert 0.75 <= float(logs["mask_ratio"]) <= 0.85 and float(logs["has_neighbor"]) == 0.75
    assert float(logs["loss_weight"]) <= 1.0
    assert method.img_embed.grad.abs().sum() > 0 and method.decoder_img_embed.grad.abs().sum() > 0


def test_refuses_bad_settings():
    cropping = NeighborMAE(create_backbone("vit_tiny", in_chans=3, img_size=16, patch_size=4, depth=1),
                           augmentation=geometric(size=16, mean=[0.0] * 3, std=[1.0] * 3, n_views=1))
    with pytest.raises(ConfigError, match="augmentation.name: eval"):
        cropping.check_contract({"image", "image_neighbor", "neighbor_offset"})
    with pytest.raises(ConfigError, match="mask_ratio_min 0.9 > mask_ratio_max 0.8"):
        tiny_method(mask_ratio_min=0.9, mask_ratio_max=0.8)
    with pytest.raises(ConfigError, match="weight_kernel must be an odd"):
        tiny_method(weight_kernel=4)
    with pytest.raises(ConfigError, match="multiple of 8"):
        tiny_method(decoder_dim=36, decoder_heads=2)
    with pytest.raises(ConfigError, match="needs a ViT"):
        NeighborMAE(create_backbone("tiny_cnn", in_chans=3))
    method = tiny_method()
    with pytest.raises(ConfigError, match="needs 'image_neighbor': set data.neighbor_pairs=true"):
        method.check_contract({"image", "lat", "lon"})
    method.check_contract({"image", "image_neighbor", "neighbor_offset"})


def test_trains_on_real_neighbours_and_its_checkpoint_evaluates(tmp_path, tiny_mim_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ssl_rs.data.synth import synthesize
    from ssl_rs.checkpoint import load_encoder
    from ssl_rs.train import pretrain

    world = synthesize(tmp_path / "tiles.h5", n=128, size=16, seed=3, num_classes=4, tiles=2, progress=False)
    cfg = tiny_mim_config(world, "neighbormae")
    result = pretrain(cfg)
    assert result["steps"] >= 2 and "knn" in result["eval"]["random"]["metrics"]
    scalars = {}
    for events in Path(result["run_dir"], "tb").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [e.value for e in acc.Scalars(tag)]
    # a 2 x 2 mosaic per place: every tile in the training split has a neighbour unless its three
    # siblings all went to val/test, so nearly every pair is real and most crops overlap little
    assert min(scalars["train/has_neighbor"]) > 0.8
    ckpt = Path(result["run_dir"]) / "checkpoints" / "last.ckpt"
    backbone, _ = load_encoder(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(backbone.model.pos_embed, state["backbone.model.pos_embed"])
