"""Band-agnostic batched transforms that kornia lacks or defines for RGB only.

The random ones are kornia augmentations (``p`` gate, ``same_on_batch``, parameters drawn per
sample from the global torch RNG of the device the module lives on), so they mix freely with
``kornia.augmentation`` modules inside an ``ImageSequential``. All work on (B, C, H, W) float
tensors with any number of bands C.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from kornia.augmentation import GeometricAugmentationBase2D, IntensityAugmentationBase2D
from kornia.augmentation import random_generator as rg
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError


class RandomFlipRot90(GeometricAugmentationBase2D):
    """Random 90-degree turn, then random horizontal and vertical flips, as one exact permutation.

    Per image: turn counter-clockwise by ``k * 90`` degrees with ``k`` uniform in {0, 1, 2, 3}
    (when ``rotate``), then flip left-right with probability ``hflip_p``, then top-bottom with
    probability ``vflip_p``. The pixels are permuted, never resampled, and the whole batch takes
    one gather instead of a pass per operation. kornia's ``RandomRotation90`` instead warps with
    bilinear interpolation and rounds a continuous draw, which makes k=0 and k=3 half as likely
    as k=1 and k=2. Square images only (a turn would change their shape otherwise).
    """

    def __init__(
        self,
        rotate: bool = True,
        hflip_p: float = 0.5,
        vflip_p: float = 0.5,
        p: float = 1.0,
        same_on_batch: bool = False,
        keepdim: bool = False,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        for name, value in (("hflip_p", hflip_p), ("vflip_p", vflip_p)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
        self.rotate = bool(rotate)
        self.hflip_p = float(hflip_p)
        self.vflip_p = float(vflip_p)
        self._tables_cache: Dict[Tuple[int, torch.device, torch.dtype], Tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rotate={self.rotate}, hflip_p={self.hflip_p}, vflip_p={self.vflip_p}, "
            f"p={self.p}, same_on_batch={self.same_on_batch})"
        )

    def generate_parameters(self, batch_shape: Tuple[int, ...]) -> Dict[str, Tensor]:
        n = 1 if self.same_on_batch else batch_shape[0]
        k = torch.randint(0, 4 if self.rotate else 1, (n,), device=self.device)
        hflip = torch.rand(n, device=self.device) < self.hflip_p
        vflip = torch.rand(n, device=self.device) < self.vflip_p
        # one code per element of the symmetry group of the square: k * 4 + hflip * 2 + vflip
        code = k * 4 + hflip.long() * 2 + vflip.long()
        return {"code": code.expand(batch_shape[0])}

    def _tables(self, side: int, device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """Per code (16 of them): the flat input index each output pixel comes from, (16, side**2),
        and the pixel-coordinate matrix (x right, y down) mapping input (x, y, 1) to output
        coordinates, (16, 3, 3), kornia's convention. Built once per side, device and dtype.

        Applying the operations to a grid of indices yields the index map, since each one only
        moves pixels."""
        key = (side, device, dtype)
        if key not in self._tables_cache:
            grid = torch.arange(side * side).view(side, side)
            n = float(side - 1)
            turn = torch.tensor([[0, 1, 0], [-1, 0, n], [0, 0, 1]], dtype=torch.float64)
            hflip = torch.tensor([[-1, 0, n], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
            vflip = torch.tensor([[1, 0, 0], [0, -1, n], [0, 0, 1]], dtype=torch.float64)
            eye = torch.eye(3, dtype=torch.float64)
            maps, mats = [], []
            for k in range(4):
                turned = torch.rot90(grid, k, dims=(0, 1))
                for h in (False, True):
                    flipped = turned.flip(1) if h else turned
                    for v in (False, True):
                        maps.append((flipped.flip(0) if v else flipped).reshape(-1))
                        mats.append((vflip if v else eye) @ (hflip if h else eye) @ torch.linalg.matrix_power(turn, k))
            self._tables_cache[key] = (torch.stack(maps).to(device), torch.stack(mats).to(device, dtype))
        return self._tables_cache[key]

    def compute_transformation(self, input: Tensor, params: Dict[str, Tensor], flags: Dict[str, Any]) -> Tensor:
        matrices = self._tables(input.shape[-1], input.device, input.dtype)[1]
        return matrices[params["code"].to(input.device)]

    def apply_transform(
        self, input: Tensor, params: Dict[str, Tensor], flags: Dict[str, Any], transform: Optional[Tensor] = None
    ) -> Tensor:
        b, c, h, w = input.shape
        if h != w:
            raise ConfigError(f"{type(self).__name__} needs square images, got {h}x{w}")
        index = self._tables(h, input.device, input.dtype)[0][params["code"].to(input.device)]  # (B, H*W)
        out = input.reshape(b, c, h * w).gather(2, index[:, None, :].expand(b, c, h * w))
        return out.view(b, c, h, w)

    def inverse_transform(
        self,
        input: Tensor,
        flags: Dict[str, Any],
        transform: Optional[Tensor] = None,
        size: Optional[Tuple[int, int]] = None,
    ) -> Tensor:
        b, c, h, w = input.shape
        index = self._tables(h, input.device, input.dtype)[0][self._params["code"].to(input.device)]
        # scatter each output pixel back to where it came from
        out = torch.empty_like(input).reshape(b, c, h * w)
        out.scatter_(2, index[:, None, :].expand(b, c, h * w), input.reshape(b, c, h * w))
        return out.view(b, c, h, w)


class RandomRot90(RandomFlipRot90):
    """Turn each image counter-clockwise by ``k * 90`` degrees, ``k`` uniform in {0, 1, 2, 3};
    exact (a pixel permutation). Square images only."""

    def __init__(self, p: float = 1.0, same_on_batch: bool = False, keepdim: bool = False) -> None:
        super().__init__(rotate=True, hflip_p=0.0, vflip_p=0.0, p=p, same_on_batch=same_on_batch, keepdim=keepdim)


class RandomBandMeanGrayscale(IntensityAugmentationBase2D):
    """Replace every band by the per-pixel mean over bands (grayscale for any band count).

    kornia's ``RandomGrayscale`` uses RGB luminance weights when there are 3 channels; here all
    bands always weigh the same.
    """

    def __init__(self, p: float = 0.2, same_on_batch: bool = False, keepdim: bool = False) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)

    def apply_transform(
        self, input: Tensor, params: Dict[str, Tensor], flags: Dict[str, Any], transform: Optional[Tensor] = None
    ) -> Tensor:
        return input.mean(dim=-3, keepdim=True).expand_as(input).contiguous()


class RandomBrightnessContrast(IntensityAugmentationBase2D):
    """Jitter brightness and contrast together, the same way on every band.

    Meant for normalised data (units of per-band standard deviations), where kornia's
    ``RandomBrightness``/``RandomContrast`` assume [0, 1] images. With ``m`` the image's mean
    over bands and pixels, ``c ~ U(1 - contrast, 1 + contrast)`` and
    ``b ~ U(-brightness, brightness)``, drawn per image::

        out = (x - m) * c + m + b

    so contrast scales the deviations from the image mean (as torchvision does around the
    grayscale mean) and brightness shifts all bands by ``b`` standard deviations.
    """

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        p: float = 0.8,
        same_on_batch: bool = False,
        keepdim: bool = False,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        if not brightness >= 0:
            raise ConfigError(f"brightness must be >= 0, got {brightness}")
        if not 0 <= contrast < 1:
            raise ConfigError(f"contrast must be in [0, 1) so that the contrast factor stays positive, got {contrast}")
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self._param_generator = rg.PlainUniformGenerator(
            (torch.tensor([-self.brightness, self.brightness]), "brightness", None, None),
            (torch.tensor([1.0 - self.contrast, 1.0 + self.contrast]), "contrast", None, None),
        )

    def apply_transform(
        self, input: Tensor, params: Dict[str, Tensor], flags: Dict[str, Any], transform: Optional[Tensor] = None
    ) -> Tensor:
        shape = (-1,) + (1,) * (input.ndim - 1)
        c = params["contrast"].to(input.device, input.dtype).view(shape)
        b = params["brightness"].to(input.device, input.dtype).view(shape)
        m = input.mean(dim=(-3, -2, -1), keepdim=True)
        # (x - m) * c + m + b, as one fused multiply-add over the image
        return torch.addcmul(m * (1.0 - c) + b, input, c)


def blur_kernel_size(size: int) -> int:
    """Odd Gaussian kernel of about 10% of the image side (SimCLR's choice), at least 3."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


class CenterCropResize(nn.Module):
    """Deterministic: centre-crop ``crop_fraction`` of each side, then resize to ``size`` x ``size``.

    Bilinear with antialiasing (what matters when shrinking); an input already of the target
    size and ``crop_fraction=1`` passes through untouched.
    """

    def __init__(self, size: int, crop_fraction: float = 1.0):
        super().__init__()
        if not 0 < crop_fraction <= 1:
            raise ConfigError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        self.size = int(size)
        self.crop_fraction = float(crop_fraction)

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        if self.crop_fraction < 1:
            ch, cw = max(1, round(h * self.crop_fraction)), max(1, round(w * self.crop_fraction))
            top, left = (h - ch) // 2, (w - cw) // 2
            images = images[..., top : top + ch, left : left + cw]
            h, w = ch, cw
        if (h, w) == (self.size, self.size):
            return images
        return F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)

    def extra_repr(self) -> str:
        return f"size={self.size}, crop_fraction={self.crop_fraction}"


def check_range(owner: str, name: str, value: Sequence[float], low: float, high: float) -> Tuple[float, float]:
    """``value`` as a (lo, hi) float pair with ``low <= lo <= hi <= high``, or a ConfigError."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{owner}: {name} must be a pair (low, high), got {value!r}") from None
    if not low <= lo <= hi <= high:
        raise ConfigError(f"{owner}: {name} must satisfy {low} <= low <= high <= {high}, got ({lo}, {hi})")
    return lo, hi
