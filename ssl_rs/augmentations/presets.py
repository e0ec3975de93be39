"""Registered augmentation presets. Every factory has the signature

    factory(size, mean, std, n_views=2, seed=None, **preset_options) -> ViewPipeline

and is built by name: ``AUGMENTATIONS.create("standard", size=120, mean=ds.band_mean,
std=ds.band_std)``. Colour operations act on normalised data and treat all bands alike.

Default colour strengths (``standard``, and ``multicrop`` with ``colour=True``): brightness shift
and contrast spread of 0.4 in normalised units (BYOL's strength), applied together with p=0.8;
Gaussian blur with sigma in (0.1, 2.0) pixels (SimCLR) and an odd kernel of ~10% of the view
side, p=0.5; band-mean grayscale, p=0.2.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from kornia import augmentation as K
from kornia.augmentation.container import ImageSequential
from torch import nn

from ..errors import ConfigError
from ..registry import AUGMENTATIONS
from .pipelines import ViewPipeline, check_count, check_probability, check_size
from .transforms import (
    CenterCropResize,
    RandomBandMeanGrayscale,
    RandomBrightnessContrast,
    RandomFlipRot90,
    blur_kernel_size,
    check_range,
)

ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def geometric_ops(
    owner: str, size: int, scale: Sequence[float], ratio: Sequence[float], scale_name: str = "scale"
) -> List[nn.Module]:
    """Random resized crop to size x size, then a uniform random 90-degree turn, a horizontal flip
    (p=0.5) and a vertical flip (p=0.5), the last three as one exact pixel permutation."""
    scale = check_range(owner, scale_name, scale, 0.0, 1.0)
    if scale[1] <= 0:
        raise ConfigError(f"{owner}: {scale_name} must allow a crop larger than 0, got {scale}")
    ratio = check_range(owner, "ratio", ratio, 1e-3, 1e3)
    return [
        # "resample" crops and resizes the whole batch in one warp; kornia's default "slice"
        # mode loops over the samples in Python.
        K.RandomResizedCrop((size, size), scale=scale, ratio=ratio, cropping_mode="resample"),
        RandomFlipRot90(rotate=True, hflip_p=0.5, vflip_p=0.5),
    ]


def colour_ops(
    owner: str,
    size: int,
    brightness: float,
    contrast: float,
    jitter_p: float,
    blur_p: float,
    blur_sigma: Sequence[float],
    grayscale_p: float,
) -> List[nn.Module]:
    """Brightness/contrast jitter, Gaussian blur and band-mean grayscale on normalised views."""
    sigma = check_range(owner, "blur_sigma", blur_sigma, 1e-3, 1e3)
    try:
        jitter = RandomBrightnessContrast(brightness, contrast, p=check_probability(owner, "jitter_p", jitter_p))
    except ConfigError as err:
        raise ConfigError(f"{owner}: {err}") from None
    return [
        jitter,
        K.RandomGaussianBlur(blur_kernel_size(size), sigma, p=check_probability(owner, "blur_p", blur_p)),
        RandomBandMeanGrayscale(p=check_probability(owner, "grayscale_p", grayscale_p)),
    ]


@AUGMENTATIONS.register("geometric", summary="random resized crop (scale 0.2-1), 90-degree turns, h/v flips")
def geometric(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    n_views: int = 2,
    seed: Optional[int] = None,
    scale: Sequence[float] = (0.2, 1.0),
    ratio: Sequence[float] = ASPECT_RATIO,
) -> ViewPipeline:
    """Geometric views only: RandomResizedCrop(size, scale), k*90-degree turn with k uniform in
    {0..3}, horizontal flip p=0.5, vertical flip p=0.5. Band values are only resampled."""
    owner = "augmentation 'geometric'"
    check_size(owner, size)
    check_count(owner, "n_views", n_views, 1)
    view = ImageSequential(*geometric_ops(owner, size, scale, ratio))
    return ViewPipeline("geometric", mean, std, [view] * n_views, [size] * n_views, seed=seed, colour_ops=False)


@AUGMENTATIONS.register("standard", summary="geometric + brightness/contrast jitter, blur, band-mean grayscale")
def standard(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    n_views: int = 2,
    seed: Optional[int] = None,
    scale: Sequence[float] = (0.2, 1.0),
    ratio: Sequence[float] = ASPECT_RATIO,
    brightness: float = 0.4,
    contrast: float = 0.4,
    jitter_p: float = 0.8,
    blur_p: float = 0.5,
    blur_sigma: Sequence[float] = (0.1, 2.0),
    grayscale_p: float = 0.2,
) -> ViewPipeline:
    """SimCLR-style views for multispectral data: ``geometric``, then (on normalised values)
    brightness shift b ~ U(-brightness, brightness) and contrast factor
    c ~ U(1 - contrast, 1 + contrast) together with p=jitter_p, Gaussian blur with
    sigma ~ U(blur_sigma) and an odd kernel of ~size/10 with p=blur_p, and grayscale (every band
    replaced by the per-pixel band mean) with p=grayscale_p."""
    owner = "augmentation 'standard'"
    check_size(owner, size)
    check_count(owner, "n_views", n_views, 1)
    ops = geometric_ops(owner, size, scale, ratio)
    ops += colour_ops(owner, size, brightness, contrast, jitter_p, blur_p, blur_sigma, grayscale_p)
    view = ImageSequential(*ops)
    return ViewPipeline("standard", mean, std, [view] * n_views, [size] * n_views, seed=seed)


def default_local_size(size: int) -> int:
    """DINO's 96/224 of the global size, rounded to a multiple of 8 (at least 8), so ViT patch
    sizes of 8 (and 16 for the usual sizes) tile it: 224 -> 96, 120 -> 48, 64 -> 24."""
    return max(8, round(size * 96 / 224 / 8) * 8)


@AUGMENTATIONS.register("multicrop", summary="DINO multi-crop: 2 global views + n_local small local views")
def multicrop(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    n_views: Optional[int] = None,
    seed: Optional[int] = None,
    n_local: Optional[int] = None,
    local_size: Optional[int] = None,
    global_scale: Sequence[float] = (0.4, 1.0),
    local_scale: Sequence[float] = (0.05, 0.4),
    ratio: Sequence[float] = ASPECT_RATIO,
    colour: bool = True,
    brightness: float = 0.4,
    contrast: float = 0.4,
    jitter_p: float = 0.8,
    blur_p: float = 0.5,
    blur_sigma: Sequence[float] = (0.1, 2.0),
    grayscale_p: float = 0.2,
) -> ViewPipeline:
    """Multi-crop for DINO: views 0-1 are global crops at ``size`` (scale ``global_scale``), then
    ``n_local`` (default 6) local crops at ``local_size`` (default :func:`default_local_size`)
    with scale ``local_scale``. Every view is geometric, plus the ``standard`` colour operations
    when ``colour`` (the default). ``n_views`` (default 2 + n_local) may be given instead of
    ``n_local``; giving both requires ``n_views == 2 + n_local``."""
    owner = "augmentation 'multicrop'"
    check_size(owner, size)
    if n_views is not None:
        check_count(owner, "n_views", n_views, 2)
        if n_local is None:
            n_local = n_views - 2
        elif n_views != 2 + n_local:
            raise ConfigError(f"{owner}: n_views={n_views} does not match 2 global + n_local={n_local} local views")
    n_local = 6 if n_local is None else check_count(owner, "n_local", n_local, 0)
    local_size = default_local_size(size) if local_size is None else check_size(owner, local_size, "local_size")
    if not isinstance(colour, bool):
        raise ConfigError(f"{owner}: colour must be true or false, got {colour!r}")

    def view(view_size: int, scale: Sequence[float], scale_name: str) -> ImageSequential:
        ops = geometric_ops(owner, view_size, scale, ratio, scale_name)
        if colour:
            ops += colour_ops(owner, view_size, brightness, contrast, jitter_p, blur_p, blur_sigma, grayscale_p)
        return ImageSequential(*ops)

    global_view = view(size, global_scale, "global_scale")
    views = [global_view, global_view]
    sizes = [size, size]
    if n_local:
        local_view = view(local_size, local_scale, "local_scale")
        views += [local_view] * n_local
        sizes += [local_size] * n_local
    return ViewPipeline("multicrop", mean, std, views, sizes, seed=seed, colour_ops=colour)


@AUGMENTATIONS.register("eval", summary="deterministic: normalise, centre crop (optional) and resize; one view")
def eval_views(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    n_views: int = 1,
    seed: Optional[int] = None,
    crop_fraction: float = 1.0,
) -> ViewPipeline:
    """No randomness: normalise, centre-crop ``crop_fraction`` of each side (default: none) and
    resize to ``size``; the same output as :class:`Preprocess`. ``n_views`` > 1 repeats that one
    view (a "no augmentation" ablation for two-view methods). ``seed`` is accepted and unused."""
    owner = "augmentation 'eval'"
    check_size(owner, size)
    check_count(owner, "n_views", n_views, 1)
    try:
        view = CenterCropResize(size, crop_fraction)
    except ConfigError as err:
        raise ConfigError(f"{owner}: {err}") from None
    return ViewPipeline("eval", mean, std, [view] * n_views, [size] * n_views, seed=seed,
                        random_crops=False, colour_ops=False)
