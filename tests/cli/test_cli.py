"""The `ssl-rs` command: each subcommand end to end, and bad input -> one line, exit 2."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import h5py
import pytest
import yaml

from ssl_rs.cli import main
from ssl_rs.config import packaged_config_dir


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_split_info(capsys, tmp_path):
    path = tmp_path / "w.h5"
    code, out, _ = run(capsys, "data", "synth", "-o", str(path), "--n", "60", "--size", "8", "--dates", "2")
    assert code == 0 and "60 synthetic samples" in out and "added split spatial-block (500 km blocks)" in out
    with h5py.File(path) as f:
        assert f["splits/spatial-block"].attrs["block_km"] == 500
    code, out, _ = run(capsys, "data", "split", str(path), "--scheme", "spatial-block", "--block-km", "300")
    assert code == 0 and "splits/spatial-block" in out
    code, out, _ = run(capsys, "data", "info", str(path), "--json")
    info = json.loads(out)
    assert info["n"] == 60 and info["size"] == [8, 8] and len(info["bands"]) == 12
    assert set(info["splits"]) == {"random", "spatial-block"} and info["groups"] == 30
    for key in ("classes", "lat_range", "lon_range"):
        assert key in info
    code, out, _ = run(capsys, "data", "info", str(path))
    assert code == 0 and "split     random (default)" in out


def test_synth_without_spatial_split(capsys, tmp_path):
    path = tmp_path / "w.h5"
    assert run(capsys, "data", "synth", "-o", str(path), "--n", "30", "--size", "8", "--block-km", "0")[0] == 0
    with h5py.File(path) as f:
        assert set(f["splits"]) == {"random"}


def test_synth_tiles(capsys, tmp_path):
    path = tmp_path / "tiles.h5"
    code, out, _ = run(capsys, "data", "synth", "-o", str(path), "--n", "72", "--size", "8", "--dates", "2", "--tiles", "3")
    assert code == 0 and "72 synthetic samples (4 places x 2 dates x 3x3 tiles)" in out
    with h5py.File(path) as f:
        assert f.attrs["tiles_per_side"] == 3 and len(f["images"]) == 72 and len(set(f["group"][:])) == 36


def test_convert_major_tom_stride(capsys, shared_data, tmp_path):
    out = tmp_path / "mt.h5"
    src = str(shared_data / "major_tom_core_s2l2a_sample")
    code, stdout, err = run(capsys, "data", "convert", "major-tom", src, "-o", str(out), "--patch-size", "512", "--stride", "256")
    assert code == 0, err
    assert "18 samples" in stdout  # 2 cells x 3 x 3 corners (0, 256, 512)
    with h5py.File(out) as f:
        assert f.attrs["stride"] == 256 and f.attrs["patch_size"] == 512
    code, _, err = run(capsys, "data", "convert", "major-tom", src, "-o", str(out), "--patch-size", "512", "--stride", "0")
    assert code == 2 and "major-tom: stride must be a positive whole number of pixels, got 0" in err


def test_list(capsys):
    code, out, _ = run(capsys, "list", "backbones")
    assert code == 0 and "resnet18" in out and "tiny_cnn" in out and "vit_small" in out
    code, out, _ = run(capsys, "list")
    for name in ("geometric", "standard", "multicrop", "mocov2", "dino", "georank", "tile2vec", "eurosat-ms",
                 "synthetic/mocov2_georank"):
        assert name in out


def test_list_configs(capsys):
    from ssl_rs.config import packaged_configs

    code, out, _ = run(capsys, "list", "configs")
    lines = out.splitlines()
    assert code == 0 and lines[0] == f"configs ({len(packaged_configs())})"
    assert re.match(r"\| name +\| description +\|$", lines[1]) and re.match(r"\|-+\|-+\|$", lines[2])
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in lines[3:] if line.startswith("|")}
    assert rows["synthetic/mocov2_georank"] == "MoCo v2 + GeoRank on the synthetic geo-world"  # its leading comment
    assert rows["eurosat/mocov2_georank"] == "mocov2 + georank"  # no comment: the method and regularizer
    assert "synthetic/_data" not in rows and "defaults" not in rows  # layers the configs compose
    assert len({len(line) for line in lines[1:] if line}) == 1  # one aligned table


@pytest.mark.slow
def test_pretrain_a_packaged_config_by_name_outside_the_checkout(tiny_world, tmp_path):
    """``-c synthetic/mocov2`` from a working directory that has no config files: the packaged one."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "ssl_rs.cli", "pretrain", "-c", "synthetic/mocov2", f"data.path={tiny_world}",
           "output.dir=runs", "output.name=run", "data.batch_size=32", "data.num_workers=0", "trainer.max_epochs=1",
           "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0", "eval.schemes=null",
           "method.args.queue_size=64", "backbone.args.width=8", "trainer.accelerator=cpu"]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = yaml.safe_load((cwd / "runs" / "run" / "config.yaml").read_text())
    assert saved["method"]["name"] == "mocov2" and saved["method"]["args"]["temperature"] == 0.2  # mocov2.yaml
    assert saved["backbone"]["name"] == "tiny_cnn"  # its synthetic/_data.yaml
    proc = subprocess.run([*cmd[:5], "synthetic/mocov2_georak", *cmd[6:]], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "did you mean 'synthetic/mocov2_georank'?" in proc.stderr


def test_convert_flags_come_from_the_converters_options(capsys, monkeypatch, tmp_path):
    """A converter's declared options are ``data convert`` flags with no edit of the CLI."""
    from ssl_rs.data.converters import CONVERTERS, Converter, Option
    from ssl_rs.data.synth import synthesize

    seen = {}

    def convert_fake(src, out, *, progress=True, tile_count=1, mode="a"):
        seen.update(tile_count=tile_count, mode=mode)
        return synthesize(out, n=20, size=8, progress=False)

    fake = Converter("fake-format", "a test format", convert_fake, (
        Option("tile_count", int, 1, "tiles per side"),
        Option("mode", str, "a", "how", ("a", "b")),
    ))
    CONVERTERS.load()
    monkeypatch.setitem(CONVERTERS._entries, fake.name, fake)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x").write_text("x")
    code, out, err = run(capsys, "data", "convert", "fake-format", str(tmp_path / "src"), "-o", str(tmp_path / "o.h5"),
                         "--tile-count", "3", "--mode", "b")
    assert code == 0, err
    assert seen == {"tile_count": 3, "mode": "b"} and "20 samples" in out
    with pytest.raises(SystemExit):  # argparse: not one of the declared choices
        main(["data", "convert", "fake-format", str(tmp_path / "src"), "-o", str(tmp_path / "o.h5"), "--mode", "c"])
    assert "invalid choice: 'c'" in capsys.readouterr().err
    code, _, err = run(capsys, "data", "convert", "eurosat-ms", str(tmp_path / "src"), "-o", str(tmp_path / "e.h5"),
                       "--tile-count", "3")  # another converter's flag is refused, by the flag typed
    assert code == 2 and "--tile-count: not an option of eurosat-ms (its options: none)" in err


@pytest.mark.parametrize("protocol", ["knn", "linear"])
def test_eval_random_backbone(capsys, tiny_world, tmp_path, protocol):
    out_json = tmp_path / "r.json"
    code, out, err = run(capsys, "eval", protocol, "--backbone", "tiny_cnn", "--data", str(tiny_world),
                         "--json", str(out_json), *(["--epochs", "5"] if protocol == "linear" else []))
    assert code == 0, err
    result = json.loads(out_json.read_text())
    metrics = result["metrics"][protocol]
    assert 0 <= metrics["acc_macro"] <= 100 and result["n_train"] == 84 and result["n_test"] == 24
    assert "acc_macro" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "info", "{tmp}/missing.h5"], "missing.h5: file not found"),
        (["data", "info", "{tmp}/junk.h5"], "junk.h5: not an HDF5 file"),
        (["eval", "knn", "--backbone", "resnet1", "--data", "{world}"], "unknown backbone 'resnet1'; did you mean 'resnet18'?"),
        (["eval", "knn", "--backbone", "tiny_cnn", "--data", "{world}", "--bands", "B02,B03", "--backbone-args", "{{}}",
          "--scheme", "nope"], "splits/nope: split scheme not found"),
        (["data", "convert", "eurosat", "{tmp}", "-o", "{tmp}/x.h5"], "did you mean 'eurosat-ms'?"),
        (["data", "convert", "eurosat-ms", "{tmp}/nowhere", "-o", "{tmp}/x.h5"], "nowhere"),
        (["data", "synth", "-o", "{tmp}/s.h5", "--n", "10", "--dates", "3"], "--dates must be >= 1 and divide --n"),
        (["data", "synth", "-o", "{tmp}/s.h5", "--n", "30", "--tiles", "2"], "--n (30) must be a multiple of --dates x"),
        (["data", "synth", "-o", "{tmp}/s.h5", "--n", "30", "--tiles", "0"], "--tiles must be a whole number >= 1"),
        (["data", "synth", "-o", "{tmp}/s.h5", "--n", "30", "--block-km", "-5"], "--block-km must be positive"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, tiny_world, argv, message):
    (tmp_path / "junk.h5").write_text("not hdf5")
    argv = [a.format(tmp=tmp_path, world=tiny_world) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("ssl-rs: error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err


def test_band_mismatch_with_model(tmp_path, tiny_world):
    from ssl_rs.backbones import create_backbone
    from ssl_rs.errors import DataError
    from ssl_rs.evaluation.harness import evaluate

    model = create_backbone("tiny_cnn", in_chans=13)
    with pytest.raises(DataError, match=r"bands: the data has 12 bands \(B01.*\) but backbone 'tiny_cnn' expects 13"):
        evaluate(model, tiny_world, progress=False)


def test_console_script_entry_point(tiny_world):
    proc = subprocess.run([sys.executable, "-m", "ssl_rs.cli", "data", "info", str(tiny_world), "--json"],
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout)["n"] == 120


def test_convert_eurosat_cli(capsys, shared_data, tmp_path):
    out = tmp_path / "eurosat.h5"
    code, stdout, err = run(capsys, "data", "convert", "eurosat-ms", str(shared_data / "eurosat_ms_subset"), "-o", str(out))
    assert code == 0, err
    code, stdout, _ = run(capsys, "data", "info", str(out), "--json")
    info = json.loads(stdout)
    assert info["n"] == 270 and len(info["bands"]) == 13 and len(info["classes"]) == 10
    assert 34 <= info["lat_range"][0] and info["lat_range"][1] <= 66
    assert -10 <= info["lon_range"][0] and info["lon_range"][1] <= 34
    with h5py.File(out) as f:
        assert list(f.attrs["bands"])[7:9] == ["B08", "B8A"]


def test_pretrain_shows_the_library_log_lines(capsys, tmp_path):
    world = tmp_path / "tiles.h5"
    assert run(capsys, "data", "synth", "-o", str(world), "--n", "64", "--size", "16", "--tiles", "2")[0] == 0
    config = packaged_config_dir() / "synthetic" / "neighbormae.yaml"
    code, _, err = run(capsys, "pretrain", "-c", str(config), f"data.path={world}", f"output.dir={tmp_path}/runs",
                       "data.batch_size=16", "trainer.max_epochs=1", "trainer.progress_bar=false",
                       "trainer.knn_every_n_epochs=0", "eval.schemes=null", "backbone.args.depth=1",
                       "method.args.decoder_dim=32", "method.args.decoder_depth=1", "method.args.decoder_heads=2")
    assert code == 0
    assert re.search(r"ssl-rs: neighbour pairs: \d+ of \d+ training samples have a neighbour", err)
    assert not logging.getLogger("ssl_rs").handlers  # the CLI's handler is gone after the call


def test_the_authors_probe_options_reach_the_harness_from_the_cli_and_the_config(tiny_world, tmp_path, monkeypatch,
                                                                                 capsys):
    """``eval knn --votes sum`` / ``eval linear --recipe georank`` and ``eval.knn_votes`` /
    ``eval.linear_recipe`` in a pretraining config (the GeoRank authors' k-NN scores and probe)."""
    import ssl_rs.evaluation.harness as harness

    seen, real = [], harness.evaluate
    monkeypatch.setattr(harness, "evaluate", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    common = ["--backbone", "tiny_cnn", "--backbone-args", '{"width": 8}', "--data", str(tiny_world)]
    assert main(["eval", "knn", *common, "--votes", "sum"]) == 0
    assert main(["eval", "linear", *common, "--recipe", "georank", "--epochs", "2"]) == 0
    assert seen[0]["knn_votes"] == "sum" and seen[1]["linear_recipe"] == "georank"
    assert "linear_recipe" not in seen[0] and "knn_votes" not in seen[1]  # each command offers its own option
    capsys.readouterr()
    run = ["pretrain", "-c", "synthetic/mocov2", f"data.path={tiny_world}", f"output.dir={tmp_path}",
           "trainer.progress_bar=false"]
    assert main([*run, "eval.knn_votes=total"]) == 2
    err = capsys.readouterr().err
    assert "eval.knn_votes: unknown 'total' (use mean, sum)" in err and err.count("\n") == 1
    assert main([*run, "eval.linear_recipe=solo"]) == 2
    assert "eval.linear_recipe: unknown 'solo' (use ssl-rs, georank)" in capsys.readouterr().err
    assert main([*run, "eval.linear_epochs=0"]) == 2
    assert "eval.linear_epochs: must be a positive integer, got 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    seen.clear()
    assert main([*run, "trainer.max_epochs=1", "trainer.knn_every_n_epochs=0", "backbone.args.width=8", "data.batch_size=32",
                 "method.args.queue_size=64", "eval.schemes=null", "eval.protocols=[linear]", "eval.linear_epochs=3",
                 "eval.linear_recipe=georank"]) == 0
    assert [(kw["linear_epochs"], kw["linear_recipe"]) for kw in seen] == [(3, "georank")]


def test_a_run_on_the_cpu_evaluates_on_the_cpu_where_a_gpu_exists(tiny_world, tmp_path, monkeypatch):
    """``trainer.accelerator=cpu`` on a GPU machine: the final evaluation stays on the CPU (it used
    the GPU whenever one was present) and the training loader pins no memory."""
    import torch

    import ssl_rs.evaluation.harness as harness
    from ssl_rs.config import load_config, packaged_config_dir
    from ssl_rs.evaluation.plan import evaluation_device
    from ssl_rs.train import build

    seen, real = [], harness.evaluate
    monkeypatch.setattr(harness, "evaluate", lambda *a, **kw: seen.append(kw.get("device")) or real(
        *a, **{**kw, "device": "cpu"}))
    run = ["pretrain", "-c", "synthetic/mocov2", f"data.path={tiny_world}", f"output.dir={tmp_path}",
           "trainer.progress_bar=false", "trainer.max_epochs=1", "trainer.knn_every_n_epochs=0", "data.batch_size=32",
           "backbone.args.width=8", "method.args.queue_size=64", "eval.schemes=null", "trainer.accelerator=cpu"]
    assert main(run) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what a GPU machine answers
    cfg = load_config(packaged_config_dir() / "synthetic" / "mocov2.yaml",
                      [o for o in run[3:] if "output" not in o] + [f"output.dir={tmp_path}/b"])
    assert build(cfg).train_loader.pin_memory is False
    assert seen == ["cpu"] and evaluation_device(cfg) == "cpu"
    cfg.trainer.accelerator = "auto"
    assert evaluation_device(cfg) is None and build(cfg).train_loader.pin_memory is True
