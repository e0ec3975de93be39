"""Evaluation transforms: entries record their source's resize / centre crop (torchgeo's
Resize(256) + CenterCrop(224)), validated; the loaded backbone carries them and the harness
applies them."""

from __future__ import annotations

import io

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from ssl_rs.augmentations import Preprocess
from ssl_rs.data.bands import S2_BANDS_L2A
from ssl_rs.errors import ConfigError
from ssl_rs.evaluation.harness import evaluate
from ssl_rs.zoo import ZOO, load_backbone


def test_entries_validate_their_eval_transforms(entry_for):
    body = b"x"
    ok = entry_for("http://127.0.0.1/w.pth", body, image_size=224, eval_transforms={"resize": 256, "center_crop": 224})
    assert ok.eval_transforms == {"resize": 256, "center_crop": 224} and ok.as_dict()["eval_transforms"] == {
        "resize": 256, "center_crop": 224}
    for bad, message in [
        ({"resize": 256, "crop": 224}, "unknown 'crop'"),
        ({"resize": 200, "center_crop": 224}, "center_crop 224 is larger than the resize 200"),
        ({"resize": 256, "center_crop": 200}, "end at 200 px, but image_size is 224"),
        ({"resize": "256"}, "eval_transforms.resize must be a side in pixels"),
        ({"center_crop": True}, "eval_transforms.center_crop must be a side in pixels"),
        ([256, 224], "must be a mapping"),
    ]:
        with pytest.raises(ConfigError, match=message):
            entry_for("http://127.0.0.1/w.pth", body, image_size=224, eval_transforms=bad)
    assert entry_for("http://127.0.0.1/w.pth", body, image_size=None, eval_transforms={}).image_size is None


def test_torchgeos_ssl4eo_entries_carry_resize_256_and_crop_224():
    for name in ("resnet18_ssl4eo_s12_moco", "resnet50_ssl4eo_s12_moco", "resnet50_ssl4eo_s12_dino"):
        assert ZOO.get(name).eval_transforms == {"resize": 256, "center_crop": 224}


def test_preprocess_resizes_then_crops_the_centre():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 40, 40) * 1000
    mean, std = [100.0, 200.0, 300.0], [10.0, 20.0, 30.0]
    out = Preprocess(24, mean, std, resize=32)(images)
    m, s = (torch.tensor(v).view(1, -1, 1, 1) for v in (mean, std))
    resized = F.interpolate((images - m) / s, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(out, resized[..., 4:28, 4:28])
    with pytest.raises(ConfigError, match="24 px centre crop is larger than the 20 px image"):
        Preprocess(24, mean, std, resize=20)
    with pytest.raises(ConfigError, match="crop_fraction or resize"):
        Preprocess(24, mean, std, crop_fraction=0.5, resize=32)


class _Spy(nn.Module):
    """Records the side of what the harness feeds it."""

    def __init__(self, in_chans: int, eval_transforms=None):
        super().__init__()
        self.in_chans, self.sides = in_chans, []
        self.pool = nn.AdaptiveAvgPool2d(1)
        if eval_transforms is not None:
            self.eval_transforms = eval_transforms

    def forward(self, x):
        self.sides.append(tuple(x.shape[-2:]))
        return self.pool(x).flatten(1)


@pytest.mark.parametrize("transforms, size, seen", [
    ({"resize": 20, "center_crop": 12}, None, (12, 12)),   # the backbone's transforms
    ({"resize": 20, "center_crop": 12}, 12, (12, 12)),     # the same size asked for: still theirs
    ({"resize": 20, "center_crop": 12}, 8, (8, 8)),        # another size asked for: a plain resize
    ({"resize": 24}, None, (24, 24)),
    (None, None, (16, 16)),                                 # none: the tiles' side, as before
])
def test_evaluate_applies_the_backbones_eval_transforms(tiny_world, transforms, size, seen):
    spy = _Spy(12, transforms)
    evaluate(spy, tiny_world, size=size, progress=False, device="cpu")
    assert set(spy.sides) == {seen}


def test_a_zoo_backbone_gets_its_transforms_applied_by_the_harness(file_server, ssl_rs_home, entry_for, tiny_world,
                                                                  monkeypatch):
    buffer = io.BytesIO()
    torch.save(timm.create_model("resnet18", in_chans=12).state_dict(), buffer)
    body = buffer.getvalue()
    entry = entry_for(file_server.serve("/w.pth", body), body, bands=tuple(S2_BANDS_L2A), key_layout="timm",
                      image_size=12, eval_transforms={"resize": 20, "center_crop": 12})
    monkeypatch.setitem(ZOO._entries, entry.name, entry)
    backbone = load_backbone(entry.name, data=tiny_world, progress=False)
    assert backbone.eval_transforms == {"resize": 20, "center_crop": 12} and backbone.image_size == 12
    sides = []
    backbone.register_forward_pre_hook(lambda module, args: sides.append(tuple(args[0].shape[-2:])))
    result = evaluate(backbone, tiny_world, bands=backbone.bands, progress=False, device="cpu")
    assert set(sides) == {(12, 12)} and result["feature_dim"] == 512
