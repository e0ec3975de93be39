"""Shared pieces of the masked-image-modelling methods (MAE, ScaleMAE, Cross-Scale MAE, ...),
including the GSD-scaled position encoding of ScaleMAE.

The encoder is always the registered timm ViT of ``method.backbone``: these helpers run its own
patch embedding, position embedding, prefix (CLS) tokens, blocks and final norm on the visible
tokens only, so the weights the harness evaluates are exactly the ones pretraining trained.
Patches are flattened as lightly's ``patchify`` does: (row, column, band) within a patch.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from lightly.models.utils import get_at_index
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from ..errors import ConfigError
from .base import BaseMethod
from .recipe import MAE_RECIPE


class ViTMethod(BaseMethod):
    """Base of the methods that run the backbone's timm ViT themselves (MAE, ScaleMAE, Cross-Scale
    MAE, NeighborMAE); each checks its backbone with :func:`timm_vit` in ``__init__``. The
    regularizer sees the pooled encoding of the visible tokens."""

    recipe = MAE_RECIPE
    geo_embeddings = ("pooled",)

    @property
    def vit(self) -> VisionTransformer:
        """The timm ViT inside the backbone (a property, so its weights live once, under ``backbone.``)."""
        return self.backbone.model

    @property
    def embed_dim(self) -> int:
        return self.backbone.num_features


def timm_vit(backbone: nn.Module, method: str) -> VisionTransformer:
    """The timm VisionTransformer inside a registered ViT backbone (``vit_tiny``, ``vit_small``)."""
    model = getattr(backbone, "model", None)
    if not isinstance(model, VisionTransformer):
        name = getattr(backbone, "name", type(backbone).__name__)
        raise ConfigError(f"method {method!r} needs a ViT backbone (vit_tiny, vit_small), got {name!r}")
    return model


def patch_size_of(vit: VisionTransformer) -> int:
    return int(vit.patch_embed.patch_size[0])


def check_image(x: Tensor, patch_size: int, method: str) -> int:
    """Side of the square grid of patches of ``x``; a clear error when patches do not tile it."""
    h, w = x.shape[-2:]
    if h != w or h % patch_size:
        raise ConfigError(
            f"method {method!r}: views must be square with a side divisible by the patch size "
            f"{patch_size}, got {h} x {w} (set augmentation.size)"
        )
    return h // patch_size


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """How many of ``num_patches`` are masked: ``round(N * ratio)``, but at least one patch masked
    (the loss needs one) and one kept (the encoder needs one)."""
    if num_patches < 2:
        raise ConfigError(f"masking needs at least 2 patches per image, got {num_patches}")
    return min(num_patches - 1, max(1, int(round(num_patches * mask_ratio))))


def random_patch_mask(batch: int, num_patches: int, mask_ratio: float, device=None) -> Tuple[Tensor, Tensor]:
    """Independent uniform masks per sample: ``(idx_keep, idx_mask)``, patch indices of shape
    (B, N - M) and (B, M) with ``M = num_masked(N, ratio)``; every patch is in exactly one."""
    order = torch.rand(batch, num_patches, device=device).argsort(dim=1)
    n_keep = num_patches - num_masked(num_patches, mask_ratio)
    return order[:, :n_keep], order[:, n_keep:]


def check_mask_ratio(mask_ratio: float, method: str) -> float:
    if not 0.0 < mask_ratio < 1.0:
        raise ConfigError(f"method {method!r}: mask_ratio must be in (0, 1), got {mask_ratio}")
    return float(mask_ratio)


def encode_visible(vit: VisionTransformer, tokens: Tensor, idx_keep: Tensor) -> Tensor:
    """Run the ViT's blocks on its prefix tokens plus the kept patch tokens.

    ``tokens`` is (B, prefix + N, D) with position embeddings already added; returns the
    normalised encoder output (B, prefix + K, D), prefix tokens first.
    """
    prefix = vit.num_prefix_tokens
    visible = torch.cat([tokens[:, :prefix], get_at_index(tokens[:, prefix:], idx_keep)], dim=1)
    x = vit.norm_pre(vit.patch_drop(visible))
    return vit.norm(vit.blocks(x))


def embed_tokens(vit: VisionTransformer, x: Tensor) -> Tensor:
    """The ViT's own patch embedding, then CLS token and (resampled) position embedding."""
    return vit._pos_embed(vit.patch_embed(x))


# -- GSD-scaled position encoding (ScaleMAE; Cross-Scale MAE with ``gsd_encoding``) -------------
# Patch positions get MAE's sine-cosine encoding at positions multiplied by ``ratio`` = the input's
# GSD relative to a reference, so the code says how much ground a patch step covers. The backbone's
# own position embedding holds the encoding at the native ratio and is frozen: the harness runs the
# plain forward and must see the encoding pretraining used at that scale.


def check_gsd_encodable(vit: VisionTransformer, method: str) -> None:
    """The GSD-scaled encoding replaces an absolute position embedding of a square patch grid
    with at most a CLS token in front."""
    if vit.pos_embed is None or vit.num_prefix_tokens > 1 or getattr(vit, "no_embed_class", False):
        raise ConfigError(f"method {method!r}: needs a ViT with an absolute position embedding "
                          "and at most a CLS token")
    grid = vit.patch_embed.grid_size
    if grid[0] != grid[1]:
        raise ConfigError(f"method {method!r}: needs a square patch grid, got {tuple(grid)}")


