"""``ssl-rs eval ... --weights`` scores a zoo entry or an exported file as `load_backbone` loads it
(bands matched by name, the recorded normalisation applied), and ``eval geo`` runs the geo
probes from the command line."""

from __future__ import annotations

import json

import torch

from ssl_rs.cli import main
from ssl_rs.evaluation.harness import evaluate
from ssl_rs.zoo import export_run, load_backbone


def test_eval_with_exported_weights_equals_the_library_call(tiny_run, tiny_world, tmp_path, capsys):
    weights = export_run(tiny_run, tmp_path / "release")["weights"]
    out = tmp_path / "r.json"
    assert main(["eval", "knn", "--weights", str(weights), "--data", str(tiny_world), "--device", "cpu",
                 "--json", str(out)]) == 0
    got = json.loads(out.read_text())["metrics"]["knn"]
    backbone = load_backbone(str(weights), bands=load_backbone(str(weights)).bands, data=tiny_world)
    expected = evaluate(backbone, tiny_world, bands=backbone.bands, device="cpu", progress=False)["metrics"]["knn"]
    assert got == expected


def test_weights_excludes_backbone_args(tiny_run, tiny_world, tmp_path, capsys):
    weights = export_run(tiny_run, tmp_path / "release")["weights"]
    code = main(["eval", "knn", "--weights", str(weights), "--data", str(tiny_world), "--backbone-args", "{}"])
    assert code == 2 and "--backbone-args: applies to --backbone only" in capsys.readouterr().err


def test_eval_geo_command(tiny_world, capsys):
    torch.manual_seed(0)
    assert main(["eval", "geo", "--backbone", "tiny_cnn", "--backbone-args", '{"width": 8}',
                 "--data", str(tiny_world), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| geo" in out and "corr_spearman" in out and "loc_median_km" in out
