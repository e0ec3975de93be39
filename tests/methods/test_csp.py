"""CSP: the image-location InfoNCE against a hand-computed 3 x 3 case, the location encoders, and a
few training steps whose location encoder reloads from the checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ssl_rs.backbones import create_backbone
from ssl_rs.config import load_config
from ssl_rs.errors import ConfigError
from ssl_rs.methods.csp import (
    CSP,
    image_location_info_nce,
    load_location_encoder_from_checkpoint,
)
from ssl_rs.methods.location_encoders import (
    POSITION_ENCODINGS,
    create_position_encoding,
)
from ssl_rs.train import build, pretrain

CONFIGS = Path(__file__).resolve().parents[2] / "zoo_configs" / "synthetic"

# unit vectors, so the cosine logits are plain dot products / temperature
IMAGES = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
PLACES = [[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]
TEMPERATURE = 0.5


def cross_entropy(row, target):
    return -row[target] + math.log(sum(math.exp(v) for v in row))


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def test_loss_equals_hand_computed_cross_entropy_3x3():
    logits = [[dot(i, p) / TEMPERATURE for p in PLACES] for i in IMAGES]
    image_to_place = sum(cross_entropy(logits[i], i) for i in range(3)) / 3
    place_to_image = sum(cross_entropy([logits[j][i] for j in range(3)], i) for i in range(3)) / 3
    expected = (image_to_place + place_to_image) / 2
    # scaled embeddings: the loss uses cosine similarity
    got = image_location_info_nce(torch.tensor(IMAGES) * 3.0, torch.tensor(PLACES) * 0.5, TEMPERATURE)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_random_location_negatives_join_the_image_to_location_softmax_only():
    extra = [[-1.0, 0.0]]
    logits = [[dot(i, p) / TEMPERATURE for p in PLACES] for i in IMAGES]
    with_extra = [row + [dot(IMAGES[i], extra[0]) / TEMPERATURE] for i, row in enumerate(logits)]
    image_to_place = sum(cross_entropy(with_extra[i], i) for i in range(3)) / 3
    place_to_image = sum(cross_entropy([logits[j][i] for j in range(3)], i) for i in range(3)) / 3
    got = image_location_info_nce(torch.tensor(IMAGES), torch.tensor(PLACES), TEMPERATURE, torch.tensor(extra))
    assert float(got) == pytest.approx((image_to_place + place_to_image) / 2, rel=1e-6)


@pytest.mark.parametrize("name, per_scale", [("theory", 6), ("sphereC", 3), ("sphereC+", 7), ("sphereM", 5),
                                             ("sphereM+", 9), ("rff", 2)])
def test_position_encodings(name, per_scale):
    enc = create_position_encoding(name, num_scales=4, min_radius=1e-3, max_radius=1.0)
    lat = torch.tensor([10.0, 10.0, -45.0], dtype=torch.float64)
    lon = torch.tensor([20.0, 20.0001, 170.0], dtype=torch.float64)
    out = enc(lat, lon)
    assert out.shape == (3, per_scale * 4) == (3, enc.num_features) and out.dtype == torch.float32
    assert out.abs().max() <= 1.0 + 1e-6
    assert not torch.allclose(out[0], out[2])
    if name != "rff":  # the finest scale (~6 km) separates places ~11 m apart
        assert not torch.equal(out[0], out[1])


def test_sphere_c_at_radius_one_is_the_unit_vector():
    enc = create_position_encoding("sphereC", num_scales=1, min_radius=1.0, max_radius=1.0)
    lat, lon = torch.tensor([30.0]), torch.tensor([-60.0])
    phi, lam = math.radians(30.0), math.radians(-60.0)
    sin_lat, xy = math.sin(phi), (math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam))
    assert enc(lat, lon)[0].tolist() == pytest.approx([sin_lat, *xy], abs=1e-6)
    # longitude wraps: -180 and 180 are the same place
    west, east = enc(torch.tensor([5.0]), torch.tensor([-180.0])), enc(torch.tensor([5.0]), torch.tensor([180.0]))
    assert torch.allclose(west, east, atol=1e-6)


def test_bad_arguments_fail_clearly():
    backbone = create_backbone("tiny_cnn", in_chans=3, width=8)
    with pytest.raises(ConfigError, match="location_encoder"):
        CSP(backbone, location_encoder="spherical")
    with pytest.raises(ConfigError, match="temperature"):
        CSP(backbone, temperature=0.0)
    assert set(POSITION_ENCODINGS) >= {"theory", "sphereC", "sphereM", "rff"}


def tiny_config(world, tmp_path, *extra):
    return load_config(CONFIGS / "csp.yaml", [
        f"data.path={world}", f"output.dir={tmp_path}/runs", "data.batch_size=32", "data.num_workers=0",
        "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0", "eval.schemes=null",
        "backbone.args.width=8", "method.args.loc_hidden_dim=32", *extra,
    ])


def test_trains_and_reloads_the_location_encoder(tiny_world, tmp_path):
    cfg = tiny_config(tiny_world, tmp_path, "method.args.location_encoder=theory")
    result = pretrain(cfg, evaluate_after=False)
    assert result["steps"] >= 2
    ckpt = Path(result["run_dir"]) / "checkpoints" / "last.ckpt"
    encoder = load_location_encoder_from_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    method = build(cfg)["method"]
    method.load_state_dict(state)
    lat, lon = torch.tensor([12.5, -33.0], dtype=torch.float64), torch.tensor([100.0, -70.0], dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(encoder(lat, lon), method.eval().encode_location(lat, lon), atol=1e-6)


def test_frozen_image_encoder_stays_fixed(tiny_world, tmp_path):
    import lightning as L

    cfg = tiny_config(tiny_world, tmp_path, "method.args.freeze_image_encoder=true",
                      "method.args.location_encoder=rff")
    built = build(cfg)
    method = built["method"]
    before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    proj = method.image_projection.weight.detach().clone()
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, enable_model_summary=False)
    trainer.fit(method, built["train_loader"])
    changed = [k for k, v in method.backbone.state_dict().items() if not torch.equal(before[k], v)]
    assert changed == []
    assert not torch.equal(proj, method.image_projection.weight)
