"""NeighborMAE (Zeng et al., CVPR 2026): a masked autoencoder on pairs of neighbouring images.

Every training item is an image and a neighbour from the data layer
(:class:`~ssl_rs.data.neighbors.NeighborPairs`: a sample whose footprint overlaps or touches it,
the same place on another date, or the image itself when it has neither). Both are cropped at
random and the two crop boxes are placed in one frame from the pair's ground offset. Then:

* every patch's position encoding is a sine-cosine encoding of its box (left, top, right, bottom)
  in that frame plus a learned per-image embedding, and the visible patches of both images form
  one token sequence with one CLS token, so each image is reconstructed with the other's context;
* the pair's mask ratio grows with the overlap (IoU) of its two crops, from ``mask_ratio_min``
  (disjoint) to ``mask_ratio_max`` (identical), because overlapping content leaks across;
* the pixel-wise loss weight is lowered where the neighbour's visible pixels already show the
  content: ``w = clip(e_neighbour / e_prediction, 0, 1)``, with ``e_neighbour`` the error of the
  neighbour's pixels warped into this crop; ``w = 1`` where the neighbour shows nothing; a
  ``weight_kernel`` box filter smooths ``w``; the loss is ``sum(w * e) / #masked pixels``.

Geometry conventions (the authors'): frame x points east, y north, in units of one footprint
side; a pair's union box is mapped onto ``[0, POS_EXTENT]`` on each axis before encoding, so a
single full image (what the backbone sees downstream) is the box ``(0, 32, 32, 0)``.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from lightly.models.utils import patchify, unpatchify
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import METHODS
from .crops import box_affine, crop_resize, sample_crop_boxes
from .losses import patch_mean_std
from .vit_utils import (
    MaskedDecoder,
    ViTMethod,
    check_image,
    check_mask_ratio,
    patch_size_of,
    pooled,
    timm_vit,
    write_frozen_pos_embed,
)

POS_EXTENT = 32.0  # side of the square a pair's union box is mapped onto (the authors' constant)
PAIR = 2  # images per item: the anchor, then its neighbour


# -- geometry ------------------------------------------------------------------------------
def frame_boxes(crops: Tensor, offset: Tensor) -> Tensor:
    """Crop boxes ``(B, 2, 4)`` (u0, v0, u1, v1) of an image and its neighbour, whose footprint
    centre is ``offset`` (B, 2) = (east, north) footprint sides away, as ``(left, top, right,
    bottom)`` boxes in the pair's frame (x east, y north, the anchor's footprint is [0, 1]^2)."""
    origin = torch.stack([torch.zeros_like(offset), offset.to(crops.dtype)], dim=1)  # (B, 2, 2)
    ox, oy = origin.unbind(-1)
    u0, v0, u1, v1 = crops.unbind(-1)
    return torch.stack([ox + u0, oy + 1 - v0, ox + u1, oy + 1 - v1], dim=-1)


def normalize_frame(boxes: Tensor, extent: float = POS_EXTENT) -> Tensor:
    """Map the union box of each pair (B, 2, 4) onto ``[0, extent]`` on each axis."""
    left, top, right, bottom = boxes.unbind(-1)
    x0, x1 = left.amin(dim=1, keepdim=True), right.amax(dim=1, keepdim=True)
    y0, y1 = bottom.amin(dim=1, keepdim=True), top.amax(dim=1, keepdim=True)
    sx, sy = extent / (x1 - x0), extent / (y1 - y0)
    return torch.stack([(left - x0) * sx, (top - y0) * sy, (right - x0) * sx, (bottom - y0) * sy], dim=-1)


def pair_iou(boxes: Tensor) -> Tensor:
    """IoU ``(B,)`` of the two boxes of each pair (B, 2, 4) ``(left, top, right, bottom)``."""
    left, top, right, bottom = boxes.unbind(-1)
    width = (right.amin(dim=1) - left.amax(dim=1)).clamp(min=0)
    height = (top.amin(dim=1) - bottom.amax(dim=1)).clamp(min=0)
    inter = width * height
    area = (right - left) * (top - bottom)
    return inter / (area.sum(dim=1) - inter)


def patch_boxes(boxes: Tensor, grid: int) -> Tensor:
    """Boxes ``(..., grid * grid, 4)`` of the patches of boxes ``(..., 4)``, row-major from the
    top-left patch, each ``(left, top, right, bottom)``."""
    left, top, right, bottom = boxes.unsqueeze(-1).unbind(-2)
    steps = torch.arange(grid + 1, device=boxes.device, dtype=boxes.dtype) / grid
    xs = left + (right - left) * steps  # (..., grid + 1) column edges, west to east
    ys = top - (top - bottom) * steps  # row edges, north to south
    shape = (*boxes.shape[:-1], grid, grid)
    parts = [xs[..., None, :-1], ys[..., :-1, None], xs[..., None, 1:], ys[..., 1:, None]]
    return torch.stack([p.expand(shape) for p in parts], dim=-1).flatten(-3, -2)


def box_sincos(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine-cosine encoding ``(..., dim)`` of boxes ``(..., 4)``: each coordinate gets ``dim / 4``
    channels (sines then cosines of ``dim / 8`` frequencies from 1 to ``1 / temperature``)."""
    if dim % 8:
        raise ConfigError(f"method 'neighbormae': a box encoding needs a dimension divisible by 8, got {dim}")
    omega = temperature ** -torch.linspace(0, 1, dim // 8, device=boxes.device, dtype=torch.float64)
    angle = boxes.double().unsqueeze(-1) * omega  # (..., 4, dim / 8)
    return torch.cat([angle.sin(), angle.cos()], dim=-1).flatten(-2).float()


def warp_partner(images: Tensor, boxes: Tensor, mode: str = "bilinear") -> Tensor:
    """For each image of a pair (B, 2, C, S, S) with frame boxes (B, 2, 4), the other image
    resampled onto its pixels (zeros where the other crop does not reach)."""
    b, k = images.shape[:2]
    left, top, right, bottom = boxes.float().unbind(-1)
    other = [1, 0]
    cx, cy = (left + right) / 2, (top + bottom) / 2
    width, height = right - left, top - bottom
    theta = box_affine(width / width[:, other], 2 * (cx - cx[:, other]) / width[:, other],
                    height / height[:, other], 2 * (cy[:, other] - cy) / height[:, other])
    source = images[:, other].flatten(0, 1).float()
    grid = F.affine_grid(theta.flatten(0, 1), list(source.shape), align_corners=False)
    return F.grid_sample(source, grid, mode=mode, align_corners=False).unflatten(0, (b, k))


# -- masks and loss ------------------------------------------------------------------------
def pair_masks(iou: Tensor, num_patches: int, ratio_min: float, ratio_max: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Random masks for the two images of each pair with the mask ratio
    ``ratio_min + iou * (ratio_max - ratio_min)``: ``round(N * (1 - ratio))`` patches kept (the
    authors' rounding), the same count for both images, at least one masked and one kept.

    Returns ``(idx_keep, keep_valid, visible)``: ``idx_keep`` (B, 2, L) patch indices with
    ``L`` the count kept at ``ratio_min`` (a fixed shape), ``keep_valid`` (B, 2, L) which of them
    are really visible (the first ``n_keep`` of a random order), ``visible`` (B, 2, N) bool.
    """
    b = iou.shape[0]
    ratio = ratio_min + iou.float().clamp(0, 1) * (ratio_max - ratio_min)
    n_keep = ((1 - ratio) * num_patches).round().clamp(1, num_patches - 1)  # (B,)
    most = min(num_patches - 1, max(1, round((1 - ratio_min) * num_patches)))  # n_keep at ratio_min
    order = torch.rand(b, PAIR, num_patches, device=iou.device).argsort(dim=-1)
    idx_keep = order[..., :most]
    keep_valid = (torch.arange(most, device=iou.device) < n_keep.view(b, 1, 1)).expand(b, PAIR, most)
    visible = torch.zeros(b, PAIR, num_patches, dtype=torch.bool, device=iou.device)
    visible = visible.scatter(-1, idx_keep, keep_valid)
    return idx_keep, keep_valid, visible


def pixel_mask(patch_mask: Tensor, patch_size: int) -> Tensor:
    """(B, K, N) per-patch mask -> (B, K, S, S) per-pixel mask (row-major square patch grid)."""
    grid = int(round(patch_mask.shape[-1] ** 0.5))
    m = patch_mask.unflatten(-1, (grid, grid))
    return m.repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1)


def neighbor_weighted_loss(pred: Tensor, views: Tensor, boxes: Tensor, visible: Tensor, patch_size: int,
                           norm_pix: bool = True, weight_kernel: int = 9, eps: float = 1e-12) -> Dict[str, Tensor]:
    """NeighborMAE's pixel-wise loss.

    Args:
        pred, views: predicted and input pixels (B, 2, C, S, S).
        boxes: frame boxes (B, 2, 4) of the two crops.
        visible: (B, 2, N) bool, the patches the encoder saw.
        norm_pix: targets (and the warped neighbour) normalised by each target patch's mean/std.

    Returns ``loss`` (weighted, what is trained), ``loss_masked`` (the unweighted MSE over masked
    pixels, MAE's loss) and ``weight`` (mean weight over masked pixels).
    """
    b, k, c, s, _ = views.shape
    views = views.float()
    warped = warp_partner(views, boxes).flatten(0, 1)
    seen = pixel_mask(visible, patch_size)  # (B, 2, S, S)
    partner_seen = warp_partner(seen.unsqueeze(2).float(), boxes, mode="nearest")[:, :, 0] > 0.5
    target = views.flatten(0, 1)
    if norm_pix:
        patches = patchify(target, patch_size)
        mean, std = patch_mean_std(patches)
        target = unpatchify((patches - mean) / std, patch_size, c)
        warped = unpatchify((patchify(warped, patch_size) - mean) / std, patch_size, c)
    error = (pred.flatten(0, 1).float() - target).pow(2).mean(dim=1).unflatten(0, (b, k))  # (B, 2, S, S)
    error_partner = (warped - target).pow(2).mean(dim=1).unflatten(0, (b, k))
    weight = (error_partner / (error.detach() + eps)).clamp(0, 1)
    weight = torch.where(partner_seen, weight, torch.ones_like(weight))
    if weight_kernel > 1:
        weight = F.avg_pool2d(weight.flatten(0, 1).unsqueeze(1), weight_kernel, stride=1,
                              padding=weight_kernel // 2, count_include_pad=False).view(b, k, s, s)
    masked = (~seen).float()
    weight = weight * masked
    count = masked.sum()
    return {"loss": (error * weight).sum() / count, "loss_masked": (error * masked).sum() / count,
            "weight": weight.sum() / count}


# -- method --------------------------------------------------------------------------------
@METHODS.register("neighbormae",
                  summary="NeighborMAE: joint MAE on neighbouring image pairs, overlap-adapted masks and loss weights")
class NeighborMAE(ViTMethod):
    """NeighborMAE on any number of bands (module docstring: the method; ``docs/methods.md``:
    defaults and where ours differs from the authors' code).

    Needs ``data.neighbor_pairs=true`` (the pairs) and ``augmentation.name=eval`` (the method
    draws its own crops, whose boxes must be known; ``crop_scale``/``crop_ratio`` set them).
    The backbone's position embedding is not trained: it is kept equal to the box encoding of one
    full image plus the first image embedding, the encoding pretraining gives a single image, so
    the k-NN harness and fine-tuning use the backbone as it is.
    ``z`` (what a geo regularizer sees) = the backbone's pooling (CLS, or the mean of the visible
    tokens of both images) of the joint encoding.
    """

    n_views = 1
    batch_keys = frozenset({"image_neighbor", "neighbor_offset"})
    makes_own_crops = True  # the crop boxes place the pair in one frame

    def __init__(self, backbone, *, mask_ratio_min: float = 0.75, mask_ratio_max: float = 0.85,
                 crop_scale: Sequence[float] = (0.2, 1.0), crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
                 decoder_dim: int = 256, decoder_depth: int = 4, decoder_heads: int = 8,
                 norm_pix_loss: bool = True, weight_kernel: int = 9, **kwargs):
        super().__init__(backbone, **kwargs)
        vit = timm_vit(backbone, "neighbormae")
        self.mask_ratio_min = check_mask_ratio(mask_ratio_min, "neighbormae")
        self.mask_ratio_max = check_mask_ratio(mask_ratio_max, "neighbormae")
        if self.mask_ratio_min > self.mask_ratio_max:
            raise ConfigError(f"method 'neighbormae': mask_ratio_min {mask_ratio_min} > mask_ratio_max {mask_ratio_max}")
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ConfigError(f"method 'neighbormae': crop_scale must be [low, high] with 0 < low <= high <= 1, "
                              f"got {list(crop_scale)}")
        if len(crop_ratio) != 2 or not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ConfigError(f"method 'neighbormae': crop_ratio must be [low, high] with 0 < low <= high, "
                              f"got {list(crop_ratio)}")
        if weight_kernel < 1 or weight_kernel % 2 == 0:
            raise ConfigError(f"method 'neighbormae': weight_kernel must be an odd number of pixels, got {weight_kernel}")
        if vit.pos_embed is None:
            raise ConfigError("method 'neighbormae' needs a ViT with an absolute position embedding")
        gh, gw = vit.patch_embed.grid_size
        if gh != gw:
            raise ConfigError(f"method 'neighbormae' needs a square backbone patch grid, got {gh} x {gw}")
        dim = backbone.num_features
        for name, value in (("the backbone's embedding", dim), ("decoder_dim", decoder_dim)):
            if value % 8:
                raise ConfigError(f"method 'neighbormae': {name} dimension must be a multiple of 8 "
                                  f"(four sine-cosine box coordinates), got {value}")
        self.crop_scale = tuple(float(x) for x in crop_scale)
        self.crop_ratio = tuple(float(x) for x in crop_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.weight_kernel = int(weight_kernel)
        self.patch_size = patch_size_of(vit)
        self.img_embed = nn.Parameter(torch.zeros(PAIR, dim))
        self.decoder = MaskedDecoder(dim, decoder_dim, decoder_depth, decoder_heads,
                                     num_prefix_tokens=vit.num_prefix_tokens)
        self.decoder_img_embed = nn.Parameter(torch.zeros(PAIR, decoder_dim))
        nn.init.normal_(self.img_embed, std=0.02)
        nn.init.normal_(self.decoder_img_embed, std=0.02)
        self.predictor = nn.Linear(decoder_dim, self.patch_size**2 * backbone.in_chans)
        self.sync_backbone_pos_embed()

    def sync_backbone_pos_embed(self) -> None:
        """Freeze the single-image encoding (box (0, 32, 32, 0) + first image embedding) into the
        backbone's position embedding; prefix (CLS) positions get zeros, as in pretraining."""
        grid = self.vit.patch_embed.grid_size[0]
        full = torch.tensor([0.0, POS_EXTENT, POS_EXTENT, 0.0], device=self.img_embed.device)
        encoding = box_sincos(patch_boxes(full, grid), self.embed_dim) + self.img_embed[0].detach()
        write_frozen_pos_embed(self.vit, encoding)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.sync_backbone_pos_embed()

    def make_views(self, batch):
        """The normalised image and its neighbour (crops are drawn in :meth:`ssl_loss`)."""
        if self.augmentation is None:
            raise ConfigError("method 'neighbormae' has no augmentation pipeline to normalise with")
        aug = self.augmentation
        return [aug.normalized(batch["image"]), aug.normalized(batch["image_neighbor"])]

    def prefix_tokens(self, batch: int) -> Tensor:
        vit = self.vit
        parts = [t for t in (vit.cls_token, getattr(vit, "reg_token", None)) if t is not None]
        if not parts:
            return vit.patch_embed.proj.weight.new_zeros(batch, 0, self.embed_dim)
        return torch.cat(parts, dim=1).expand(batch, -1, -1)

    def encode_pair(self, views: Tensor, cells: Tensor, idx_keep: Tensor, keep_valid: Tensor) -> Tensor:
        """Joint encoding (B, prefix + 2L, D) of the kept patches of both crops (B, 2, C, S, S)
        whose patch boxes are ``cells`` (B, 2, N, 4); kept-but-invalid tokens are hidden from
        attention."""
        vit = self.vit
        b = views.shape[0]
        grid = check_image(views[:, 0], self.patch_size, "neighbormae")
        tokens = vit.patch_embed(views.flatten(0, 1)).reshape(b, PAIR, grid * grid, -1)
        pos = box_sincos(cells, self.embed_dim) + self.img_embed[None, :, None]
        tokens = tokens + pos.to(tokens.dtype)
        kept = tokens.gather(2, idx_keep.unsqueeze(-1).expand(-1, -1, -1, tokens.shape[-1])).flatten(1, 2)
        prefix = self.prefix_tokens(b).to(kept.dtype)
        x = vit.norm_pre(torch.cat([prefix, kept], dim=1))
        valid = torch.cat([keep_valid.new_ones(b, prefix.shape[1]), keep_valid.flatten(1)], dim=1)
        hidden = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, float("-inf"))
        for block in vit.blocks:
            x = block(x, attn_mask=hidden[:, None, None, :])
        return vit.norm(x)

    def pooled_pair(self, encoded: Tensor, keep_valid: Tensor) -> Tensor:
        vit = self.vit
        if vit.global_pool != "avg":
            return pooled(vit, encoded)
        weight = keep_valid.flatten(1).unsqueeze(-1).to(encoded.dtype)
        mean = (encoded[:, vit.num_prefix_tokens:] * weight).sum(dim=1) / weight.sum(dim=1)
        return vit.head_drop(vit.fc_norm(mean))

    def pair_loss(self, views: Tensor, boxes: Tensor, idx_keep: Tensor, keep_valid: Tensor,
                  visible: Tensor) -> Tuple[Dict[str, Tensor], Tensor]:
        """Loss terms and ``z`` for crops ``views`` (B, 2, C, S, S) with normalised frame
        ``boxes`` (B, 2, 4) and masks from :func:`pair_masks`."""
        b, _, c, s, _ = views.shape
        grid = s // self.patch_size
        n = grid * grid
        cells = patch_boxes(boxes, grid)  # encoded for the encoder and, at its width, the decoder
        encoded = self.encode_pair(views, cells, idx_keep, keep_valid)
        shift = n * torch.arange(PAIR, device=views.device).view(1, PAIR, 1)
        dpos = box_sincos(cells, self.decoder.decoder_dim)
        dpos = (dpos + self.decoder_img_embed[None, :, None]).flatten(1, 2)
        decoded = self.decoder(encoded, (idx_keep + shift).flatten(1), PAIR * n, pos=dpos,
                               keep_valid=keep_valid.flatten(1))
        pred = unpatchify(self.predictor(decoded).float().reshape(b * PAIR, n, -1), self.patch_size, c)
        terms = neighbor_weighted_loss(pred.view(b, PAIR, c, s, s), views, boxes, visible, self.patch_size,
                                       self.norm_pix_loss, self.weight_kernel)
        return terms, self.pooled_pair(encoded, keep_valid)

    def ssl_loss(self, views, batch) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        image, neighbor = views
        b, size = image.shape[0], self.augmentation.sizes[0]
        grid = check_image(image.new_empty(0, 0, size, size), self.patch_size, "neighbormae")
        crops = sample_crop_boxes(b * PAIR, self.crop_scale, self.crop_ratio, image.device).view(b, PAIR, 4)
        pair = torch.stack([image, neighbor], dim=1).flatten(0, 1)
        crop_views = crop_resize(pair, crops.flatten(0, 1), size).unflatten(0, (b, PAIR))
        offset = batch["neighbor_offset"].to(image.device).float()
        boxes = frame_boxes(crops, offset)
        iou = pair_iou(boxes)
        idx_keep, keep_valid, visible = pair_masks(iou, grid * grid, self.mask_ratio_min, self.mask_ratio_max)
        terms, z = self.pair_loss(crop_views, normalize_frame(boxes), idx_keep, keep_valid, visible)
        logs = {"loss_masked": terms["loss_masked"], "loss_weight": terms["weight"], "pair_iou": iou.mean(),
                "mask_ratio": 1 - visible.float().mean()}
        if "has_neighbor" in batch:
            logs["has_neighbor"] = batch["has_neighbor"].float().mean()
        return terms["loss"], z, logs
