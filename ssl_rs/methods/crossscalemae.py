"""Cross-Scale MAE (Tang et al., NeurIPS 2023): an MAE on two views of one image at different
scales, reconstructing each, plus a cross-scale consistency (contrastive) term between their
encodings and a cross-scale prediction term between their decoder embeddings."""

from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from lightly.models.utils import patchify
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import METHODS
from .crops import random_square_crops
from .losses import image_location_info_nce, masked_patch_mse
from .vit_utils import (
    MaskedDecoder,
    ViTMethod,
    check_image,
    check_gsd_encodable,
    check_mask_ratio,
    embed_tokens,
    embed_tokens_at_gsd,
    encode_visible,
    patch_size_of,
    pooled,
    random_patch_mask,
    set_frozen_gsd_encoding,
    sincos_pos_embed,
    timm_vit,
)


def cross_scale_info_nce(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Symmetric in-batch InfoNCE between the two scales' encodings: with cosine logits
    ``s_ij = <z1_i, z2_j> / (|z1_i| |z2_j| temperature)`` the loss is ``(CE(s, I) + CE(s^T, I)) / 2``
    (each large view must pick its own small view among the batch's, and vice versa)."""
    return image_location_info_nce(z1, z2, temperature)


def cross_decoder_prediction_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """The authors' ``loss_cd``: mean squared error over every patch token and feature between the
    small view's predicted decoder embeddings and the large view's (token ``i`` against token ``i``
    of the same grid), with gradients into both (no stop-gradient)."""
    return (predicted.float() - target.float()).pow(2).mean()


class DecoderTokenPredictor(nn.Module):
    """MLP (Linear, BatchNorm, ReLU, Linear) applied to each decoder token: maps the small view's
    decoder embeddings onto the large view's. BatchNorm statistics are per feature over all tokens
    of the batch."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, dim))

    def forward(self, tokens: Tensor) -> Tensor:
        b, n, d = tokens.shape
        return self.net(tokens.reshape(b * n, d)).reshape(b, n, d)


class ViewOutput(NamedTuple):
    """What one view contributes to the loss."""

    reconstruction: Tensor  #: masked-patch reconstruction loss
    z: Tensor  #: pooled encoding of the visible tokens
    decoded: Tensor  #: decoder embeddings of all patch tokens (B, N, decoder_dim), image order


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
    norm of the visible tokens). The cross-scale prediction term (the authors' ``loss_cd``) is
    the MSE between an MLP predictor (``decoder_predictor_dim`` hidden units) of view 2's decoder
    embeddings and view 1's, over all patch tokens. The loss is
    ``rec_1 + rec_2 + consistency_weight * InfoNCE + decoder_prediction_weight * loss_cd``; weight 0
    builds no predictor. The regularizer sees ``z`` = pooled encoding of view 1.

    With ``gsd_encoding`` each view's patches (encoder and decoder) get ScaleMAE's sine-cosine
    encoding at positions scaled by the view's GSD relative to the data's, and the backbone's
    position embedding holds the encoding at the data's GSD, frozen (needs ``augmentation: eval``).
    Otherwise the backbone's own position embedding is used, as ``mae`` does.
    """

    n_views = 1

    def __init__(self, backbone, *, mask_ratio: float = 0.75, decoder_dim: int = 256, decoder_depth: int = 4,
                 decoder_heads: int = 8, norm_pix_loss: bool = True, large_scale: Sequence[float] = (1.0, 1.0),
                 crop_scale: Sequence[float] = (0.25, 0.75), temperature: float = 0.1,
                 consistency_weight: float = 1.0, decoder_prediction_weight: float = 1.0,
                 decoder_predictor_dim: int = 2048, gsd_encoding: bool = False, **kwargs):
        super().__init__(backbone, **kwargs)
        vit = timm_vit(backbone, "crossscalemae")
        self.mask_ratio = check_mask_ratio(mask_ratio, "crossscalemae")
        self.patch_size = patch_size_of(vit)
        self.large_scale = self._check_scale(large_scale, "large_scale")
        self.crop_scale = self._check_scale(crop_scale, "crop_scale")
        if temperature <= 0:
            raise ConfigError(f"method 'crossscalemae': temperature must be > 0, got {temperature}")
        for key, weight in (("consistency_weight", consistency_weight),
                            ("decoder_prediction_weight", decoder_prediction_weight)):
            if weight < 0:
                raise ConfigError(f"method 'crossscalemae': {key} must be >= 0, got {weight}")
        if decoder_prediction_weight > 0 and (int(decoder_predictor_dim) != decoder_predictor_dim
                                              or decoder_predictor_dim < 1):
            raise ConfigError(f"method 'crossscalemae': decoder_predictor_dim must be a positive integer, "
                              f"got {decoder_predictor_dim}")
        self.temperature = float(temperature)
        self.consistency_weight = float(consistency_weight)
        self.decoder_prediction_weight = float(decoder_prediction_weight)
        self.norm_pix_loss = norm_pix_loss
        self.gsd_encoding = bool(gsd_encoding)
        # with the GSD encoding, crops made elsewhere would change the input's GSD unseen
        self.makes_own_crops = self.gsd_encoding
        if self.gsd_encoding:
            check_gsd_encodable(vit, "crossscalemae")
        self.decoder = MaskedDecoder(backbone.num_features, decoder_dim, decoder_depth, decoder_heads,
                                     num_prefix_tokens=vit.num_prefix_tokens)
        self.predictor = nn.Linear(decoder_dim, self.patch_size**2 * backbone.in_chans)
        self.cross_decoder_predictor: Optional[DecoderTokenPredictor] = None
        if self.decoder_prediction_weight > 0:
            self.cross_decoder_predictor = DecoderTokenPredictor(decoder_dim, int(decoder_predictor_dim))
        if self.gsd_encoding:  # the plain forward (the harness) sees the encoding at the data's GSD
            set_frozen_gsd_encoding(vit, 1.0)

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

    @staticmethod
    def view_gsd_ratio(crop_side: float, input_side: int, data_side: int) -> float:
        """GSD of a crop of ``crop_side`` input pixels resized to ``input_side``, relative to the
        data's GSD, when the input shows the whole ``data_side``-pixel tile (ScaleMAE's ratio with
        the data's GSD as reference)."""
        return crop_side * data_side / input_side / input_side

    # -- loss ----------------------------------------------------------------------------
    def reconstruct(self, images: Tensor, idx_keep: Tensor, idx_mask: Tensor, target: Tensor | None = None,
                    gsd_ratio: Tensor | None = None) -> ViewOutput:
        """Masked-patch reconstruction loss, pooled encoding and decoder embeddings of one view for
        given masks; ``target`` (default ``images``) is what is reconstructed. ``gsd_ratio`` (B,):
        the view's GSD relative to the data's, which scales the position encodings (needs
        ``gsd_encoding``); without it the backbone's own position embedding is used (with
        ``gsd_encoding``, that is the encoding at the data's GSD)."""
        grid = check_image(images, self.patch_size, "crossscalemae")
        if gsd_ratio is None:
            tokens, decoder_pos = embed_tokens(self.vit, images), None
        else:
            tokens = embed_tokens_at_gsd(self.vit, images, gsd_ratio, "crossscalemae")
            decoder_pos = sincos_pos_embed(self.decoder.decoder_dim, grid, gsd_ratio, device=images.device)
        encoded = encode_visible(self.vit, tokens, idx_keep)
        decoded = self.decoder(encoded, idx_keep, grid * grid, pos=decoder_pos)
        target_patches = patchify(images if target is None else target, self.patch_size)
        loss = masked_patch_mse(self.predictor(decoded), target_patches, idx_mask, norm_pix=self.norm_pix_loss)
        return ViewOutput(loss, pooled(self.vit, encoded), decoded)

    def combine(self, large: ViewOutput, small: ViewOutput) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Total loss of the two views (view 1 = ``large``, view 2 = ``small``) and its terms."""
        consistency = cross_scale_info_nce(large.z, small.z, self.temperature)
        loss = large.reconstruction + small.reconstruction + self.consistency_weight * consistency
        logs = {"loss_rec_1": large.reconstruction, "loss_rec_2": small.reconstruction,
                "loss_consistency": consistency}
        if self.cross_decoder_predictor is not None:
            cross_decoder = cross_decoder_prediction_loss(self.cross_decoder_predictor(small.decoded), large.decoded)
            loss = loss + self.decoder_prediction_weight * cross_decoder
            logs["loss_cross_decoder"] = cross_decoder
        return loss, logs

    def ssl_loss(self, views, batch) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        view1, view2, sides = self.two_scales(views[0])
        b, device = view1.shape[0], view1.device
        grid = check_image(view1, self.patch_size, "crossscalemae")
        ratios: Tuple[Optional[Tensor], Optional[Tensor]] = (None, None)
        if self.gsd_encoding:  # the view resamples the whole tile (data_side pixels) to `side`
            side, data_side = view1.shape[-1], batch["image"].shape[-1]
            ratios = tuple(torch.full((b,), self.view_gsd_ratio(sides[key], side, data_side), device=device)
                           for key in ("side_1", "side_2"))
        keep1, mask1 = random_patch_mask(b, grid * grid, self.mask_ratio, device)
        keep2, mask2 = random_patch_mask(b, grid * grid, self.mask_ratio, device)
        large = self.reconstruct(view1, keep1, mask1, gsd_ratio=ratios[0])
        small = self.reconstruct(view2, keep2, mask2, gsd_ratio=ratios[1])
        loss, logs = self.combine(large, small)
        logs["scale_ratio"] = torch.tensor(sides["side_1"] / sides["side_2"])
        if self.gsd_encoding:
            logs["gsd_ratio_1"], logs["gsd_ratio_2"] = ratios[0][0], ratios[1][0]
        return loss, large.z, logs
