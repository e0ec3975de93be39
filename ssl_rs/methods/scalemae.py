"""ScaleMAE (Reed et al., ICCV 2023): an MAE whose position encodings are scaled by the ground
sample distance of the input, reconstructing a low- and a high-frequency target at two scales.

Reference: the authors' ``mae/models_mae.py`` (``forward_loss``) and ``mae/main_pretrain.py``
(bair-climate-initiative/scale-mae). Defaults follow them: the target is the crop at twice the
input resolution, the low band is it resampled (area) to the input resolution, the high band is
it minus its 7 x 7 area-downsampled copy upsampled back (bilinear), neither is normalised, each
masked error is summed over the bands, and positions are scaled by ``base_resolution`` 2.5."""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from lightly.models.utils import patchify
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import METHODS
from .crops import random_square_crops
from .losses import masked_patch_mse
from .recipe import OptimRecipe
from .vit_utils import (
    MaskedDecoder,
    ViTMethod,
    check_image,
    check_gsd_encodable,
    check_mask_ratio,
    embed_tokens_at_gsd,
    encode_visible,
    patch_size_of,
    pooled,
    random_patch_mask,
    set_frozen_gsd_encoding,
    sincos_pos_embed,
    timm_vit,
)


def frequency_targets(images: Tensor) -> Tuple[Tensor, Tensor]:
    """Laplacian-pyramid split (``target_split="laplacian"``): the low-frequency image at half
    resolution (2 x 2 means) and the high-frequency residual at full resolution (image minus the
    upsampled low band)."""
    low = F.avg_pool2d(images, 2)
    high = images - F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
    return low, high


