"""Every registered method's run exports with ``ssl-rs zoo export`` and its weights load back
with identical features; a timm encoder (ResNet, plain ViT) loads into plain timm.

The bug this guards: the checkpoint layout was spread over five modules, so a SatMAE run could not
be exported (its encoder is ``backbone.base.*``, export looked for ``backbone.model.*``) and an
exported ResNet had ssl-rs's ``model.`` prefix, which plain timm refuses."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ssl_rs.checkpoint import load_encoder
from ssl_rs.cli import main
from ssl_rs.registry import METHODS
from ssl_rs.zoo import load_backbone

TINY_CNN = ("mocov2", "simclr", "byol", "simsiam", "dino", "csp")
# (method, extra overrides): every registered method from its packaged synthetic config, plus a
# ResNet-18 MoCo v2, the case that plain timm refused before
CASES = [(m, ()) for m in METHODS.names()] + [("mocov2", ("backbone.name=resnet18", "backbone.args={}"))]


def pretrain_tiny(method, world, out_dir, extra) -> None:
    overrides = [f"data.path={world}", f"output.dir={out_dir}", "output.name=run", "data.batch_size=32",
                 "data.num_workers=0", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                 "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0", "eval.schemes=null"]
    if method == "mocov2":
        overrides.append("method.args.queue_size=64")
    if method == "neighbormae":
        overrides.append("data.neighbor_pairs=true")
    if method in TINY_CNN and not extra:
        overrides.append("backbone.args.width=8")
    if method in ("mae", "satmae", "scalemae", "crossscalemae", "neighbormae"):
        overrides += ["backbone.args.depth=1", "method.args.decoder_dim=32", "method.args.decoder_depth=1",
                      "method.args.decoder_heads=2"]
    assert main(["pretrain", "-c", f"synthetic/{method}", *overrides, *extra]) == 0


@pytest.mark.parametrize("method, extra", CASES, ids=[m + ("-resnet18" if e else "") for m, e in CASES])
def test_run_exports_and_loads_with_identical_features(method, extra, tiny_world, tmp_path, capsys):
    pretrain_tiny(method, tiny_world, tmp_path / "runs", extra)
    run = tmp_path / "runs" / "run"
    assert main(["zoo", "export", str(run), "-o", str(tmp_path / "release")]) == 0
    (weights,) = (tmp_path / "release").glob("*.safetensors")
    with safe_open(str(weights), framework="pt") as f:
        meta = dict(f.metadata())

    trained, cfg = load_encoder(run / "checkpoints" / "last.ckpt")
    size = cfg["augmentation"].get("size") or 16
    x = torch.randn(3, len(cfg["data_bands"]), size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained(x)
        torch.testing.assert_close(load_backbone(str(weights))(x), expected, rtol=0, atol=0)

    card = (tmp_path / "release" / "MODEL_CARD.md").read_text()
    if meta["key_layout"] == "timm":
        import timm

        arch, kwargs = json.loads(meta["timm_model"]), json.loads(meta["timm_kwargs"])
        plain = timm.create_model(arch, in_chans=len(cfg["data_bands"]), num_classes=0, **kwargs)
        plain.load_state_dict(load_file(str(weights)), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(plain.eval()(x), expected, rtol=0, atol=0)
        assert f'timm.create_model("{arch}"' in card
    else:  # not a timm model: the card names the ssl-rs call that loads it
        assert meta["key_layout"] == "ssl_rs" and "load_backbone(" in card
    expected_layout = {"tiny_cnn": "ssl_rs"}.get(cfg["backbone"]["name"], "timm")
    assert meta["key_layout"] == ("ssl_rs" if method == "satmae" else expected_layout)
    assert meta["encoder"] == ("satmae" if method == "satmae" else "backbone")
