"""ScaleMAE (Reed et al., ICCV 2023): an MAE whose position encodings are scaled by the ground
sample distance of the input, reconstructing a low- and a high-frequency target at two scales."""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from lightly.models.utils import patchify
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import METHODS
from .vit_utils import (
    MaskedDecoder,
    ViTMethod,
    check_image,
    check_gsd_encodable,
    check_mask_ratio,
    embed_tokens_at_gsd,
    encode_visible,
    masked_patch_mse,
    patch_size_of,
    pooled,
    random_patch_mask,
    require_own_crops,
    set_frozen_gsd_encoding,
    sincos_pos_embed,
    timm_vit,
)


def random_square_crops(images: Tensor, side: int) -> Tensor:
    """One ``side`` x ``side`` crop per image at a uniformly random position."""
    b, _, h, w = images.shape
    top = torch.randint(0, h - side + 1, (b,), device=images.device)
    left = torch.randint(0, w - side + 1, (b,), device=images.device)
    offsets = torch.arange(side, device=images.device)
    rows = (top[:, None] + offsets)[:, :, None]  # (B, side, 1)
    cols = (left[:, None] + offsets)[:, None, :]  # (B, 1, side)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, side, side)


def frequency_targets(images: Tensor) -> Tuple[Tensor, Tensor]:
    """Laplacian-pyramid split: the low-frequency image at half resolution (2 x 2 means) and
    the high-frequency residual at full resolution (image minus the upsampled low band)."""
    low = F.avg_pool2d(images, 2)
    high = images - F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
    return low, high