def reference_frequency_targets(target: Tensor, low_side: int, high_pass_size: int = 7) -> Tuple[Tensor, Tensor]:
    """The Scale-MAE authors' split (``target_split="reference"``): the low band is ``target``
    area-resampled to ``low_side`` pixels (their decoder's low output: the input resolution);
    the high band is ``target`` minus its area-downsampled ``high_pass_size`` x
    ``high_pass_size`` copy upsampled back bilinearly (their ``band_config[0]``, 7 by default)."""
    low = F.interpolate(target, size=(low_side, low_side), mode="area")
    coarse = F.interpolate(target, size=(high_pass_size, high_pass_size), mode="area")
    high = target - F.interpolate(coarse, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return low, high


TARGET_SPLITS = ("reference", "laplacian")
BAND_REDUCTIONS = ("sum", "mean")
RESAMPLE_MODES = ("bicubic", "bilinear")


@METHODS.register("scalemae", summary="ScaleMAE: GSD-scaled position encodings, low/high-frequency targets")
class ScaleMAE(ViTMethod):
    """Scale-aware masked autoencoder.

    Each step crops every image (one ``eval`` view, the whole tile) to a random square of area
    fraction ``a ~ U(crop_scale)`` (one fraction per batch) and resizes it back to the input size,
    so the input's ground sample distance is ``gsd * crop side / input side``. Patch positions
    are encoded with MAE's fixed 2-D sine-cosine encoding at positions multiplied by
    ``base_resolution * input GSD / reference_gsd`` (encoder and decoder), so the encoding says
    how much ground a patch step covers. ``gsd`` defaults to the data file's ``gsd`` attribute,
    ``reference_gsd`` to ``gsd`` and ``base_resolution`` to 2.5 (the reference's
    ``--base_resolution``; 1 gives ssl-rs's earlier scaling).

    Targets (defaults = the reference): the crop is resampled (``resample``, bicubic as the
    reference's random resized crop) to ``target_scale`` (2) x the input side, and the input is
    that target resampled (bilinear) to the input side. ``target_split="reference"``: the low
    band is the target at the input resolution (area), the high band the target minus its
    ``high_pass_size`` x ``high_pass_size`` (7) area-downsampled copy upsampled back (bilinear),
    at the target resolution. ``"laplacian"`` (ssl-rs's earlier split, with ``target_scale: 1``,
    ``resample: bilinear``): low = 2 x 2 means at half the target resolution, high = target minus
    the low band upsampled. Two linear heads on the decoded tokens predict the two bands of every
    patch; each loss term is the masked-patch squared error, summed over the bands
    (``band_reduction="sum"``, the reference's sum over pixels and bands / masked pixels) or
    averaged (``"mean"``); the loss is their sum. ``norm_pix_loss`` (default false: the
    reference never normalises) standardises the low band per patch.

    The backbone's own (learned) position embedding is replaced by the encoding at the data's
    native GSD and frozen, so the harness, which runs the backbone's plain forward on whole tiles,
    sees the encoding pretraining used at that scale. ``z`` = pooled encoder output of the
    visible tokens.
    """

    n_views = 1
    makes_own_crops = True  # crops made elsewhere would change the input's GSD unseen
    #: the reference's ``main_pretrain.py`` defaults: AdamW, base lr 1.5e-4 per 256 images (linear
    #: scaling), betas (0.9, 0.95), weight decay 0.05 (not on biases and norms), 20 warm-up epochs
    #: (of 800), cosine to 0 (MAE's recipe with 20 warm-up epochs instead of 40)
    recipe = OptimRecipe(name="adamw", lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, warmup_epochs=20)

    def __init__(self, backbone, *, mask_ratio: float = 0.75, decoder_dim: int = 256, decoder_depth: int = 4,
                 decoder_heads: int = 8, norm_pix_loss: bool = False, crop_scale: Sequence[float] = (0.2, 1.0),
                 gsd: Optional[float] = None, reference_gsd: Optional[float] = None, base_resolution: float = 2.5,
                 target_split: str = "reference", target_scale: int = 2, high_pass_size: int = 7,
                 band_reduction: str = "sum", resample: str = "bicubic", **kwargs):
        super().__init__(backbone, **kwargs)
        vit = timm_vit(backbone, "scalemae")
        check_gsd_encodable(vit, "scalemae")
        self.mask_ratio = check_mask_ratio(mask_ratio, "scalemae")
        self.patch_size = patch_size_of(vit)
        for key, value, allowed in (("target_split", target_split, TARGET_SPLITS),
                                    ("band_reduction", band_reduction, BAND_REDUCTIONS),
                                    ("resample", resample, RESAMPLE_MODES)):
            if value not in allowed:
                raise ConfigError(f"method 'scalemae': {key} must be one of {allowed}, got {value!r}")
        for key, value in (("target_scale", target_scale), ("high_pass_size", high_pass_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"method 'scalemae': {key} must be a positive integer, got {value}")
        if not base_resolution > 0:
            raise ConfigError(f"method 'scalemae': base_resolution must be > 0, got {base_resolution}")
        self.target_split, self.band_reduction, self.resample = target_split, band_reduction, resample
        self.target_scale, self.high_pass_size = int(target_scale), int(high_pass_size)
        self.base_resolution = float(base_resolution)
        target_patch = self.target_scale * self.patch_size  # target pixels per patch side
        if target_split == "laplacian" and target_patch % 2:
            raise ConfigError(f"method 'scalemae': the half-resolution target of target_split: laplacian needs an "
                              f"even target patch size (target_scale x patch size), got {target_patch}")
        # pixels per patch side of the two bands
        self.low_patch = self.patch_size if target_split == "reference" else target_patch // 2
        self.high_patch = target_patch
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
        self.low_head = nn.Linear(decoder_dim, self.low_patch**2 * channels)
        self.high_head = nn.Linear(decoder_dim, self.high_patch**2 * channels)
        self.set_native_encoding(self.native_ratio())

    # -- GSD -----------------------------------------------------------------------------
    def setup_data(self, dataset) -> None:
        """The data file's ``gsd`` (unless ``gsd`` was given) sets the native encoding."""
        if self.gsd is None:
            self.gsd = dataset.gsd
        self.set_native_encoding(self.native_ratio())

    def native_ratio(self) -> float:
        """The position scale of a whole tile at the data's own GSD:
        ``base_resolution * gsd / reference_gsd`` (``base_resolution`` when either is unknown)."""
        native = 1.0 if self.gsd is None or self.reference_gsd is None else self.gsd / self.reference_gsd
        return self.base_resolution * native

    def gsd_ratio(self, input_side_in_data_pixels: Tensor | float, input_side: int) -> Tensor | float:
        """``base_resolution`` x input GSD / reference GSD for an input of ``input_side`` pixels
        covering ``input_side_in_data_pixels`` pixels of the data (which have the data's GSD)."""
        return self.native_ratio() * input_side_in_data_pixels / input_side

    def set_native_encoding(self, ratio: float) -> None:
        """Write the encoding at ``ratio`` into the backbone's frozen position embedding."""
        set_frozen_gsd_encoding(self.vit, ratio)

    def embed_tokens(self, images: Tensor, ratio: Tensor) -> Tensor:
        """Patch tokens plus the GSD-scaled encoding (one ratio per sample), CLS token first."""
        return embed_tokens_at_gsd(self.vit, images, ratio, "scalemae")

    # -- loss ----------------------------------------------------------------------------
    def frequency_targets(self, target: Tensor, input_side: int) -> Tuple[Tensor, Tensor]:
        """(low, high) bands of a target image of ``target_scale x input_side`` pixels."""
        if self.target_split == "reference":
            return reference_frequency_targets(target, input_side, self.high_pass_size)
        return frequency_targets(target)

    def band_loss(self, pred: Tensor, band: Tensor, pixels: int, idx_mask: Tensor, norm_pix: bool = False) -> Tensor:
        """Masked-patch squared error of one band (``pixels`` per patch side), per element or
        summed over the bands (``band_reduction``)."""
        loss = masked_patch_mse(pred, patchify(band, pixels), idx_mask, norm_pix=norm_pix)
        return loss * band.shape[1] if self.band_reduction == "sum" else loss

    def make_target(self, images: Tensor) -> Tensor:
        """A target for ``images`` when none is given: them resampled to ``target_scale`` x their side."""
        side = images.shape[-1] * self.target_scale
        if self.target_scale == 1:
            return images
        return F.interpolate(images, size=(side, side), mode=self.resample, align_corners=False)

    def reconstruct(self, images: Tensor, ratio: Tensor, idx_keep: Tensor, idx_mask: Tensor,
                    target: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        """Loss, ``z`` and the two loss terms for given masks and per-sample GSD ratios; ``target``
        (``target_scale`` x the input side; default :meth:`make_target` of ``images``) is split
        into the two bands."""
        grid = check_image(images, self.patch_size, "scalemae")
        side = grid * self.patch_size
        target = self.make_target(images) if target is None else target
        if tuple(target.shape[-2:]) != (side * self.target_scale,) * 2:
            raise ConfigError(f"method 'scalemae': the target must be {self.target_scale} x the input side "
                              f"{side}, got {tuple(target.shape[-2:])}")
        encoded = encode_visible(self.vit, self.embed_tokens(images, ratio), idx_keep)
        pos = sincos_pos_embed(self.decoder.decoder_dim, grid, ratio, device=images.device)
        decoded = self.decoder(encoded, idx_keep, grid * grid, pos=pos)
        low, high = self.frequency_targets(target.float(), side)
        loss_low = self.band_loss(self.low_head(decoded), low, self.low_patch, idx_mask, norm_pix=self.norm_pix_loss)
        loss_high = self.band_loss(self.high_head(decoded), high, self.high_patch, idx_mask)
        return loss_low + loss_high, pooled(self.vit, encoded), {"loss_low": loss_low, "loss_high": loss_high}

    def crop_input_and_target(self, view: Tensor, crop_side: int) -> Tuple[Tensor, Tensor]:
        """Random ``crop_side`` crops of ``view``, as (input at the view's side, target at
        ``target_scale`` x it): the crop is resampled (``resample``) to the target side, and the
        input is the target resampled bilinearly to the view's side (the reference's random resized
        crop to the target size, then resize to the input size)."""
        side = view.shape[-1]
        crops = random_square_crops(view, crop_side)
        target_side = side * self.target_scale
        target = crops
        if crop_side != target_side:
            target = F.interpolate(crops, size=(target_side, target_side), mode=self.resample, align_corners=False)
        images = target
        if target_side != side:
            images = F.interpolate(target, size=(side, side), mode="bilinear", align_corners=False, antialias=False)
        return images, target

    def ssl_loss(self, views, batch):
        view = views[0]
        side = view.shape[-1]
        area = torch.empty(()).uniform_(*self.crop_scale).item()
        crop_side = max(self.patch_size, min(side, int(round(side * math.sqrt(area)))))
        crops, target = self.crop_input_and_target(view, crop_side)
        data_side = batch["image"].shape[-1]  # the view resamples the whole tile to `side` pixels
        ratio = self.gsd_ratio(crop_side * data_side / side, side)
        ratio_t = torch.full((view.shape[0],), float(ratio), device=view.device)
        grid = check_image(crops, self.patch_size, "scalemae")
        idx_keep, idx_mask = random_patch_mask(view.shape[0], grid * grid, self.mask_ratio, view.device)
        loss, z, logs = self.reconstruct(crops, ratio_t, idx_keep, idx_mask, target=target)
        return loss, z, {**logs, "gsd_ratio": torch.tensor(float(ratio))}
