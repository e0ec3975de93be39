"""Every zoo entry taken from torchgeo against what torchgeo's source says about it
(fixtures/torchgeo_weights.json, written from torchgeo/models/*.py at the commit it names): URL,
band order, normalisation, evaluation transforms, licence, hash prefix, and that the timm model
torchgeo loads the file into has exactly the keys and shapes of our backbone. A typo in an entry
fails here; a fabricated file in torchgeo's layout then loads as torchgeo loads it."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from pathlib import Path

import pytest
import timm
import torch

from ssl_rs.backbones import create_backbone
from ssl_rs.cli import main
from ssl_rs.data.bands import normalize_band_name
from ssl_rs.zoo import ZOO, load_backbone

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "torchgeo_weights.json").read_text())
WEIGHTS = FIXTURE["weights"]
# torchgeo's timm architecture -> our backbone and the arguments that make it the same model
ARCH = {
    "resnet18": ("resnet18", {}),
    "resnet50": ("resnet50", {}),
    "vit_small_patch16_224": ("vit_small", {"img_size": 224, "patch_size": 16}),
    "vit_small_patch14_dinov2": ("vit_small", {"img_size": 224, "patch_size": 14, "init_values": 1e-5}),
}
# what torchgeo's loaders let a file lack or carry beyond the model (their asserts on load_state_dict)
TORCHGEO_OPTIONAL = {"fc.weight", "fc.bias", "head.weight", "head.bias"}


def _name_hash(url: str):
    """The hex digits torch.hub's check_hash reads from a file name (``name-<hex>.pth``), or None."""
    found = re.search(r"-([a-f0-9]+)\.", url.rsplit("/", 1)[-1])
    return found.group(1) if found else None


def _read_transforms(steps, n_bands):
    """(resize side or None, crop side or None, per-band (scale, shift) of x -> x * scale + shift)."""
    resize = crop = None
    scale, shift = torch.ones(n_bands, dtype=torch.float64), torch.zeros(n_bands, dtype=torch.float64)
    for kind, arg in steps:
        if kind == "Resize":
            if isinstance(arg, list):
                assert arg[0] == arg[1], "a non-square resize has no ssl-rs equivalent"
                arg = arg[0]
            resize = arg
        elif kind == "CenterCrop":
            crop = arg
        elif kind == "Normalize":  # kornia: (x - mean) / std, broadcast over the bands
            mean = torch.as_tensor(arg["mean"], dtype=torch.float64).expand(n_bands)
            std = torch.as_tensor(arg["std"], dtype=torch.float64).expand(n_bands)
            scale, shift = scale / std, (shift - mean) / std
        else:
            raise AssertionError(f"unexpected transform {kind}")
    return resize, crop, (scale, shift)


def _entry_affine(normalization, n_bands):
    if normalization["type"] == "scale":
        return (torch.full((n_bands,), 1 / normalization["divisor"], dtype=torch.float64),
                torch.zeros(n_bands, dtype=torch.float64))
    assert normalization["type"] == "standardize"
    mean = torch.tensor(normalization["mean"], dtype=torch.float64)
    std = torch.tensor(normalization["std"], dtype=torch.float64)
    return 1 / std, -mean / std


def test_fixture_names_the_torchgeo_commit_it_was_read_at():
    assert re.fullmatch(r"[0-9a-f]{40}", FIXTURE["torchgeo_commit"])
    assert FIXTURE["torchgeo_commit"] in (Path(__file__).parents[2] / "ssl_rs" / "zoo" / "entries.py").read_text()


