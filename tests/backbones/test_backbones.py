"""Backbone registry: any band count, pooled (B, D) features, clear errors."""

from __future__ import annotations

import pytest
import torch

from ssl_rs.backbones import create_backbone
from ssl_rs.errors import ConfigError
from ssl_rs.registry import BACKBONES


@pytest.mark.parametrize(
    "name, kwargs, dim",
    [
        ("tiny_cnn", {}, 128),
        ("resnet18", {}, 512),
        ("resnet50", {}, 2048),
        ("vit_tiny", {"img_size": 32, "patch_size": 8}, 192),
        ("vit_small", {"img_size": 32, "patch_size": 8, "global_pool": "avg"}, 384),
    ],
)
@pytest.mark.parametrize("in_chans", [4, 13])
def test_features_for_any_band_count(name, kwargs, dim, in_chans):
    model = create_backbone(name, in_chans=in_chans, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, dim) and model.num_features == dim and model.in_chans == in_chans


def test_vit_runs_at_another_size_than_built_for():
    model = create_backbone("vit_tiny", in_chans=12, img_size=64, patch_size=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 12, 32, 32)).shape == (1, 192)


def test_registry_and_errors():
    assert {"resnet18", "resnet50", "vit_tiny", "vit_small", "tiny_cnn"} <= set(BACKBONES.names())
    with pytest.raises(ConfigError, match="did you mean 'resnet50'"):
        create_backbone("resnet5O", in_chans=3)
    with pytest.raises(ConfigError, match="in_chans must be a positive integer"):
        create_backbone("tiny_cnn", in_chans=0)
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        create_backbone("vit_tiny", in_chans=3, img_size=30, patch_size=8)
    model = create_backbone("tiny_cnn", in_chans=12)
    with pytest.raises(ConfigError, match=r"expects \(B, 12, H, W\) input, got \(1, 13, 8, 8\)"):
        model(torch.randn(1, 13, 8, 8))
