"""CSP: the image-location InfoNCE against a hand-computed 3 x 3 case, the authors' contsoftmax loss,
random-place draw, grid encoding and location MLP against their own code (``fixtures/csp_reference.pt``),
the location encoders, and a few training steps whose location encoder reloads from the checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ssl_rs.backbones import create_backbone
from ssl_rs.config import load_config, packaged_config_dir
from ssl_rs.errors import ConfigError
from ssl_rs.methods.csp import (
    CSP,
    image_location_contsoftmax,
    image_location_info_nce,
    load_location_encoder_from_checkpoint,
    random_sphericalold_locations,
)
from ssl_rs.methods.location_encoders import (
    POSITION_ENCODINGS,
    LocationEncoder,
    create_position_encoding,
)
from ssl_rs.train import build, pretrain

CONFIGS = packaged_config_dir() / "synthetic"
REFERENCE = Path(__file__).resolve().parent / "fixtures" / "csp_reference.pt"


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE, map_location="cpu", weights_only=True)

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


@pytest.mark.parametrize("case", ["contsoftmax", "contsoftmaxsym", "inat_release"])
def test_contsoftmax_matches_the_authors_loss_and_gradients(reference, case):
    ref = reference[f"loss_{case}"]
    leaves = {key: ref[key].clone().requires_grad_(True) for key in ("image", "location", "random", "location_again")}
    k, b = ref["k"], ref["image"].shape[0]
    loss, terms = image_location_contsoftmax(
        leaves["image"], leaves["location"], ref["temperature"], leaves["random"].reshape(k, b, -1),
        ref["random_temperature"], ref["random_weight"], leaves["location_again"], ref["simcse_temperature"],
        ref["simcse_weight"], symmetric=ref["symmetric"])
    loss.backward()
    assert torch.allclose(loss.detach(), ref["loss"], rtol=1e-5, atol=1e-6)
    assert set(terms) == {"inbatch_loss", "random_location_loss", "simcse_loss"}
    for key, leaf in leaves.items():
        assert torch.allclose(leaf.grad, ref[f"grad_{key}"], rtol=1e-4, atol=1e-6), key


def test_contsoftmax_random_term_is_separate_from_the_in_batch_softmax():
    """One random place per image in its own softmax: [own place, random place] / random_temperature."""
    img, loc = torch.tensor(IMAGES), torch.tensor(PLACES)
    rand = torch.tensor([[[-1.0, 0.0], [0.6, -0.8], [0.0, 1.0]]])  # (K=1, B=3, D)
    logits = [[dot(i, p) / TEMPERATURE for i in IMAGES] for p in PLACES]  # place -> image
    inbatch = sum(cross_entropy(logits[i], i) for i in range(3)) / 3
    random_term = sum(cross_entropy([dot(PLACES[i], IMAGES[i]) / 2.0, dot(rand[0, i].tolist(), IMAGES[i]) / 2.0], 0)
                      for i in range(3)) / 3
    got, terms = image_location_contsoftmax(img, loc, TEMPERATURE, rand, random_temperature=2.0, random_weight=0.5)
    assert float(terms["inbatch_loss"]) == pytest.approx(inbatch, rel=1e-6)
    assert float(terms["random_location_loss"]) == pytest.approx(random_term, rel=1e-6)
    assert float(got) == pytest.approx(inbatch + 0.5 * random_term, rel=1e-6)


def test_sphericalold_sampler_replays_the_authors_draw(reference):
    ref = reference["loss_contsoftmax"]
    torch.manual_seed(ref["seed"])
    lat, lon = random_sphericalold_locations(len(ref["random_lat"]))
    assert lat.dtype == torch.float64
    assert torch.allclose(lat.float(), ref["random_lat"], atol=1e-4)
    assert torch.allclose(lon.float(), ref["random_lon"], atol=1e-4)
    # the draw fills the ellipse (lon / 180)^2 + (lat / 90)^2 <= 1, not the whole sphere
    torch.manual_seed(0)
    lat, lon = random_sphericalold_locations(4000)
    assert float(((lon / 180) ** 2 + (lat / 90) ** 2).max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("case", ["leakyrelu_1layer", "gelu_2layers"])
def test_grid_encoding_and_space2vec_mlp_match_the_authors(reference, case):
    ref = reference[f"encoder_{case}"]
    encoding = create_position_encoding("grid", ref["frequency_num"], math.radians(ref["min_radius_deg"]),
                                        math.radians(ref["max_radius_deg"]))
    encoder = LocationEncoder(encoding, ref["out_dim"], ref["hidden"], ref["num_layers"], dropout=0.5,
                              activation=ref["activation"], style="space2vec")
    encoder.load_state_dict({k.replace("layers.", "mlp.", 1): v for k, v in ref["state"].items()})
    encoder.eval()
    lat, lon = ref["lat"], ref["lon"]
    assert torch.allclose(encoding(lat, lon), ref["encoding"], atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(encoder(lat, lon), ref["output"], atol=1e-5)


def test_contsoftmax_step_wires_the_terms():
    """ssl_loss under objective contsoftmax equals the loss on its own encoder calls: K random places
    per sample laid out as (K, B), and a second location pass for SimCSE."""
    torch.manual_seed(0)
    backbone = create_backbone("tiny_cnn", in_chans=3, width=8)
    method = CSP(backbone, embed_dim=16, loc_hidden_dim=32, objective="contsoftmax", temperature=0.5,
                 random_locations_per_image=2, random_location_temperature=0.7, random_location_weight=0.9,
                 simcse_weight=0.4, simcse_temperature=0.3, random_location_sampler="sphericalold",
                 location_encoder="grid", loc_mlp="space2vec", loc_activation="leakyrelu", loc_dropout=0.0)
    images = torch.randn(4, 3, 16, 16)
    batch = {"lat": torch.tensor([10.0, -20.0, 45.0, 0.5], dtype=torch.float64),
             "lon": torch.tensor([100.0, -60.0, 3.0, 179.0], dtype=torch.float64)}
    torch.manual_seed(5)
    loss, z, logs = method.ssl_loss([images], batch)
    assert {"inbatch_loss", "random_location_loss", "simcse_loss", "image_to_location_top1"} <= set(logs)
    torch.manual_seed(5)
    img = method.encode_image(images)
    loc = method.encode_location(batch["lat"], batch["lon"])
    rand = method.encode_location(*random_sphericalold_locations(8)).reshape(2, 4, -1)
    expected, _ = image_location_contsoftmax(img, loc, 0.5, rand, 0.7, 0.9, loc, 0.3, 0.4)
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert method.location_encoder.mlp[0].linear.weight.grad is not None


@pytest.mark.parametrize("name, per_scale", [("grid", 4), ("theory", 6), ("sphereC", 3), ("sphereC+", 7),
                                             ("sphereM", 5), ("sphereM+", 9), ("rff", 2)])
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
    with pytest.raises(ConfigError, match="objective"):
        CSP(backbone, objective="logistic")
    with pytest.raises(ConfigError, match="random_location_temperature"):
        CSP(backbone, objective="contsoftmax", random_location_temperature=0.0)
    with pytest.raises(ConfigError, match="random_negatives"):
        CSP(backbone, objective="contsoftmax", random_negatives=8)
    with pytest.raises(ConfigError, match="simcse_weight"):
        CSP(backbone, simcse_weight=1.0)
    with pytest.raises(ConfigError, match="random_location_sampler"):
        CSP(backbone, random_location_sampler="uniform")
    with pytest.raises(ConfigError, match="loc_mlp"):
        CSP(backbone, loc_mlp="resnet")
    assert set(POSITION_ENCODINGS) >= {"grid", "theory", "sphereC", "sphereM", "rff"}


def tiny_config(world, tmp_path, *extra):
    return load_config(CONFIGS / "csp.yaml", [
        f"data.path={world}", f"output.dir={tmp_path}/runs", "data.batch_size=32", "data.num_workers=0",
        "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0", "eval.schemes=null",
        "backbone.args.width=8", "method.args.loc_hidden_dim=32", *extra,
    ])


@pytest.mark.parametrize("extra", [
    ("method.args.location_encoder=theory",),
    # the authors' settings: contsoftmax with random places, SimCSE, grid encoding, their MLP layout
    ("method.args.objective=contsoftmax", "method.args.random_negatives=0", "method.args.simcse_weight=1.0",
     "method.args.random_location_sampler=sphericalold", "method.args.location_encoder=grid",
     "method.args.loc_mlp=space2vec", "method.args.loc_activation=leakyrelu", "method.args.loc_dropout=0.5",
     "method.args.loc_num_layers=1"),
], ids=["infonce_theory", "contsoftmax_reference"])
def test_trains_and_reloads_the_location_encoder(tiny_world, tmp_path, extra):
    cfg = tiny_config(tiny_world, tmp_path, *extra)
    result = pretrain(cfg, evaluate_after=False)
    assert result["steps"] >= 2
    ckpt = Path(result["run_dir"]) / "checkpoints" / "last.ckpt"
    encoder = load_location_encoder_from_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    method = build(cfg).method
    method.load_state_dict(state)
    lat, lon = torch.tensor([12.5, -33.0], dtype=torch.float64), torch.tensor([100.0, -70.0], dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(encoder(lat, lon), method.eval().encode_location(lat, lon), atol=1e-6)


def test_frozen_image_encoder_stays_fixed(tiny_world, tmp_path):
    import lightning as L

    cfg = tiny_config(tiny_world, tmp_path, "method.args.freeze_image_encoder=true",
                      "method.args.location_encoder=rff")
    built = build(cfg)
    method = built.method
    before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    proj = method.image_projection.weight.detach().clone()
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, enable_model_summary=False)
    trainer.fit(method, built.train_loader)
    changed = [k for k, v in method.backbone.state_dict().items() if not torch.equal(before[k], v)]
    assert changed == []
    assert not torch.equal(proj, method.image_projection.weight)
