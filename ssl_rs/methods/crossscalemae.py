"""Cross-Scale MAE (Tang et al., NeurIPS 2023): an MAE on two views of one image at different
scales, reconstructing each, plus a cross-scale consistency (contrastive) term between their
encodings."""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from lightly.models.utils import patchify
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import METHODS
from .csp import image_location_info_nce
from .scalemae import random_square_crops
from .vit_utils import (
    MaskedDecoder,
    ViTMethod,
    check_image,
    check_mask_ratio,
    embed_tokens,
    encode_visible,
    masked_patch_mse,
    patch_size_of,
    pooled,
    random_patch_mask,
    timm_vit,
)


def cross_scale_info_nce(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Symmetric in-batch InfoNCE between the two scales' encodings: with cosine logits
    ``s_ij = <z1_i, z2_j> / (|z1_i| |z2_j| temperature)`` the loss is ``(CE(s, I) + CE(s^T, I)) / 2``
    (each large view must pick its own small view among the batch's, and vice versa)."""
    return image_location_info_nce(z1, z2, temperature)


def _side(side: int, area: float, patch_size: int) -> int:
    """Side of a square of ``area`` times the area of a ``side`` square, at least one patch."""
    return max(patch_size, min(side, int(round(side * math.sqrt(area)))))


@METHODS.register("crossscalemae", summary="Cross-Scale MAE: MAE on two nested scales + cross-scale InfoNCE")
class CrossScaleMAE(ViTMethod):
    """Masked autoencoder on two views of each image at different scales.

    Each step makes two views of every image itself (one ``eval`` view, the whole tile, or any
    other single-view augmentation): view 1 is a random square crop of area fraction
    ``a1 ~ U(large_scale)`` of the input (default ``[1, 1]``: the whole input), view 2 a random
    square crop *inside view 1* of area fraction ``a2 ~ U(crop_scale)`` of view 1 (default
    ``[0.25, 0.75]``, the authors' range); one fraction per batch, positions per sample; both
    are resized (bilinear) to the input size, so view 2 shows part of the same ground at a finer
    ground sample distance. Each view is masked independently (``mask_ratio``), encoded by the
    registered ViT backbone on its visible patches (its own patch and position embeddings, CLS
    token, blocks and norm) and reconstructed by one shared light decoder; the reconstruction
    loss of each view is MAE's per-patch MSE over its masked patches only (per-patch normalised
    pixels when ``norm_pix_loss``), and the two are summed (the authors' default reduction).

    The cross-scale consistency term is a symmetric in-batch InfoNCE (cosine similarity,
    ``temperature``) between the two views' pooled encodings (the backbone's own pooling + head
    norm of the visible tokens); the loss is ``rec_1 + rec_2 + consistency_weight * InfoNCE``.
    The regularizer sees ``z`` = pooled encoding of view 1.
    """

    n_views = 1

    def __init__(self, backbone, *, mask_ratio: float = 0.75, decoder_dim: int = 256, decoder_depth: int = 4,
                 decoder_heads: int = 8, norm_pix_loss: bool = True, large_scale: Sequence[float] = (1.0, 1.0),
                 crop_scale: Sequence[float] = (0.25, 0.75), temperature: float = 0.1,
                 consistency_weight: float = 1.0, **kwargs):
        super().__init__(backbone, **kwargs)
        vit = timm_vit(backbone, "crossscalemae")
        self.mask_ratio = check_mask_ratio(mask_ratio, "crossscalemae")
        self.patch_size = patch_size_of(vit)
        self.large_scale = self._check_scale(large_scale, "large_scale")
        self.crop_scale = self._check_scale(crop_scale, "crop_scale")
        if temperature <= 0:
            raise ConfigError(f"method 'crossscalemae': temperature must be > 0, got {temperature}")
        if consistency_weight < 0:
            raise ConfigError(f"method 'crossscalemae': consistency_weight must be >= 0, got {consistency_weight}")
        self.temperature = float(temperature)
        self.consistency_weight = float(consistency_weight)
        self.norm_pix_loss = norm_pix_loss
        self.decoder = MaskedDecoder(backbone.num_features, decoder_dim, decoder_depth, decoder_heads,
                                     num_prefix_tokens=vit.num_prefix_tokens)
        self.predictor = nn.Linear(decoder_dim, self.patch_size**2 * backbone.in_chans)

    @staticmethod
    def _check_scale(scale: Sequence[float], key: str) -> Tuple[float, float]:
        lo, hi = (float(v) for v in scale)
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"method 'crossscalemae': {key} must satisfy 0 < min <= max <= 1, got {list(scale)}")
        return lo, hi

    # -- views ---------------------------------------------------------------------------
    def two_scales(self, images: Tensor) -> Tuple[Tensor, Tensor, Dict[str, float]]:
        """View 1 (a large crop) and view 2 (a smaller crop inside view 1), both resized to the
        input side; also the two crop sides in input pixels."""
        side = check_image(images, self.patch_size, "crossscalemae") * self.patch_size
        side1 = _side(side, torch.empty(()).uniform_(*self.large_scale).item(), self.patch_size)
        large = images if side1 == side else random_square_crops(images, side1)
        side2 = _side(side1, torch.empty(()).uniform_(*self.crop_scale).item(), self.patch_size)
        small = random_square_crops(large, side2)

        def resize(x: Tensor) -> Tensor:
            if x.shape[-1] == side:
                return x
            return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=False)

        return resize(large), resize(small), {"side_1": float(side1), "side_2": float(side2)}

    # -- loss ----------------------------------------------------------------------------
    def reconstruct(self, images: Tensor, idx_keep: Tensor, idx_mask: Tensor,
                    target: Tensor | None = None) -> Tuple[Tensor, Tensor]:
        """Masked-patch reconstruction loss and pooled encoding of one view for given masks;
        ``target`` (default ``images``) is what is reconstructed."""
        grid = check_image(images, self.patch_size, "crossscalemae")
        encoded = encode_visible(self.vit, embed_tokens(self.vit, images), idx_keep)
        pred = self.predictor(self.decoder(encoded, idx_keep, grid * grid))
        target_patches = patchify(images if target is None else target, self.patch_size)
        loss = masked_patch_mse(pred, target_patches, idx_mask, norm_pix=self.norm_pix_loss)
        return loss, pooled(self.vit, encoded)

    def combine(self, rec_1: Tensor, rec_2: Tensor, z1: Tensor, z2: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Total loss from the two reconstruction losses and the two views' pooled encodings."""
        consistency = cross_scale_info_nce(z1, z2, self.temperature)
        loss = rec_1 + rec_2 + self.consistency_weight * consistency
        return loss, {"loss_rec_1": rec_1, "loss_rec_2": rec_2, "loss_consistency": consistency}

    def ssl_loss(self, views, batch) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        view1, view2, sides = self.two_scales(views[0])
        b, device = view1.shape[0], view1.device
        grid = check_image(view1, self.patch_size, "crossscalemae")
        keep1, mask1 = random_patch_mask(b, grid * grid, self.mask_ratio, device)
        keep2, mask2 = random_patch_mask(b, grid * grid, self.mask_ratio, device)
        rec_1, z1 = self.reconstruct(view1, keep1, mask1)
        rec_2, z2 = self.reconstruct(view2, keep2, mask2)
        loss, logs = self.combine(rec_1, rec_2, z1, z2)
        logs["scale_ratio"] = torch.tensor(sides["side_1"] / sides["side_2"])
        return loss, z1, logs
