"""MAE (He et al., CVPR 2022): mask most patches, encode the visible ones, reconstruct the rest."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from lightly.models.utils import patchify
from torch import Tensor, nn

from ..registry import METHODS
from .losses import masked_patch_mse
from .vit_utils import (
    MaskedDecoder,
    ViTMethod,
    check_image,
    check_mask_ratio,
    embed_tokens,
    encode_visible,
    patch_size_of,
    pooled,
    random_patch_mask,
    timm_vit,
)


@METHODS.register("mae", summary="MAE: ViT on visible patches, light decoder, MSE on masked patches")
class MAE(ViTMethod):
    """Masked autoencoder on any number of bands.

    The encoder is the registered ViT backbone run on the visible patches only (its own patch and
    position embeddings, CLS token, blocks and norm); a light decoder (``decoder_dim``,
    ``decoder_depth``, ``decoder_heads``) fills the masked places with a mask token and predicts
    every band of every pixel of each patch. The loss is the per-patch MSE averaged over the
    masked patches only, against per-patch normalised pixels when ``norm_pix_loss``.
    ``round(N * mask_ratio)`` of the N patches are masked, independently per sample.
    The regularizer sees ``z`` = the backbone's pooled features (CLS or mean) of the visible tokens.
    """

    n_views = 1

    def __init__(self, backbone, *, mask_ratio: float = 0.75, decoder_dim: int = 256, decoder_depth: int = 4,
                 decoder_heads: int = 8, norm_pix_loss: bool = True, **kwargs):
        super().__init__(backbone, **kwargs)
        timm_vit(backbone, "mae")
        self.mask_ratio = check_mask_ratio(mask_ratio, "mae")
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = patch_size_of(self.vit)
        self.decoder = MaskedDecoder(backbone.num_features, decoder_dim, decoder_depth, decoder_heads,
                                     num_prefix_tokens=self.vit.num_prefix_tokens)
        self.predictor = nn.Linear(decoder_dim, self.patch_size**2 * backbone.in_chans)

    def reconstruct(self, images: Tensor, idx_keep: Tensor, idx_mask: Tensor,
                    target: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Loss and ``z`` for given masks; ``target`` (default ``images``) is what is reconstructed."""
        grid = check_image(images, self.patch_size, "mae")
        encoded = encode_visible(self.vit, embed_tokens(self.vit, images), idx_keep)
        pred = self.predictor(self.decoder(encoded, idx_keep, grid * grid))
        target_patches = patchify(images if target is None else target, self.patch_size)
        loss = masked_patch_mse(pred, target_patches, idx_mask, norm_pix=self.norm_pix_loss)
        return loss, pooled(self.vit, encoded)

    def ssl_loss(self, views, batch) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        images = views[0]
        grid = check_image(images, self.patch_size, "mae")
        idx_keep, idx_mask = random_patch_mask(images.shape[0], grid * grid, self.mask_ratio, images.device)
        loss, z = self.reconstruct(images, idx_keep, idx_mask)
        return loss, z, {}
