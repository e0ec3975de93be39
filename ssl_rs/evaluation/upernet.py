"""The GeoRank authors' segmentation evaluation of self-supervised backbones: a UPerNet decoder on a
frozen ResNet's layers 1-4, and its optimisation recipe.

Source: ``UPerSegmentationModel`` in tomburgert/georank ``eval_base.py`` (commit
4754634ceb85f31e11a37702fb06c9ea5a9c248d), run by ``ssl_experiments.py`` for every segmentation
dataset, with the heads ``UperNetHead`` and ``UperNetFCNHead`` of their ``models/segmentation.py``
(a port of Hugging Face's UPerNet). This module is ssl-rs's own code; it is held to theirs by
``tests/evaluation/test_upernet.py`` (outputs within 1e-6 for the same weights).

The decoder (``upernet``), on the four deepest maps ``c1..c4`` of a CNN (a ResNet's layers 1-4,
strides 4-32; ssl-rs's ResNets also give the stem's map, which it leaves out):

- pyramid pooling on ``c4``: for each scale in (4, 8, 16, 32), adaptive average pooling to
  scale x scale, a 1x1 convolution to ``hidden`` (1024) channels + BatchNorm + ReLU, bilinear
  resampling back to ``c4``'s size; ``c4`` and the four pooled maps concatenated, fused by a 3x3
  convolution + BatchNorm + ReLU to ``hidden`` channels;
- a feature pyramid: ``c1..c3`` each by a 1x1 convolution + BatchNorm + ReLU to ``hidden``
  channels, every level plus the one above it resampled to its size (top-down), then ``c1..c3``
  smoothed by a 3x3 convolution + BatchNorm + ReLU (the pooled level as it is); all four resampled
  to ``c1``'s size, concatenated and fused by a 3x3 convolution + BatchNorm + ReLU;
- a 1x1 convolution (with bias) to 64 channels (their ``UperNetHead(num_labels=64)``: its
  "classifier" gives features, not classes), bilinear upsampling to the input size;
- at the input size, their FCN head (``UperNetFCNHead(num_labels=classes, in_index=0)``): a 3x3
  convolution + BatchNorm + ReLU to 32 channels, its input and output concatenated and fused by a
  3x3 convolution + BatchNorm + ReLU to 32 channels, a 1x1 convolution (with bias) to the classes.

Every convolution followed by BatchNorm has no bias; every resampling is bilinear with
``align_corners=False``; there is no dropout. The FCN head is the last stage of the decoder, not
an auxiliary head (as in mmsegmentation's UPerNet): the loss is one cross-entropy on its output.

Backbones whose maps all have one size (ViTs) are refused: the authors define this evaluation
for ResNets only (their channels 64, 128, 256, 512 are fixed and the maps are read from
``network.resnet``), and the usual ViT adapter (deconvolutions building a pyramid from one grid)
would add trained layers they never had, so its numbers would not be theirs. ``multilevel`` is
ssl-rs's ViT decoder. A CNN with other channel counts (ResNet-50: 256..2048) gets the same
decoder on its own channels.

The recipe (``recipe="georank"`` of :func:`ssl_rs.evaluation.segmentation.segmentation_probe`;
``UPerSegmentationModel.configure_optimizers`` and the ``Trainer`` of ssl_experiments.py): SGD,
lr 0.02, momentum 0.9, weight decay 1e-4 on every decoder parameter (BatchNorm's included), no
schedule, 20 epochs, batches of 512 (their ``dataset.batch_size``, conf/ssl_config.yaml),
cross-entropy averaged over the pixels. Their frozen encoder is set to eval mode when the model is
built and stays so: Lightning >= 2.2 (their environment pins a 2.3 build) no longer calls
``train()`` when fitting starts and restores each submodule's mode after validation, so its
BatchNorm layers use their running statistics, as ssl-rs's probe does (Lightning < 2.2 would
have switched them to batch statistics).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

#: how many of the backbone's deepest maps the decoder reads (a ResNet's layers 1-4)
LEVELS = 4
#: the side of each pyramid-pooling grid
POOL_SCALES = (4, 8, 16, 32)
#: the width of the pyramid and the fusion (their ``hidden_size``); tests shrink it
HIDDEN = 1024
#: the channels of the fused map before the FCN head (their ``UperNetHead`` "labels")
FUSED = 64
#: the FCN head's width
FCN_WIDTH = 32
#: the authors' optimisation of the decoder (module docstring), as ``segmentation_probe`` reads it
GEORANK_RECIPE: Dict[str, Any] = {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4,
                                  "schedule": "constant", "batch_size": 512}


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """A convolution without bias (the BatchNorm after it has one), BatchNorm, ReLU; 3x3 keeps the size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def _resample(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def check_pyramid(shapes: Sequence[Tuple[int, ...]], option: str = "decoder") -> None:
    """A one-line ConfigError unless the maps (``(B, C, h, w)`` shapes, finest first) end in
    :data:`LEVELS` maps that shrink from the first to the last (a CNN's stages)."""
    if len(shapes) < LEVELS:
        raise ConfigError(f"{option}: upernet needs the backbone's last {LEVELS} feature maps (a CNN's stages, as "
                          f"the GeoRank authors' ResNet layers 1-4); this backbone gives {len(shapes)}")
    sides = [tuple(s[-2:]) for s in shapes[-LEVELS:]]
    if len(set(sides)) == 1:
        h, w = sides[0]
        raise ConfigError(f"{option}: upernet needs feature maps of decreasing size (a CNN's stages); these all "
                          f"are {h}x{w}, as a ViT's are: use the multilevel decoder (or auto)")
    if any(a[0] < b[0] or a[1] < b[1] for a, b in zip(sides, sides[1:])):
        raise ConfigError(f"{option}: upernet needs feature maps from the finest to the coarsest, got sizes "
                          f"{', '.join(f'{h}x{w}' for h, w in sides)}")


class UPerNetDecoder(nn.Module):
    """The GeoRank authors' UPerNet + FCN head (module docstring): ``forward(maps, size)`` ->
    ``(B, num_classes, *size)`` logits from the last :data:`LEVELS` of ``maps``.

    ``in_channels``: the channels of every map the backbone gives (finest first); ``hidden``,
    ``pool_scales``, ``fused``, ``fcn_width``: the authors' values unless given."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, hidden: Optional[int] = None,
                 pool_scales: Sequence[int] = POOL_SCALES, fused: int = FUSED, fcn_width: int = FCN_WIDTH):
        super().__init__()
        if len(in_channels) < LEVELS:
            raise ConfigError(f"decoder: upernet needs the backbone's last {LEVELS} feature maps; this backbone "
                              f"gives {len(in_channels)}")
        hidden = HIDDEN if hidden is None else int(hidden)
        *fine, coarsest = [int(c) for c in in_channels[-LEVELS:]]
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.pyramid = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), conv_bn_relu(coarsest, hidden, 1)) for scale in self.pool_scales)
        self.pyramid_fuse = conv_bn_relu(coarsest + len(self.pool_scales) * hidden, hidden, 3)
        self.lateral = nn.ModuleList(conv_bn_relu(c, hidden, 1) for c in fine)
        self.smooth = nn.ModuleList(conv_bn_relu(hidden, hidden, 3) for _ in fine)
        self.fuse = conv_bn_relu(LEVELS * hidden, hidden, 3)
        self.project = nn.Conv2d(hidden, fused, kernel_size=1)
        self.head_conv = conv_bn_relu(fused, fcn_width, 3)
        self.head_merge = conv_bn_relu(fused + fcn_width, fcn_width, 3)
        self.classifier = nn.Conv2d(fcn_width, num_classes, kernel_size=1)

    def pooled(self, coarsest: Tensor) -> Tensor:
        """The pyramid-pooling level: ``coarsest`` and its pooled views, fused."""
        side = coarsest.shape[-2:]
        views = [coarsest] + [_resample(pool(coarsest), side) for pool in self.pyramid]
        return self.pyramid_fuse(torch.cat(views, dim=1))

    def features(self, maps: Sequence[Tensor]) -> Tensor:
        """The fused ``fused``-channel map at the finest level's size."""
        *fine, coarsest = maps[-LEVELS:]
        levels: List[Tensor] = [lateral(m) for lateral, m in zip(self.lateral, fine)] + [self.pooled(coarsest)]
        for i in range(len(levels) - 1, 0, -1):  # top-down: each level gets the coarser one's context
            levels[i - 1] = levels[i - 1] + _resample(levels[i], levels[i - 1].shape[-2:])
        outs = [smooth(level) for smooth, level in zip(self.smooth, levels[:-1])] + [levels[-1]]
        finest = outs[0].shape[-2:]
        outs = [outs[0]] + [_resample(o, finest) for o in outs[1:]]
        return self.project(self.fuse(torch.cat(outs, dim=1)))

    def forward(self, maps: Sequence[Tensor], size: Tuple[int, int]) -> Tensor:
        x = _resample(self.features(maps), size)
        merged = self.head_merge(torch.cat([x, self.head_conv(x)], dim=1))
        return self.classifier(merged)


def upernet_decoder(maps: Sequence[Tensor], num_classes: int) -> UPerNetDecoder:
    """The decoder for maps shaped like ``maps`` (a ConfigError for a ViT's maps of one size)."""
    check_pyramid([tuple(m.shape) for m in maps])
    return UPerNetDecoder([int(m.shape[1]) for m in maps], num_classes)