def test_every_torchgeo_entry_has_a_fixture_and_every_fixture_an_entry():
    from_torchgeo = {e.name for e in ZOO.entries() if "torchgeo" in e.source}
    assert from_torchgeo == set(WEIGHTS)
    added = {w["torchgeo"] for w in WEIGHTS.values()}
    assert len(added) == len(WEIGHTS) and not added & set(FIXTURE["not_added"])
    assert all(w["reason"] for w in FIXTURE["not_added"].values())


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_entry_url_bands_normalisation_and_transforms_are_torchgeos(name):
    entry, tg = ZOO.get(name), WEIGHTS[name]
    assert entry.url == tg["url"]
    assert list(entry.bands) == [normalize_band_name(b) for b in tg["bands"]]
    assert entry.in_chans == tg["in_chans"] == len(tg["bands"])
    assert entry.license == tg["license"]
    assert tg["torchgeo"] in entry.summary
    resize, crop, (scale, shift) = _read_transforms(tg["transforms_read"], entry.in_chans)
    expected = {**({"resize": resize} if resize else {}), **({"center_crop": crop} if crop else {})}
    assert dict(entry.eval_transforms) == expected
    assert entry.image_size == (crop or resize)
    ours_scale, ours_shift = _entry_affine(entry.normalization, entry.in_chans)
    torch.testing.assert_close(ours_scale, scale, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours_shift, shift, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_entry_hash_is_the_one_in_torchgeos_file_name(name):
    entry = ZOO.get(name)
    named = _name_hash(WEIGHTS[name]["url"])
    if named is None:  # nothing to check against: the entry must not claim a hash it cannot have read
        assert entry.sha256 is None and entry.sha256_prefix is None and entry.verification == "NONE"
    elif entry.sha256 is not None:
        assert entry.sha256.startswith(named) and entry.verification == "verified"
    else:
        assert entry.sha256_prefix == named and entry.verification == "prefix"


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_torchgeos_model_has_exactly_our_backbones_keys_and_shapes(name):
    entry, tg = ZOO.get(name), WEIGHTS[name]
    assert (entry.backbone, dict(entry.backbone_args)) == ARCH[tg["model"]]
    extra = {"img_size": tg["img_size"]} if "img_size" in tg else {}
    with torch.device("meta"):  # shapes only: nothing allocated
        theirs = timm.create_model(tg["model"], in_chans=tg["in_chans"], **extra).state_dict()
        ours = create_backbone(entry.backbone, in_chans=entry.in_chans, **entry.backbone_args).state_dict()
    theirs = {f"model.{k}": tuple(v.shape) for k, v in theirs.items() if k not in TORCHGEO_OPTIONAL}
    assert theirs == {k: tuple(v.shape) for k, v in ours.items()}


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("name, drop", [
    ("resnet18_ssl4eo_s12_rgb_moco", ()),
    ("vit_small_ssl4eo_s12_dino", ()),
    ("vit_small_ssl4eo_s12_mae", ("norm.weight", "norm.bias")),  # torchgeo allows an encoder file without them
    ("vit_small_p14_ssl4eo_s12_softcon", ()),
])
def test_a_file_in_torchgeos_layout_loads_as_torchgeo_loads_it(name, drop, file_server, ssl_rs_home):
    entry, tg = ZOO.get(name), WEIGHTS[name]
    extra = {"img_size": tg["img_size"]} if "img_size" in tg else {}
    torch.manual_seed(3)
    published = timm.create_model(tg["model"], in_chans=tg["in_chans"], **extra)  # 1000-class head, as torchgeo
    with torch.no_grad():  # non-default values everywhere, LayerNorms included
        for p in published.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = {k: v for k, v in published.state_dict().items() if k not in drop}
    body = _torch_bytes(state)
    local = dataclasses.replace(entry, url=file_server.serve("/w.pth", body), sha256=hashlib.sha256(body).hexdigest(),
                                size=len(body), sha256_prefix=None)
    # what torchgeo does: timm model, strict=False, only the tolerated keys missing or unexpected
    reference = timm.create_model(tg["model"], in_chans=tg["in_chans"], **extra)
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert set(missing) | set(unexpected) <= TORCHGEO_OPTIONAL | {"norm.weight", "norm.bias"}
    reference.reset_classifier(0)
    reference.eval()
    side = 224 if "vit" in tg["model"] else 64  # torchgeo's ViT takes its img_size only; a ResNet any
    x = torch.randn(2, entry.in_chans, side, side)
    with torch.no_grad():
        ours = load_backbone(local, progress=False)
        assert ours.eval_transforms == entry.eval_transforms and ours.image_size == 224
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def test_a_per_band_normalisation_follows_the_band_selection(file_server, ssl_rs_home, entry_for, tiny_world):
    """SoftCon's 13 SSL4EO-S12 statistics, loaded for 12-band L2A data: B10's are dropped with its filter."""
    from ssl_rs.data.bands import S2_BANDS, S2_BANDS_L2A
    from ssl_rs.data.dataset import GeoDataset

    stats = WEIGHTS["resnet50_ssl4eo_s12_softcon"]["transforms_read"][-1][1]  # torchgeo's Normalize
    softcon = {"type": "standardize", "mean": stats["mean"], "std": stats["std"]}
    body = _torch_bytes(timm.create_model("resnet18", in_chans=13).state_dict())
    entry = entry_for(file_server.serve("/w.pth", body), body, bands=tuple(S2_BANDS), key_layout="timm",
                      normalization=softcon)
    plain = load_backbone(entry, bands=S2_BANDS_L2A, progress=False)
    matched = load_backbone(entry, bands=S2_BANDS_L2A, data=tiny_world, progress=False)  # was: 12 vs 13 bands
    keep = [S2_BANDS.index(b) for b in S2_BANDS_L2A]
    assert matched.normalization["mean"] == [softcon["mean"][i] for i in keep]
    view = lambda v: torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
    data = GeoDataset(tiny_world, bands=S2_BANDS_L2A)
    raw = torch.rand(2, 12, 16, 16) * 3000
    with torch.no_grad():
        torch.testing.assert_close(matched((raw - view(data.band_mean)) / view(data.band_std)),
                                   plain((raw - view(matched.normalization["mean"])) / view(matched.normalization["std"])),
                                   rtol=1e-4, atol=1e-4)


def test_zoo_list_says_prefix_where_only_the_prefix_is_known(capsys):
    assert main(["zoo", "list"]) == 0
    header, _, *lines = capsys.readouterr().out.splitlines()
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    rows = {row["name"]: row for row in (dict(zip(cells(header), cells(line))) for line in lines)}
    assert rows["resnet50_ssl4eo_s12_moco"]["sha256"] == "verified"
    assert rows["resnet50_ssl4eo_s12_decur"]["sha256"] == "prefix"
    assert rows["vit_small_ssl4eo_s12_mae"]["sha256"] == "NONE"
    assert {row["sha256"] for row in rows.values()} == {"verified", "prefix", "NONE"}
