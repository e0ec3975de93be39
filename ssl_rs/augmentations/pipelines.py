"""View pipelines: raw (B, C, H, W) batches in, a list of normalised augmented views out.

Everything runs batched on the device the images are on; the per-band statistics are
buffers, so ``pipeline.to(device)`` moves them (and kornia moves its parameter samplers).
"""

from __future__ import annotations

import hashlib
import math
import numbers
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .transforms import CenterCropResize


class BandNormalize(nn.Module):
    """Cast to float32 and normalise each band: ``(x - mean[c]) / std[c]``.

    ``owner`` names the pipeline in error messages.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], owner: str = "augmentation"):
        super().__init__()
        self.owner = owner
        mean_t = torch.as_tensor([float(v) for v in mean], dtype=torch.float32)
        std_t = torch.as_tensor([float(v) for v in std], dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.numel() == 0:
            raise ConfigError(f"{owner}: mean must list one value per band, got {list(mean)!r}")
        if std_t.shape != mean_t.shape:
            raise ConfigError(f"{owner}: mean has {mean_t.numel()} bands but std has {std_t.numel()}")
        if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all() and (std_t > 0).all()):
            raise ConfigError(f"{owner}: mean must be finite and std finite and > 0, got std {std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    @property
    def bands(self) -> int:
        return self.mean.shape[1]

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4:
            raise ConfigError(f"{self.owner}: expects (B, C, H, W) images, got shape {tuple(images.shape)}")
        if images.shape[1] != self.bands:
            raise ConfigError(
                f"{self.owner}: input has {images.shape[1]} bands but normalisation statistics have {self.bands}"
            )
        x = images.to(torch.float32)  # uint16 -> float32 happens here, on the images' device
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        # (x - mean) / std as one multiply-add over the batch (the per-band factors are tiny)
        return torch.addcmul(-mean / std, x, 1.0 / std)


def _call_seed(seed: int, call: int) -> int:
    """A 63-bit seed for call number ``call`` of a pipeline seeded with ``seed`` (hashed, so
    neighbouring seeds and calls give unrelated streams)."""
    digest = hashlib.blake2b(f"{seed}:{call}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class ViewPipeline(nn.Module):
    """``forward(images) -> [view_1, ..., view_n]``: normalise once, then run each view's transform.

    Args:
        name: the preset name, used in error messages.
        mean, std: per-band normalisation statistics (the dataset's ``band_mean``/``band_std``).
        views: one transform per view, mapping a normalised (B, C, H, W) batch to a
            (B, C, size, size) view; the same module may appear several times (multi-crop's local
            views), each call drawing fresh parameters for every sample.
        sizes: the output side length of each view.
        seed: ``None`` draws from the global torch RNG (so ``seed_everything`` or the caller's
            ``fork_rng`` governs it); an int makes call number ``i`` of this pipeline draw from
            a stream seeded by ``(seed, i)``, inside ``torch.random.fork_rng`` so the global RNG
            state is left as it was.
        random_crops: whether the views are random crops (a method that crops itself, to know
            each input's footprint, refuses such a pipeline).
        colour_ops: whether a view changes intensities band by band (jitter, blur, grayscale);
            a pipeline without them is purely geometric, so it may transform a stack of images
            (two dates along the bands) in one draw.

    Attributes:
        n_views: number of views returned.
        sizes: output size of each view.
        calls: number of calls so far (the position in the seeded stream; set it to replay).

    What methods may use: ``pipeline(images)``, :meth:`view`, :meth:`normalized`,
    :meth:`transform`, ``sizes``, ``n_views``, ``random_crops`` and ``colour_ops``.
    """

    def __init__(
        self,
        name: str,
        mean: Sequence[float],
        std: Sequence[float],
        views: Sequence[nn.Module],
        sizes: Sequence[int],
        seed: Optional[int] = None,
        *,
        random_crops: bool = True,
        colour_ops: bool = True,
    ):
        super().__init__()
        if len(views) == 0 or len(views) != len(sizes):
            raise ConfigError(
                f"augmentation {name!r}: needs one output size per view, got {len(views)} views and {len(sizes)} sizes"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ConfigError(f"augmentation {name!r}: seed must be an integer or None, got {seed!r}")
        self.name = name
        self.normalize = BandNormalize(mean, std, owner=f"augmentation {name!r}")
        # Keep each distinct module once (state_dict, .to()) and remember which one makes each view.
        unique: List[nn.Module] = []
        for view in views:
            if not any(view is u for u in unique):
                unique.append(view)
        self.transforms = nn.ModuleList(unique)
        self._plan = [next(i for i, u in enumerate(unique) if u is view) for view in views]
        self.sizes = [int(s) for s in sizes]
        self.n_views = len(self.sizes)
        self.seed = None if seed is None else int(seed)
        self.calls = 0
        self.random_crops = bool(random_crops)
        self.colour_ops = bool(colour_ops)

    @property
    def bands(self) -> int:
        return self.normalize.bands

    def _views(self, images: Tensor) -> List[Tensor]:
        x = self.normalize(images)
        return [self.transforms[i](x) for i in self._plan]

    def view(self, images: Tensor, index: int) -> Tensor:
        """Only view ``index`` (e.g. the second view made from a temporal positive), from the
        current RNG state."""
        return self.transform(self.normalized(images), index)

    def normalized(self, images: Tensor) -> Tensor:
        """``images`` (any dtype) as float32, normalised band by band; no random operation."""
        return self.normalize(images)

    def transform(self, normalized: Tensor, index: int) -> Tensor:
        """View ``index``'s transform applied to already normalised images, one draw per sample
        from the current RNG state (a stack of dates along the bands is transformed alike)."""
        return self.transforms[self._plan[index]](normalized)

    def forward(self, images: Tensor) -> List[Tensor]:
        if self.seed is None:
            return self._views(images)
        call_seed = _call_seed(self.seed, self.calls)
        self.calls += 1
        # kornia samples on the device its modules were moved to; fork and seed that one and the
        # images' one (plus the CPU, always forked by fork_rng).
        cuda = sorted({d for d in (images.device, self.normalize.mean.device) if d.type == "cuda"}, key=str)
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(call_seed)
            for device in cuda:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(call_seed)
            return self._views(images)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, n_views={self.n_views}, sizes={self.sizes}, seed={self.seed}, "
                f"random_crops={self.random_crops}, colour_ops={self.colour_ops}")


class Preprocess(nn.Module):
    """Deterministic preprocessing for feature extraction: ``preprocess(images) -> (B, C, size, size)``.

    float32, per-band normalisation, then optional centre crop (``crop_fraction`` of each side)
    and a resize to ``size``; the same output as the single view of the ``eval`` preset.

    With ``resize=R`` instead: a resize to R x R, then a centre crop of ``size`` px, the
    classic evaluation transform (torchgeo's Resize(256) + CenterCrop(224) for SSL4EO-S12
    weights) that weights pretrained and benchmarked that way expect. The crop keeps the middle
    ``size / R`` of the tile at the resolution the weights saw, which a crop-then-resize only
    approximates. Normalising first is exact: both steps are linear per band.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], crop_fraction: float = 1.0,
                 resize: Optional[int] = None):
        super().__init__()
        check_size("preprocess", size)
        self.normalize = BandNormalize(mean, std, owner="preprocess")
        self.crop: Optional[int] = None
        if resize is not None:
            check_size("preprocess", resize, "resize")
            if crop_fraction != 1.0:
                raise ConfigError("preprocess: give crop_fraction or resize, not both")
            if resize < size:
                raise ConfigError(f"preprocess: the {size} px centre crop is larger than the {resize} px image it "
                                  "crops from")
            self.resize = CenterCropResize(resize)
            self.crop = int(size)
        else:
            self.resize = CenterCropResize(size, crop_fraction)
        self.size = int(size)

    def forward(self, images: Tensor) -> Tensor:
        out = self.resize(self.normalize(images))
        if self.crop is not None:
            top, left = (out.shape[-2] - self.crop) // 2, (out.shape[-1] - self.crop) // 2
            out = out[..., top : top + self.crop, left : left + self.crop]
        return out


def eval_geometry(backbone: object, size: Optional[int], data_size: int) -> Tuple[int, Optional[int]]:
    """``(size, resize)`` of the :class:`Preprocess` that evaluates ``backbone``: the
    ``eval_transforms`` it carries (zoo weights, e.g. ``{"resize": 256, "center_crop": 224}`` ->
    ``(224, 256)``) when ``size`` is None or is their output size; otherwise, and for backbones
    without any, a plain resize to ``size`` (default ``data_size``, the tiles' side)."""
    transforms = dict(getattr(backbone, "eval_transforms", None) or {})
    final = transforms.get("center_crop", transforms.get("resize"))
    if final is None or (size is not None and size != final):
        return (size if size is not None else data_size), None
    if "center_crop" in transforms:  # a crop without a resize crops the tile as it is
        return final, transforms.get("resize", data_size)
    return final, None


def check_size(owner: str, size: int, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"{owner}: {name} must be a positive integer, got {size!r}")
    return size


def check_count(owner: str, name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_probability(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ConfigError(f"{owner}: {name} must be a probability in [0, 1], got {value!r}")
    return float(value)
