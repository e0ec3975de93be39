"""Random crops drawn inside a training step by the methods that make their own crops
(``makes_own_crops = True``): ScaleMAE and Cross-Scale MAE crop squares to know each input's
ground sample distance; NeighborMAE draws boxes that place an image and its neighbour in one
frame. The augmentation pipeline of those methods does not crop (the contract check in
``train.build`` refuses one that does).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


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


def sample_crop_boxes(n: int, scale: Sequence[float], ratio: Sequence[float], device=None) -> Tensor:
    """``(n, 4)`` random crop boxes ``(u0, v0, u1, v1)`` in fractions of an image (u to the right,
    v down): area fraction uniform in ``scale``, aspect w/h log-uniform in ``ratio``, clipped to the
    image, placed uniformly."""
    area = torch.empty(n, device=device).uniform_(float(scale[0]), float(scale[1]))
    aspect = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    w = (area * aspect).sqrt().clamp(max=1.0)
    h = (area / aspect).sqrt().clamp(max=1.0)
    u0 = torch.rand(n, device=device) * (1 - w)
    v0 = torch.rand(n, device=device) * (1 - h)
    return torch.stack([u0, v0, u0 + w, v0 + h], dim=-1)


def box_affine(scale_x: Tensor, shift_x: Tensor, scale_y: Tensor, shift_y: Tensor) -> Tensor:
    """``(..., 2, 3)`` affine matrices of ``F.affine_grid`` that scale and shift x and y."""
    zero = torch.zeros_like(scale_x)
    return torch.stack([torch.stack([scale_x, zero, shift_x], -1), torch.stack([zero, scale_y, shift_y], -1)], -2)


def crop_resize(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop each image to its box ``(u0, v0, u1, v1)`` and resize to ``size`` (bilinear)."""
    u0, v0, u1, v1 = boxes.float().unbind(-1)
    theta = box_affine(u1 - u0, u0 + u1 - 1, v1 - v0, v0 + v1 - 1)
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", align_corners=False)
