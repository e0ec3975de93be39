"""Backbones: timm models with any number of input bands, plus a tiny CNN for tests.

Every backbone follows one contract: ``forward(x) -> (B, D)`` pooled features and
``num_features = D``; ``in_chans`` is free. Build one with
``BACKBONES.create("resnet18", in_chans=13)`` or :func:`create_backbone`.

Dense tasks (segmentation) use the second part of the contract, ``feature_maps(x) -> [(B, C_i,
h_i, w_i), ...]``: spatial features, finest first, the last one the map the pooled features come
from. A CNN gives the output of each stage (timm's ``forward_intermediates``: ResNet's stem and
four stages, strides 2..32); a ViT the token grids of ``levels`` evenly spaced blocks (default 4,
e.g. blocks 3, 6, 9, 12 of 12), each after the final LayerNorm, prefix tokens dropped, all at the
patch grid. A backbone that cannot give maps raises a one-line ConfigError.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import BACKBONES


class Backbone(nn.Module):
    """A feature extractor with ``num_features`` and ``in_chans``; wraps a timm model.

    ``timm_model`` / ``timm_kwargs``: when ``model`` is a timm model, the architecture name and
    the keyword arguments that rebuild it, ``timm.create_model(timm_model, in_chans=in_chans,
    num_classes=0, **timm_kwargs)`` (an export records them, so its weights load into plain timm).
    """

    def __init__(self, model: nn.Module, in_chans: int, num_features: int, name: str,
                 timm_model: Optional[str] = None, timm_kwargs: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.model = model
        self.in_chans = in_chans
        self.num_features = num_features
        self.name = name
        self.timm_model = timm_model
        self.timm_kwargs = dict(timm_kwargs or {})

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.model(x)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ConfigError(
                f"backbone {self.name!r} expects (B, {self.in_chans}, H, W) input, got {tuple(x.shape)}"
            )

    def feature_maps(self, x: Tensor, levels: Optional[int] = None) -> List[Tensor]:
        """Spatial features of ``x`` (see the module docstring): a list of (B, C, h, w) maps, finest
        first. ``levels``: how many ViT blocks to read (default 4); a CNN gives all its stages.

        The input is seen as ``forward`` sees it: the module's forward pre-hooks run first (the
        zoo's input renormalisation, :func:`ssl_rs.zoo.loading.match_input_normalization`)."""
        self._check_input(x)
        for hook in self._forward_pre_hooks.values():  # what nn.Module.__call__ does before forward
            out = hook(self, (x,))
            if out is not None:
                x = out[0] if isinstance(out, tuple) else out
        model = self.model
        if isinstance(model, VisionTransformer):
            depth = len(model.blocks)
            n = 4 if levels is None else int(levels)
            if not 1 <= n <= depth:
                raise ConfigError(f"backbone {self.name!r}: levels must be 1..{depth} (its blocks), got {levels!r}")
            blocks = sorted({round((i + 1) * depth / n) - 1 for i in range(n)})
            return list(model.forward_intermediates(x, indices=blocks, norm=True, output_fmt="NCHW",
                                                    intermediates_only=True))
        if hasattr(model, "feature_maps"):
            return list(model.feature_maps(x))
        if hasattr(model, "forward_intermediates"):
            return list(model.forward_intermediates(x, intermediates_only=True))
        raise ConfigError(f"backbone {self.name!r} ({type(model).__name__}) gives no spatial feature maps "
                          "(dense tasks need feature_maps(x); use a timm CNN or ViT)")


def _check_in_chans(in_chans: int) -> int:
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ConfigError(f"in_chans must be a positive integer, got {in_chans!r}")
    return in_chans


def _timm(name: str, timm_name: str, in_chans: int, **kwargs: Any) -> Backbone:
    # num_classes=0 removes the classifier and keeps the pooling, giving (B, D) features.
    model = timm.create_model(timm_name, pretrained=False, in_chans=_check_in_chans(in_chans), num_classes=0, **kwargs)
    return Backbone(model, in_chans, model.num_features, name, timm_model=timm_name, timm_kwargs=kwargs)


@BACKBONES.register("resnet18")
def resnet18(in_chans: int = 3, **kwargs: Any) -> Backbone:
    """ResNet-18 (timm), 512-d features."""
    return _timm("resnet18", "resnet18", in_chans, **kwargs)


@BACKBONES.register("resnet50")
def resnet50(in_chans: int = 3, **kwargs: Any) -> Backbone:
    """ResNet-50 (timm), 2048-d features."""
    return _timm("resnet50", "resnet50", in_chans, **kwargs)


def _vit(name: str, timm_name: str, in_chans: int, img_size: int, patch_size: int, global_pool: str, **kwargs) -> Backbone:
    if img_size % patch_size:
        raise ConfigError(f"backbone {name!r}: img_size {img_size} is not a multiple of patch_size {patch_size}")
    if global_pool not in ("token", "avg"):
        raise ConfigError(f"backbone {name!r}: global_pool must be 'token' (CLS) or 'avg', got {global_pool!r}")
    return _timm(
        name,
        timm_name,
        in_chans,
        img_size=img_size,
        patch_size=patch_size,
        global_pool=global_pool,
        dynamic_img_size=True,  # evaluation may run at another size than pretraining
        **kwargs,
    )


@BACKBONES.register("vit_tiny")
def vit_tiny(in_chans: int = 3, img_size: int = 64, patch_size: int = 8, global_pool: str = "token", **kwargs) -> Backbone:
    """ViT-Tiny (192-d), small patches for 64-120 px tiles; CLS token or mean of tokens."""
    return _vit("vit_tiny", "vit_tiny_patch16_224", in_chans, img_size, patch_size, global_pool, **kwargs)


@BACKBONES.register("vit_small")
def vit_small(in_chans: int = 3, img_size: int = 64, patch_size: int = 8, global_pool: str = "token", **kwargs) -> Backbone:
    """ViT-Small (384-d), small patches for 64-120 px tiles; CLS token or mean of tokens."""
    return _vit("vit_small", "vit_small_patch16_224", in_chans, img_size, patch_size, global_pool, **kwargs)


class TinyCNN(nn.Module):
    """Four conv blocks and global average pooling: fast enough for CPU tests and the demo."""

    def __init__(self, in_chans: int, width: int = 32):
        super().__init__()
        layers, c = [], in_chans
        for i, out in enumerate((width, width * 2, width * 2, width * 4)):
            layers += [
                nn.Conv2d(c, out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            c = out
        self.features = nn.Sequential(*layers)
        self.num_features = c

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def feature_maps(self, x: Tensor) -> List[Tensor]:
        """The output of each block (strides 1, 2, 4, 8), finest first."""
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i % 3 == 2:  # after each block's ReLU
                maps.append(x)
        return maps


@BACKBONES.register("tiny_cnn")
def tiny_cnn(in_chans: int = 3, width: int = 32) -> Backbone:
    """A 4-layer CNN (128-d at width 32) for tests and the CPU demo."""
    model = TinyCNN(_check_in_chans(in_chans), width)
    return Backbone(model, in_chans, model.num_features, "tiny_cnn")


def create_backbone(name: str, in_chans: int, **kwargs: Any) -> Backbone:
    """Build a registered backbone by name."""
    return BACKBONES.create(name, in_chans=in_chans, **kwargs)