@METHODS.register("scalemae", summary="ScaleMAE: GSD-scaled position encodings, low/high-frequency targets")
class ScaleMAE(ViTMethod):
    """Scale-aware masked autoencoder.

    Each step crops every image (one ``eval`` view, the whole tile) to a random square of area
    fraction ``a ~ U(crop_scale)`` (one fraction per batch) and resizes it back to the input size,
    so the input's ground sample distance is ``gsd * crop side / input side``. Patch positions
    are encoded with MAE's fixed 2-D sine-cosine encoding at positions multiplied by
    ``input GSD / reference_gsd`` (encoder and decoder), so the encoding says how much ground a
    patch step covers. ``gsd`` defaults to the data file's ``gsd`` attribute and
    ``reference_gsd`` to ``gsd``. The decoder predicts, for every masked patch, the low-frequency
    band at half resolution (``norm_pix_loss`` applies there) and the high-frequency residual at
    full resolution; the loss is the sum of both masked-patch MSEs.

    The backbone's own (learned) position embedding is replaced by the encoding at the data's
    native GSD and frozen, so the harness, which runs the backbone's plain forward on whole tiles,
    sees the encoding pretraining used at that scale. ``z`` = pooled encoder output of the
    visible tokens.
    """

    n_views = 1

    def __init__(self, backbone, *, mask_ratio: float = 0.75, decoder_dim: int = 256, decoder_depth: int = 4,
                 decoder_heads: int = 8, norm_pix_loss: bool = True, crop_scale: Sequence[float] = (0.2, 1.0),
                 gsd: Optional[float] = None, reference_gsd: Optional[float] = None, **kwargs):
        super().__init__(backbone, **kwargs)
        vit = timm_vit(backbone, "scalemae")
        require_own_crops(self.augmentation, "scalemae")  # crops made elsewhere would change the GSD unseen
        check_gsd_encodable(vit, "scalemae")
        self.mask_ratio = check_mask_ratio(mask_ratio, "scalemae")
        self.patch_size = patch_size_of(vit)
        if self.patch_size % 2:
            raise ConfigError(f"method 'scalemae': the half-resolution target needs an even patch size, "
                              f"got {self.patch_size}")
        lo, hi = (float(v) for v in crop_scale)
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"method 'scalemae': crop_scale must satisfy 0 < min <= max <= 1, got {list(crop_scale)}")
        self.crop_scale = (lo, hi)
        for key, value in (("gsd", gsd), ("reference_gsd", reference_gsd)):
            if value is not None and value <= 0:
                raise ConfigError(f"method 'scalemae': {key} must be > 0, got {value}")
        self.gsd, self.reference_gsd = gsd, reference_gsd
        self.norm_pix_loss = norm_pix_loss
        self.decoder = MaskedDecoder(backbone.num_features, decoder_dim, decoder_depth, decoder_heads,
                                     num_prefix_tokens=vit.num_prefix_tokens)
        channels = backbone.in_chans
        self.low_head = nn.Linear(decoder_dim, (self.patch_size // 2) ** 2 * channels)
        self.high_head = nn.Linear(decoder_dim, self.patch_size**2 * channels)
        self.set_native_encoding(1.0)

    # -- GSD -----------------------------------------------------------------------------
    def on_train_start(self) -> None:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        dataset = getattr(dataset, "dataset", dataset)  # temporal-positives wrapper
        if self.gsd is None:
            self.gsd = getattr(dataset, "gsd", None)
        if self.gsd is not None and self.reference_gsd is not None:
            self.set_native_encoding(self.gsd / self.reference_gsd)

    def gsd_ratio(self, input_side_in_data_pixels: Tensor | float, input_side: int) -> Tensor | float:
        """Input GSD / reference GSD for an input of ``input_side`` pixels covering
        ``input_side_in_data_pixels`` pixels of the data (which have the data's GSD)."""
        native = 1.0 if self.gsd is None or self.reference_gsd is None else self.gsd / self.reference_gsd
        return native * input_side_in_data_pixels / input_side

    def set_native_encoding(self, ratio: float) -> None:
        """Write the encoding at ``ratio`` into the backbone's frozen position embedding."""
        set_frozen_gsd_encoding(self.vit, ratio)

    def embed_tokens(self, images: Tensor, ratio: Tensor) -> Tensor:
        """Patch tokens plus the GSD-scaled encoding (one ratio per sample), CLS token first."""
        return embed_tokens_at_gsd(self.vit, images, ratio, "scalemae")

    # -- loss ----------------------------------------------------------------------------
    def reconstruct(self, images: Tensor, ratio: Tensor, idx_keep: Tensor,
                    idx_mask: Tensor) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        """Loss, ``z`` and the two loss terms for given masks and per-sample GSD ratios."""
        grid = check_image(images, self.patch_size, "scalemae")
        encoded = encode_visible(self.vit, self.embed_tokens(images, ratio), idx_keep)
        pos = sincos_pos_embed(self.decoder.decoder_dim, grid, ratio, device=images.device)
        decoded = self.decoder(encoded, idx_keep, grid * grid, pos=pos)
        low, high = frequency_targets(images.float())
        loss_low = masked_patch_mse(self.low_head(decoded), patchify(low, self.patch_size // 2), idx_mask,
                                    norm_pix=self.norm_pix_loss)
        loss_high = masked_patch_mse(self.high_head(decoded), patchify(high, self.patch_size), idx_mask)
        return loss_low + loss_high, pooled(self.vit, encoded), {"loss_low": loss_low, "loss_high": loss_high}

    def ssl_loss(self, views, batch):
        view = views[0]
        side = view.shape[-1]
        area = torch.empty(()).uniform_(*self.crop_scale).item()
        crop_side = max(self.patch_size, min(side, int(round(side * math.sqrt(area)))))
        crops = random_square_crops(view, crop_side)
        if crop_side != side:
            crops = F.interpolate(crops, size=(side, side), mode="bilinear", align_corners=False, antialias=False)
        data_side = batch["image"].shape[-1]  # the view resamples the whole tile to `side` pixels
        ratio = self.gsd_ratio(crop_side * data_side / side, side)
        ratio_t = torch.full((view.shape[0],), float(ratio), device=view.device)
        grid = check_image(crops, self.patch_size, "scalemae")
        idx_keep, idx_mask = random_patch_mask(view.shape[0], grid * grid, self.mask_ratio, view.device)
        loss, z, logs = self.reconstruct(crops, ratio_t, idx_keep, idx_mask)
        return loss, z, {**logs, "gsd_ratio": torch.tensor(float(ratio))}
