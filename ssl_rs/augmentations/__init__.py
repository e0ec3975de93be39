"""On-device batched augmentation for multispectral images (kornia), any band count.

``AUGMENTATIONS.create(name, size=..., mean=ds.band_mean, std=ds.band_std, n_views=2, seed=None)``
builds a :class:`ViewPipeline` (``pipeline(images) -> list of views``) from one of the
registered presets: ``geometric``, ``standard``, ``multicrop``, ``eval``. :class:`Preprocess`
is the deterministic normalise-and-resize for feature extraction.
"""

from ..registry import AUGMENTATIONS
from .pipelines import BandNormalize, Preprocess, ViewPipeline
from .presets import default_local_size, eval_views, geometric, multicrop, standard
from .transforms import (
    CenterCropResize,
    RandomBandMeanGrayscale,
    RandomBrightnessContrast,
    RandomFlipRot90,
    RandomRot90,
    blur_kernel_size,
)

__all__ = [
    "AUGMENTATIONS",
    "BandNormalize",
    "CenterCropResize",
    "Preprocess",
    "RandomBandMeanGrayscale",
    "RandomBrightnessContrast",
    "RandomFlipRot90",
    "RandomRot90",
    "ViewPipeline",
    "blur_kernel_size",
    "default_local_size",
    "eval_views",
    "geometric",
    "multicrop",
    "standard",
]