@torch.no_grad()
def write_frozen_pos_embed(vit: VisionTransformer, patch_encoding: Tensor) -> None:
    """Write ``patch_encoding`` (N, D), one row per patch of the backbone's grid, into its
    position embedding (zeros at the prefix (CLS) positions it holds) and freeze it, so the plain
    forward (the harness) uses the encoding pretraining gives a whole image and the optimiser
    leaves it alone."""
    prefix = vit.pos_embed.shape[1] - patch_encoding.shape[0]
    vit.pos_embed[:, :prefix] = 0.0
    vit.pos_embed[:, prefix:] = patch_encoding.to(vit.pos_embed.device, vit.pos_embed.dtype)
    vit.pos_embed.requires_grad_(False)


def set_frozen_gsd_encoding(vit: VisionTransformer, ratio: float = 1.0) -> None:
    """Freeze the sine-cosine encoding at ``ratio`` into the backbone's position embedding."""
    grid = vit.patch_embed.grid_size[0]
    write_frozen_pos_embed(vit, sincos_pos_embed(vit.embed_dim, grid, float(ratio)))


def embed_tokens_at_gsd(vit: VisionTransformer, images: Tensor, ratio: Tensor, method: str) -> Tensor:
    """Patch tokens plus the encoding at ``ratio`` (one per sample), CLS token first: what
    :func:`embed_tokens` gives at the native ratio, for inputs of any GSD."""
    grid = check_image(images, patch_size_of(vit), method)
    tokens = vit.patch_embed(images).reshape(images.shape[0], grid * grid, -1)
    tokens = tokens + sincos_pos_embed(vit.embed_dim, grid, ratio, device=images.device).to(tokens.dtype)
    if vit.cls_token is not None:
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(images.shape[0], -1, -1)
        tokens = torch.cat([cls.to(tokens.dtype), tokens], dim=1)
    return vit.pos_drop(tokens)


def pooled(vit: VisionTransformer, encoded: Tensor) -> Tensor:
    """The backbone's pooling (CLS token or mean of patch tokens) and head norm, as in its forward."""
    return vit.forward_head(encoded, pre_logits=True)


def sincos_pos_embed(dim: int, grid: int, scale: float | Tensor = 1.0, device=None) -> Tensor:
    """Fixed 2-D sine-cosine encoding (N, dim) of a grid x grid layout, the same as MAE's (and
    lightly's ``get_2d_sine_cosine_positional_embedding``) with positions multiplied by
    ``scale``; a (B,) tensor of scales gives (B, N, dim) (ScaleMAE's GSD scaling)."""
    if dim % 4:
        raise ConfigError(f"a 2-D sine-cosine encoding needs a dimension divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    gh, gw = torch.meshgrid(coords, coords, indexing="ij")  # row-major patches, column fastest
    batched = isinstance(scale, Tensor) and scale.ndim > 0
    scale_t = torch.as_tensor(scale, dtype=torch.float64).reshape(-1, 1, 1)  # (S, 1, 1)
    parts = []
    for axis in (gw, gh):  # first half encodes the column, second half the row (as MAE's code)
        angle = scale_t * axis.reshape(1, -1, 1) * omega.view(1, 1, -1)  # (S, N, dim/4)
        parts += [angle.sin(), angle.cos()]
    out = torch.cat(parts, dim=-1).to(torch.float32).to(device)
    return out if batched else out[0]


class MaskedDecoder(nn.Module):
    """MAE's light decoder: project encoder tokens, fill the masked places with one learned mask
    token, add a fixed sine-cosine position encoding, run a few transformer blocks.

    ``forward`` returns the decoded patch tokens (B, N, decoder_dim) in image order; the
    methods put their own prediction heads on them.
    """

    def __init__(self, encoder_dim: int, decoder_dim: int = 256, depth: int = 4, num_heads: int = 8,
                 num_prefix_tokens: int = 1):
        super().__init__()
        if decoder_dim % 4:
            raise ConfigError(f"decoder_dim must be a multiple of 4 (2-D sine-cosine encoding), got {decoder_dim}")
        if decoder_dim % num_heads:
            raise ConfigError(f"decoder_dim {decoder_dim} is not divisible by decoder_heads {num_heads}")
        self.decoder_dim = decoder_dim
        self.num_prefix_tokens = num_prefix_tokens
        self.embed = nn.Linear(encoder_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.Sequential(*[Block(decoder_dim, num_heads, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6)

    def forward(self, encoded: Tensor, idx_keep: Tensor, num_patches: int, pos: Optional[Tensor] = None,
                keep_valid: Optional[Tensor] = None) -> Tensor:
        """``encoded``: (B, prefix + K, D) encoder output; ``pos``: (N, d) or (B, N, d) position
        encoding of the full grid (default: the unscaled square-grid one). ``keep_valid`` (B, K)
        bool marks which of the K encoded tokens were really visible; the others (padding of
        per-sample mask ratios, hidden from the encoder by an attention mask) get the mask token."""
        x = self.embed(encoded)
        prefix, visible = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        b = x.shape[0]
        mask_token = self.mask_token.to(x.dtype)
        if keep_valid is not None:
            visible = torch.where(keep_valid.unsqueeze(-1), visible, mask_token)
        full = mask_token.expand(b, num_patches, -1).clone()
        full = full.scatter(1, idx_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), visible)
        if pos is None:
            pos = sincos_pos_embed(self.decoder_dim, int(round(num_patches**0.5)), device=x.device)
        full = full + pos.to(full.dtype)
        out = self.norm(self.blocks(torch.cat([prefix, full], dim=1)))
        return out[:, self.num_prefix_tokens:]


