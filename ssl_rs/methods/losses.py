"""Losses shared by several methods (one place, so sibling methods never import each other).

- :func:`image_location_info_nce`: the symmetric in-batch InfoNCE between paired embeddings
  (CSP's image-location objective, Cross-Scale MAE's cross-scale consistency term).
- :func:`masked_patch_mse` with :func:`normalize_patches` / :func:`patch_mean_std`: MAE's
  masked-patch reconstruction error and its per-patch normalised targets (MAE, SatMAE, ScaleMAE,
  Cross-Scale MAE, NeighborMAE).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def image_location_info_nce(image: Tensor, location: Tensor, temperature: float,
                            extra_locations: Optional[Tensor] = None, gather_distributed: bool = True) -> Tensor:
    """Symmetric in-batch InfoNCE between paired image and location embeddings.

    With cosine logits ``s_ij = <img_i, loc_j> / (|img_i| |loc_j| temperature)`` the loss is
    ``(CE(s, I) + CE(s^T, I)) / 2``: each image must pick its own place among the batch's places,
    and each place its own image. ``extra_locations`` (embeddings of random places) are further
    negatives for the image -> location direction only. Under DDP (``gather_distributed``) the
    batch is the global one: each process scores its own rows against the embeddings of every
    process (lightly's differentiable ``gather``), so the mean of the processes' losses equals
    the single-process loss on the whole batch (equal per-process batches, as ``drop_last`` gives).
    """
    from lightly.utils import dist

    img = F.normalize(image.float(), dim=-1)
    loc = F.normalize(location.float(), dim=-1)
    all_img, all_loc, offset = img, loc, 0
    if gather_distributed and dist.world_size() > 1:
        all_img, all_loc = torch.cat(dist.gather(img)), torch.cat(dist.gather(loc))
        offset = dist.rank() * img.shape[0]
    labels = torch.arange(img.shape[0], device=img.device) + offset
    image_to_location = img @ all_loc.T / temperature
    location_to_image = loc @ all_img.T / temperature
    if extra_locations is not None and extra_locations.numel():
        extra = F.normalize(extra_locations.float(), dim=-1)
        image_to_location = torch.cat([image_to_location, img @ extra.T / temperature], dim=1)
    return 0.5 * (F.cross_entropy(image_to_location, labels) + F.cross_entropy(location_to_image, labels))


def patch_mean_std(patches: Tensor, eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """Mean and std (with ``eps`` added to the variance) of each patch over its pixels and bands;
    the unbiased variance, as the MAE and NeighborMAE authors' code computes it."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return mean, (var + eps).sqrt()


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's per-patch normalised targets: subtract each patch's mean, divide by its std."""
    mean, std = patch_mean_std(patches, eps)
    return (patches - mean) / std


def masked_patch_mse(pred: Tensor, target: Tensor, idx_mask: Tensor, norm_pix: bool = False) -> Tensor:
    """Mean squared error per patch, averaged over the masked patches only (MAE eq.)."""
    if norm_pix:
        target = normalize_patches(target)
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, N)
    return per_patch.gather(1, idx_mask).mean()
