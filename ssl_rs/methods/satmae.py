"""SatMAE (Cong et al., NeurIPS 2022), multi-spectral variant: bands are split into groups, each
group has its own patch embedding, tokens carry a position and a group encoding, masked tokens
are reconstructed per group.

Reference: the authors' ``models_mae_group_channels.py`` (sustainlab-group/SatMAE) and the
multi-spectral pretraining command of their README. Defaults follow it: raw (not per-patch
normalised) targets; with ``norm_pix_loss`` each spatial patch is standardised over all the
grouped bands (``norm_pix_scope: patch``); fixed sine-cosine position and group codes in
separate channel slices (``encoding: sincos``)."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from lightly.models.utils import get_at_index, patchify
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from ..data.bands import normalize_band_name
from ..errors import ConfigError
from ..registry import METHODS
from .losses import normalize_patches
from .base import BaseMethod
from .recipe import OptimRecipe
from .vit_utils import (
    MaskedDecoder,
    check_gsd_encodable,
    check_image,
    check_mask_ratio,
    encode_visible,
    num_masked,
    patch_size_of,
    pooled,
    random_patch_mask,
    sincos_pos_embed,
    timm_vit,
    write_frozen_pos_embed,
)

#: SatMAE's Sentinel-2 groups: visible + NIR at 10 m, red edge at 20 m, SWIR at 20 m
S2_GROUPS: List[List[str]] = [["B02", "B03", "B04", "B08"], ["B05", "B06", "B07", "B8A"], ["B11", "B12"]]

UNKNOWN_BANDS = ("method 'satmae': band names unknown; pass bands=[...] or call setup_data(dataset) "
                 "(ssl_rs.train.build does)")

BandGroups = Sequence[Sequence[Union[str, int]]]

#: ``norm_pix_scope``: standardise each spatial patch over all grouped bands (the reference's
#: ``forward_loss``), or each (group, patch) over that group's bands only
NORM_PIX_SCOPES = ("patch", "group")
#: ``encoding``: fixed sine-cosine position and group codes in separate channel slices (the
#: reference), or the ViT's learned position embedding plus learned group encodings
ENCODINGS = ("sincos", "learned")
#: ``target_band_order``: each group's head predicts its own bands, or the group heads' outputs,
#: concatenated group after group, are scored against the bands in the data's order (what the
#: reference's ``forward_loss`` does; the two agree when the groups list the bands in data order)
TARGET_BAND_ORDERS = ("group", "input")


def resolve_band_groups(groups: BandGroups, bands: Sequence[str], extra_bands: str = "group") -> List[List[int]]:
    """Channel indices of each group in data with ``bands``; a group names bands (any S2
    spelling) or gives channel indices. Bands in no group form one last group
    (``extra_bands="group"``) or are left out (``"drop"``, the paper's choice for B1, B9, B10).
    A band in two groups, or a group band the data lacks, is an error."""
    if extra_bands not in ("group", "drop"):
        raise ConfigError(f"method 'satmae': extra_bands must be 'group' or 'drop', got {extra_bands!r}")

    def key(name: str) -> str:
        try:
            return normalize_band_name(name)
        except ValueError:
            return name

    position = {key(b): i for i, b in enumerate(bands)}
    resolved: List[List[int]] = []
    for group in groups:
        indices = []
        for band in group:
            if isinstance(band, int) and not isinstance(band, bool):
                if not 0 <= band < len(bands):
                    raise ConfigError(f"method 'satmae': band_groups: channel {band} out of range "
                                      f"for {len(bands)} bands")
                indices.append(band)
            elif key(str(band)) in position:
                indices.append(position[key(str(band))])
            else:
                raise ConfigError(f"method 'satmae': band_groups: band {band} is not in the data's bands "
                                  f"{list(bands)} (set method.args.band_groups)")
        if indices:
            resolved.append(indices)
    used = [i for g in resolved for i in g]
    if len(used) != len(set(used)):
        twice = sorted({bands[i] for i in used if used.count(i) > 1})
        raise ConfigError(f"method 'satmae': band_groups: bands {twice} are in more than one group")
    rest = [i for i in range(len(bands)) if i not in set(used)]
    if rest and extra_bands == "group":
        resolved.append(rest)
    if not resolved:
        raise ConfigError("method 'satmae': band_groups select no band of the data")
    return resolved


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(M, dim) 1-D sine-cosine code of ``positions``: sines then cosines of ``position * w_i``,
    ``w_i = 1 / 10000^(i / (dim / 2))`` (MAE's 1-D code, which SatMAE uses for the group index)."""
    if dim % 2:
        raise ConfigError(f"method 'satmae': a sine-cosine group code needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angle = positions.to(torch.float64).reshape(-1, 1) * omega.view(1, -1)
    return torch.cat([angle.sin(), angle.cos()], dim=1).float()


def default_group_dim(width: int) -> int:
    """Channels of a ``width``-wide token given to the fixed group code: a quarter, rounded down to
    a multiple of 4 (the reference's ViT-Large, the model of its pretraining command: 256 of
    1024 in the encoder, 128 of 512 in the decoder)."""
    return 4 * (width // 16)


def check_group_dim(width: int, group_dim: int, what: str) -> int:
    group_dim = int(group_dim)
    if not (0 < group_dim < width and group_dim % 2 == 0 and (width - group_dim) % 4 == 0):
        raise ConfigError(f"method 'satmae': {what} must be even, in (0, {width}) and leave a multiple of 4 "
                          f"for the position code, got {group_dim}")
    return group_dim


def fixed_codes(width: int, grid: int, num_groups: int, group_dim: int) -> Tuple[Tensor, Tensor]:
    """SatMAE's fixed encodings as additive codes: (N, width) position code (the 2-D sine-cosine
    code of a grid x grid layout in the first ``width - group_dim`` channels, zeros after) and
    (G, width) group code (zeros, then the 1-D sine-cosine code of the group index in the last
    ``group_dim`` channels); their sum is the reference's concatenation."""
    pos = F.pad(sincos_pos_embed(width - group_dim, grid), (0, group_dim))
    group = F.pad(sincos_1d(group_dim, torch.arange(num_groups)), (width - group_dim, 0))
    return pos, group


def group_token_errors(preds: Sequence[Tensor], target: Tensor, groups: Sequence[Sequence[int]], patch_size: int,
                       norm_pix: bool = False, norm_pix_scope: str = "patch",
                       target_band_order: str = "group") -> Tensor:
    """Squared reconstruction error of every group token of one image, (B, G * N), group-major.

    ``preds[g]``: (B, N, patch_size^2 * len(groups[g])) predictions of group ``g``'s head, laid
    out as lightly's ``patchify`` ((row, column, band) within a patch); ``target``: (B, C, H, W)
    image whose channels ``groups`` index. A token's error is the mean over its pixels and the
    bands of its group (the reference: per band, then over the group's bands). With
    ``norm_pix`` the target is standardised per spatial patch over all grouped bands
    (``norm_pix_scope="patch"``, the reference) or per (group, patch) (``"group"``), with the
    unbiased variance plus 1e-6. ``target_band_order``: see :data:`TARGET_BAND_ORDERS`."""
    if norm_pix_scope not in NORM_PIX_SCOPES:
        raise ConfigError(f"method 'satmae': norm_pix_scope must be one of {NORM_PIX_SCOPES}, got {norm_pix_scope!r}")
    if target_band_order not in TARGET_BAND_ORDERS:
        raise ConfigError(f"method 'satmae': target_band_order must be one of {TARGET_BAND_ORDERS}, "
                          f"got {target_band_order!r}")
    used = [c for g in groups for c in g]  # the heads' bands, group after group
    order = used if target_band_order == "group" else sorted(used)
    slot = {c: k for k, c in enumerate(order)}
    positions = [[slot[c] for c in g] for g in groups]  # where each group's bands sit in `order`
    b, p2 = target.shape[0], patch_size * patch_size
    tgt = patchify(target[:, order].float(), patch_size)
    n = tgt.shape[1]
    tgt = tgt.reshape(b, n, p2, len(order))
    pred = torch.cat([pr.float().reshape(b, n, p2, len(g)) for pr, g in zip(preds, groups)], dim=-1)
    if norm_pix and norm_pix_scope == "patch":
        tgt = normalize_patches(tgt.reshape(b, n, -1)).reshape(b, n, p2, len(order))
    elif norm_pix:
        normed = tgt.clone()
        for pos in positions:
            normed[..., pos] = normalize_patches(tgt[..., pos].reshape(b, n, -1)).reshape(b, n, p2, len(pos))
        tgt = normed
    per_band = (pred - tgt).pow(2).mean(dim=2)  # (B, N, bands)
    return torch.cat([per_band[..., pos].mean(dim=-1) for pos in positions], dim=1)


class GroupViT(nn.Module):
    """The backbone's ViT with one patch embedding per band group: the encoder SatMAE trains and
    the harness evaluates (``forward(x) -> (B, D)``: the ViT's pooling over all group tokens).

    Tokens are ordered group-major (token ``g * N + n`` is patch ``n`` of group ``g``); each gets
    the ViT's (resampled) position embedding of its patch plus a group encoding. With
    ``encoding="sincos"`` (the reference) both are fixed: the ViT's position embedding is
    overwritten by the 2-D sine-cosine code in the first ``D - group_dim`` channels (zeros in the
    rest and at the CLS position) and frozen, and the group encoding is the 1-D sine-cosine code
    of the group index in the last ``group_dim`` channels (default :func:`default_group_dim`);
    with ``"learned"`` the ViT's learned position embedding and a learned group encoding are
    used. ``channel_index`` (saved with the weights) lists the data channels of the groups in order.
    """

    def __init__(self, base: nn.Module, groups: List[List[int]], encoding: str = "learned",
                 group_dim: Optional[int] = None):
        super().__init__()
        if encoding not in ENCODINGS:
            raise ConfigError(f"method 'satmae': encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.base = base
        vit = base.model
        self.in_chans, self.num_features, self.name = base.in_chans, base.num_features, f"satmae_{base.name}"
        self.group_sizes = [len(g) for g in groups]
        self.register_buffer("channel_index", torch.tensor([i for g in groups for i in g], dtype=torch.long))
        p = patch_size_of(vit)
        self.patch_size = p
        self.patch_embeds = nn.ModuleList(nn.Conv2d(len(g), vit.embed_dim, p, stride=p) for g in groups)
        self.encoding = encoding
        if encoding == "sincos":
            check_gsd_encodable(vit, "satmae")  # an absolute position embedding of a square grid
            dim = check_group_dim(vit.embed_dim, default_group_dim(vit.embed_dim) if group_dim is None else group_dim,
                                  "group_encoding_dim")
            pos, group = fixed_codes(vit.embed_dim, vit.patch_embed.grid_size[0], len(groups), dim)
            write_frozen_pos_embed(vit, pos)
            self.group_embed = nn.Parameter(group, requires_grad=False)
        else:
            self.group_embed = nn.Parameter(torch.zeros(len(groups), vit.embed_dim))
            nn.init.trunc_normal_(self.group_embed, std=0.02)
        vit.patch_embed.requires_grad_(False)  # replaced by the group embeddings

    @property
    def vit(self):
        return self.base.model

    @property
    def num_groups(self) -> int:
        return len(self.group_sizes)

    def group_inputs(self, x: Tensor) -> List[Tensor]:
        return list(torch.split(x[:, self.channel_index], self.group_sizes, dim=1))

    def tokens(self, x: Tensor) -> Tensor:
        """(B, prefix + G * N, D) tokens with position and group encodings, CLS first."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ConfigError(f"backbone {self.name!r} expects (B, {self.in_chans}, H, W) input, got {tuple(x.shape)}")
        vit = self.vit
        prefix = vit.num_prefix_tokens
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        pos = resample_abs_pos_embed(vit.pos_embed, new_size=(h, w), old_size=vit.patch_embed.grid_size,
                                     num_prefix_tokens=prefix)
        parts = []
        for g, (embed, xg) in enumerate(zip(self.patch_embeds, self.group_inputs(x))):
            t = embed(xg).flatten(2).transpose(1, 2)  # (B, N, D), row-major patches
            parts.append(t + pos[:, prefix:] + self.group_embed[g])
        tokens = torch.cat(parts, dim=1)
        if vit.cls_token is not None:
            cls = (vit.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
        return vit.pos_drop(tokens)

    def forward(self, x: Tensor) -> Tensor:
        vit = self.vit
        tokens = self.tokens(x)
        n = tokens.shape[1] - vit.num_prefix_tokens
        all_tokens = torch.arange(n, device=x.device).expand(x.shape[0], -1)
        return pooled(vit, encode_visible(vit, tokens, all_tokens))


@METHODS.register("satmae", summary="SatMAE: band-group patch embeddings, group encodings, per-group reconstruction")
class SatMAE(BaseMethod):
    """Multi-spectral SatMAE.

    ``band_groups`` (default :data:`S2_GROUPS`, matched by band name to the data's bands; bands in
    no group become one more group unless ``extra_bands="drop"``) each get a patch embedding; the
    encoder (:class:`GroupViT`, built from the configured ViT backbone once the data's band names
    are known, and then ``self.backbone``) sees G x N tokens. Masking is ``independent`` (each
    group token masked on its own, ``round(G N ratio)`` masked) or ``consistent`` (the same
    ``round(N ratio)`` patches masked in every group). The decoder adds a position and a group
    encoding and has one linear head per group predicting that group's bands; the loss is the MSE
    averaged over all masked group tokens. ``z`` = pooled encoder output of the visible tokens.

    The defaults are the reference's (sustainlab-group/SatMAE) except ``target_band_order``:

    - ``norm_pix_loss`` (default false, as the reference's multi-spectral pretraining command):
      standardise the targets per patch, over all grouped bands of each spatial patch
      (``norm_pix_scope="patch"``, the reference) or over each (group, patch) on its own
      (``"group"``, ssl-rs's earlier default).
    - ``encoding``: ``"sincos"`` (the reference: fixed 2-D sine-cosine position code and fixed
      1-D sine-cosine group code in separate channel slices, encoder and decoder; the group slice
      is ``group_encoding_dim`` / ``decoder_group_encoding_dim`` wide, default a quarter of the
      width) or ``"learned"`` (the ViT's learned position embedding plus learned group
      encodings; in the decoder a full-width sine-cosine position code plus a learned group
      encoding).
    - ``target_band_order``: ``"group"`` (default: each group's head is scored on its own
      bands, as the paper describes) or ``"input"`` (the reference code: the heads' outputs,
      concatenated group after group, are scored against the bands in data order; the same when
      the groups list the bands in data order, not for the Sentinel-2 groups, where e.g. the
      first group's fourth output is scored against B05 and B08 against the second group's
      third output; ssl-rs keeps the paper's pairing by default).

    ``temporal: true`` is the temporal variant for data with several dates per place (needs
    ``data.temporal_positives=true``): the image and another date of the same place are cropped
    alike, each gets a learned date encoding, the encoder sees 2 x G x N tokens and every
    (date, group) is reconstructed. Evaluation still embeds single images (no date encoding).
    """

    n_views = 1
    #: the reference's multi-spectral pretraining command: AdamW, base lr 1e-4 per 256 images
    #: (linear scaling), betas (0.9, 0.95), weight decay 0.05 (not on biases and norms), 20
    #: warm-up epochs (of 200), cosine to 0
    recipe = OptimRecipe(name="adamw", lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, warmup_epochs=20)
    geo_embeddings = ("pooled",)

    def __init__(self, backbone, *, band_groups: Optional[BandGroups] = None, extra_bands: str = "group",
                 masking: str = "independent", mask_ratio: float = 0.75, decoder_dim: int = 256,
                 decoder_depth: int = 4, decoder_heads: int = 8, norm_pix_loss: bool = False,
                 norm_pix_scope: str = "patch", encoding: str = "sincos", group_encoding_dim: Optional[int] = None,
                 decoder_group_encoding_dim: Optional[int] = None, target_band_order: str = "group",
                 temporal: bool = False, bands: Optional[Sequence[str]] = None, **kwargs):
        super().__init__(backbone, **kwargs)
        timm_vit(backbone, "satmae")
        self.temporal = bool(temporal)
        self.num_dates = 2 if self.temporal else 1
        if self.temporal:  # the two dates are stacked along the bands and go through one draw
            self.batch_keys = frozenset({"image_positive"})
            self.needs_geometric_views = True  # colour ops would mix the two dates' bands
        if masking not in ("independent", "consistent"):
            raise ConfigError(f"method 'satmae': masking must be 'independent' or 'consistent', got {masking!r}")
        if extra_bands not in ("group", "drop"):
            raise ConfigError(f"method 'satmae': extra_bands must be 'group' or 'drop', got {extra_bands!r}")
        self.band_groups = [list(g) for g in (band_groups if band_groups is not None else S2_GROUPS)]
        self.extra_bands = extra_bands
        self.masking = masking
        self.mask_ratio = check_mask_ratio(mask_ratio, "satmae")
        if norm_pix_scope not in NORM_PIX_SCOPES:
            raise ConfigError(f"method 'satmae': norm_pix_scope must be one of {NORM_PIX_SCOPES}, "
                              f"got {norm_pix_scope!r}")
        if encoding not in ENCODINGS:
            raise ConfigError(f"method 'satmae': encoding must be one of {ENCODINGS}, got {encoding!r}")
        if target_band_order not in TARGET_BAND_ORDERS:
            raise ConfigError(f"method 'satmae': target_band_order must be one of {TARGET_BAND_ORDERS}, "
                              f"got {target_band_order!r}")
        self.norm_pix_loss = bool(norm_pix_loss)
        self.norm_pix_scope = norm_pix_scope
        self.encoding = encoding
        self.target_band_order = target_band_order
        self.group_encoding_dim = group_encoding_dim
        self.decoder_group_dim = None
        if encoding == "sincos":
            self.decoder_group_dim = check_group_dim(
                decoder_dim, default_group_dim(decoder_dim) if decoder_group_encoding_dim is None
                else decoder_group_encoding_dim, "decoder_group_encoding_dim")
            if group_encoding_dim is not None:
                check_group_dim(backbone.num_features, group_encoding_dim, "group_encoding_dim")
        self.decoder_args = (decoder_dim, decoder_depth, decoder_heads)
        self.groups: Optional[List[List[int]]] = None
        if bands is not None:
            self.build_encoder(list(bands))

    def setup_data(self, dataset) -> None:
        """The band names, and so the groups and the encoder, are known once the data is."""
        if self.groups is None:
            self.build_encoder(list(dataset.bands))

    def build_encoder(self, bands: List[str]) -> None:
        if len(bands) != self.backbone.in_chans:
            raise ConfigError(f"method 'satmae': {len(bands)} band names for a backbone of "
                              f"{self.backbone.in_chans} bands")
        self.groups = resolve_band_groups(self.band_groups, bands, self.extra_bands)
        self.backbone = GroupViT(self.backbone, self.groups, self.encoding, self.group_encoding_dim)
        dim, depth, heads = self.decoder_args
        self.decoder = MaskedDecoder(self.backbone.num_features, dim, depth, heads,
                                     num_prefix_tokens=self.backbone.vit.num_prefix_tokens)
        if self.encoding == "sincos":
            group = F.pad(sincos_1d(self.decoder_group_dim, torch.arange(len(self.groups))),
                          (dim - self.decoder_group_dim, 0))
            self.decoder_group_embed = nn.Parameter(group, requires_grad=False)
        else:
            self.decoder_group_embed = nn.Parameter(torch.zeros(len(self.groups), dim))
            nn.init.trunc_normal_(self.decoder_group_embed, std=0.02)
        if self.temporal:
            self.date_embed = nn.Parameter(torch.zeros(self.num_dates, self.backbone.num_features))
            self.decoder_date_embed = nn.Parameter(torch.zeros(self.num_dates, dim))
            nn.init.trunc_normal_(self.date_embed, std=0.02)
            nn.init.trunc_normal_(self.decoder_date_embed, std=0.02)
        p = self.backbone.patch_size
        self.heads = nn.ModuleList(nn.Linear(dim, p * p * len(g)) for g in self.groups)

    @classmethod
    def inference_encoder(cls, backbone: nn.Module, method_args: Mapping[str, Any], bands: Sequence[str]) -> GroupViT:
        """The band-group encoder around a freshly built plain ``backbone``, ready for the
        ``backbone.*`` weights of a SatMAE checkpoint or export."""
        defaults = SatMAE.__init__.__kwdefaults__
        groups = method_args.get("band_groups") or defaults["band_groups"] or S2_GROUPS
        extra = method_args.get("extra_bands", defaults["extra_bands"])
        encoding = method_args.get("encoding", defaults["encoding"])
        group_dim = method_args.get("group_encoding_dim", defaults["group_encoding_dim"])
        return GroupViT(backbone, resolve_band_groups(groups, list(bands), extra), encoding, group_dim)

    @property
    def embed_dim(self) -> int:
        return self.backbone.num_features

    @property
    def num_slots(self) -> int:
        """Token blocks of N patches: one per (date, group), date-major then group."""
        return self.num_dates * len(self.groups)

    def mask(self, batch: int, num_patches: int, device=None) -> Tuple[Tensor, Tensor]:
        """``(idx_keep, idx_mask)`` over the (dates x) G x N group tokens, slot-major."""
        slots = self.num_slots
        if self.masking == "independent":
            return random_patch_mask(batch, slots * num_patches, self.mask_ratio, device)
        keep, masked = random_patch_mask(batch, num_patches, self.mask_ratio, device)
        shift = num_patches * torch.arange(slots, device=device).view(1, slots, 1)  # same patches in every slot
        return (keep.unsqueeze(1) + shift).flatten(1), (masked.unsqueeze(1) + shift).flatten(1)

    def num_masked_tokens(self, num_patches: int) -> int:
        if self.masking == "independent":
            return num_masked(self.num_slots * num_patches, self.mask_ratio)
        return self.num_slots * num_masked(num_patches, self.mask_ratio)

    def make_views(self, batch):
        """One view; in the temporal variant one view per date, cropped and turned alike (the two
        normalised dates are stacked along the bands and go through one draw of the transform)."""
        if not self.temporal:
            return super().make_views(batch)
        aug = self.augmentation
        both = torch.cat([aug.normalized(batch["image"]), aug.normalized(batch["image_positive"])], dim=1)
        view = aug.transform(both, 0)
        return list(torch.split(view, batch["image"].shape[1], dim=1))

    def decoder_encoding(self, grid: int) -> Tensor:
        """(slots x N, decoder_dim) position + group (+ date) encoding of the decoder's tokens, in
        token order. ``encoding="sincos"``: the 2-D sine-cosine position code in the first
        ``decoder_dim - decoder_group_encoding_dim`` channels and the fixed group code in the
        rest; ``"learned"``: a full-width sine-cosine position code plus the learned group code."""
        dim, n, groups = self.decoder.decoder_dim, grid * grid, len(self.groups)
        if self.encoding == "sincos":
            pos = F.pad(sincos_pos_embed(dim - self.decoder_group_dim, grid), (0, self.decoder_group_dim))
        else:
            pos = sincos_pos_embed(dim, grid)
        pos = pos.to(self.decoder_group_embed.device).repeat(self.num_slots, 1)
        pos = pos + self.decoder_group_embed.repeat_interleave(n, dim=0).repeat(self.num_dates, 1)
        if self.temporal:
            pos = pos + self.decoder_date_embed.repeat_interleave(groups * n, dim=0)
        return pos

    def reconstruct(self, images: Union[Tensor, Sequence[Tensor]], idx_keep: Tensor, idx_mask: Tensor,
                    target: Union[Tensor, Sequence[Tensor], None] = None) -> Tuple[Tensor, Tensor]:
        """Loss and ``z`` for given masks over the group tokens. ``images`` is one image batch, or
        one per date in the temporal variant; ``target`` (same form) defaults to ``images``."""
        if self.groups is None:
            raise ConfigError(UNKNOWN_BANDS)
        frames = [images] if isinstance(images, Tensor) else list(images)
        targets = frames if target is None else ([target] if isinstance(target, Tensor) else list(target))
        if len(frames) != self.num_dates or len(targets) != self.num_dates:
            raise ConfigError(f"method 'satmae': expects {self.num_dates} image(s) per place, got {len(frames)}")
        encoder, prefix = self.backbone, self.backbone.vit.num_prefix_tokens
        grid = check_image(frames[0], encoder.patch_size, "satmae")
        n, groups = grid * grid, len(self.groups)
        tokens = []
        for d, frame in enumerate(frames):
            t = encoder.tokens(frame)
            if self.temporal:  # which date: added to every token of that image
                t = torch.cat([t[:, :prefix], t[:, prefix:] + self.date_embed[d]], dim=1)
            tokens.append(t if d == 0 else t[:, prefix:])
        encoded = encode_visible(encoder.vit, torch.cat(tokens, dim=1), idx_keep)
        decoded = self.decoder(encoded, idx_keep, self.num_slots * n, pos=self.decoder_encoding(grid))
        errors = []
        for d, frame_target in enumerate(targets):
            slots = [(d * groups + g) * n for g in range(groups)]
            preds = [head(decoded[:, s:s + n]) for s, head in zip(slots, self.heads)]
            errors.append(group_token_errors(preds, frame_target, self.groups, encoder.patch_size, self.norm_pix_loss,
                                             self.norm_pix_scope, self.target_band_order))  # (B, G * N)
        per_token = torch.cat(errors, dim=1)  # (B, slots * N), in token order
        loss = get_at_index(per_token.unsqueeze(-1), idx_mask).mean()
        return loss, pooled(encoder.vit, encoded)

    def ssl_loss(self, views, batch):
        if self.groups is None:
            raise ConfigError(UNKNOWN_BANDS)
        frames = views[: self.num_dates]
        grid = check_image(frames[0], self.backbone.patch_size, "satmae")
        idx_keep, idx_mask = self.mask(frames[0].shape[0], grid * grid, frames[0].device)
        loss, z = self.reconstruct(frames, idx_keep, idx_mask)
        return loss, z, {}
