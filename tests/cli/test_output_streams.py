"""What the commands write where: results on stdout, progress and logs on stderr by one rule (a
bar on a terminal, plain lines elsewhere); the summary after ``--resume``; a run's final metrics
and config in its TensorBoard log; what ``best.ckpt`` is and when it exists."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssl_rs.cli import main

#: a pretraining of a few seconds on the tiny world (120 samples, 16 px, random split only)
TINY = ["-c", "synthetic/mocov2", "data.batch_size=32", "eval.schemes=null", "method.args.queue_size=64",
        "backbone.args.width=8", "trainer.accelerator=cpu", "trainer.knn_every_n_epochs=1"]
#: a progress line for every update: what a long run prints now and then, at once
EVERY_UPDATE = {"SSL_RS_PROGRESS_SECONDS": "0"}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``ssl-rs ARGS`` as a user runs it with its output redirected (stdout and stderr are pipes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **EVERY_UPDATE}
    done = subprocess.run([sys.executable, "-m", "ssl_rs.cli", *args], cwd=cwd, env=env, capture_output=True,
                          timeout=600)
    # decoded here: text=True would turn the "\r" of progress frames into newlines
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def scalars_and_hparams(run_dir: Path):
    """Every scalar tag's values and the hparams (name -> value) of a run's TensorBoard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    scalars, hparams, metric_tags = {}, {}, []
    for events in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [e.value for e in acc.Scalars(tag)]
        try:
            content = acc.PluginTagToContent("hparams")
        except KeyError:  # an event file without hparams (the training's)
            content = {}
        if "_hparams_/session_start_info" in content:
            start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
            for name, value in start.session_start_info.hparams.items():
                hparams[name] = value.string_value or value.number_value or value.bool_value
            experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
            metric_tags = [m.name.tag for m in experiment.experiment.metric_infos]
    return scalars, hparams, metric_tags


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    """One 2-epoch run whose output was redirected, as ``ssl-rs pretrain ... > out 2> err``."""
    cwd = tmp_path_factory.mktemp("pretrain")
    proc = cli("pretrain", *TINY, f"data.path={tiny_world}", "output.dir=runs", "output.name=run",
               "trainer.max_epochs=2", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, cwd / "runs" / "run"


def test_pretrain_stdout_carries_only_the_results(trained):
    proc, run_dir = trained
    assert "\r" not in proc.stdout  # no progress frames among the results (Lightning's bar wrote to stdout)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"run runs/run: 2 epochs in {lines[0].split(' in ')[1]}"
    assert lines[1].startswith("| scheme") and lines[3].startswith("| random ") and "| knn " in lines[3]
    assert not any(line.startswith("ssl-rs:") or "Epoch" in line for line in lines)
    # progress went to stderr, as plain lines since stderr is no terminal
    assert "\r" not in proc.stderr
    assert "ssl-rs: training: 4/4 steps (100%), epoch 2/2" in proc.stderr and "done in" in proc.stderr


def test_final_metrics_and_config_are_in_the_tensorboard_log(trained):
    _, run_dir = trained
    results = json.loads((run_dir / "results.json").read_text())
    final = results["eval"]["random"]["metrics"]["knn"]
    scalars, hparams, metric_tags = scalars_and_hparams(run_dir)
    for name in ("acc_macro", "acc_micro"):
        assert scalars[f"final/random/knn/{name}"] == [pytest.approx(final[name])]
        assert f"final/random/knn/{name}" in metric_tags  # compared across runs in the HPARAMS tab
    assert hparams["method.name"] == "mocov2" and hparams["trainer.max_epochs"] == 2
    assert hparams["backbone.args.width"] == 8
    # the learning rate once, from Lightning's monitor (per parameter group), not also as train/lr
    assert "train/lr" not in scalars and "lr-SGD/decay" in scalars


def test_best_checkpoint_is_the_highest_online_knn_and_said_so(trained):
    proc, run_dir = trained
    best = json.loads((run_dir / "results.json").read_text())["best"]
    assert best["metric"] == "val/knn_acc_macro" and Path(best["checkpoint"]) == run_dir / "checkpoints" / "best.ckpt"
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert f"best.ckpt: val/knn_acc_macro {best['score']:.2f}" in proc.stdout


def test_no_best_checkpoint_is_said_before_and_after(tiny_world, tmp_path, capsys):
    code = main(["pretrain", *TINY, f"data.path={tiny_world}", f"output.dir={tmp_path}", "output.name=run",
                 "trainer.max_epochs=1", "trainer.knn_every_n_epochs=3", "trainer.progress_bar=false"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "runs every 3 epochs (trainer.knn_every_n_epochs) and the run has 1, so it will not run" in err
    assert "no best.ckpt (last.ckpt only): the online k-NN runs every 3 epochs and the run has 1" in out
    assert not (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["best"]["checkpoint"] is None


def test_resume_summary_counts_this_sessions_epochs_and_json(trained, tmp_path, capsys, monkeypatch):
    import shutil

    _, first = trained
    run_dir = tmp_path / "run"
    shutil.copytree(first, run_dir)  # the module's run stays as it was
    monkeypatch.setenv("SSL_RS_PROGRESS_SECONDS", "0")
    world = json.loads((first / "results.json").read_text())["config"]["data"]["path"]
    base = ["pretrain", *TINY, f"data.path={world}", f"output.dir={tmp_path}", "output.name=run",
            "trainer.max_epochs=3", "--resume", str(run_dir / "checkpoints" / "last.ckpt")]
    code = main(base)
    out, err = capsys.readouterr()
    assert code == 0, err
    head = out.splitlines()[0]  # this session trained 1 epoch (the 3rd), in the seconds it reports
    assert head.startswith("run ") and ": 1 epoch in " in head and head.endswith("(continued from epoch 2; 3 in all)")
    assert "ssl-rs: training: 6/6 steps (100%), epoch 3/3" in err  # the bar counts the whole run

    code = main([*base, "--json"])  # nothing left to train: only the final evaluation
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)  # stdout is one JSON object and nothing else
    assert (result["epochs"], result["epochs_run"], result["steps_run"]) == (3, 0, 0)
    assert result["eval"]["random"]["metrics"]["knn"]["acc_macro"] >= 0


def test_eval_progress_is_plain_lines_off_a_terminal(tiny_world, capsys, monkeypatch):
    monkeypatch.setenv("SSL_RS_PROGRESS_SECONDS", "0")  # stderr is captured here: no terminal
    code = main(["eval", "knn", "--backbone", "tiny_cnn", "--data", str(tiny_world), "--batch-size", "16",
                 "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "\r" not in err and "\r" not in out  # tqdm drew its bar here even off a terminal
    assert "ssl-rs: features: 1/6 batches (17%)" in err and "ssl-rs: features: 6/6 batches (100%), done in" in err
    assert out.startswith("tiny_cnn on ")


def test_synth_progress_is_plain_lines_off_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSL_RS_PROGRESS_SECONDS", "0")
    code = main(["data", "synth", "-o", str(tmp_path / "w.h5"), "--n", "600", "--size", "8"])  # 3 chunks of 256
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "\r" not in err
    assert "ssl-rs: synthesising: 256/600 img (43%)" in err  # it drew nothing at all off a terminal
    assert "ssl-rs: synthesising: 600/600 img (100%), done in" in err
    assert "600 synthetic samples" in out


def test_bench_run_shows_each_cells_progress_and_report_says_what_it_does(tmp_path, capsys, monkeypatch):
    suite = tmp_path / "micro.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "micro",
        "data": {"synth": {"n": 120, "size": 16, "seed": 1, "classes": 4}},
        "base_config": "synthetic/mocov2",
        "overrides": ["data.batch_size=32", "trainer.max_epochs=2", "trainer.knn_every_n_epochs=0",
                      "backbone.args.width=8", "method.args.queue_size=64"],
        "matrix": {"method": ["mocov2"], "seed": [0]},
        "eval": {"datasets": [{"name": "world", "data": "pretrain", "schemes": ["random"]}]},
        "studies": [{"name": "methods", "compare": ["method"]}],
        "report": {"embedding": "pca", "embedding_samples": 60},
    }))
    monkeypatch.setenv("SSL_RS_PROGRESS_SECONDS", "0")
    out_dir = tmp_path / "out"
    assert main(["bench", "run", str(suite), "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert "cell 1/1 mocov2 seed=0" in out and "ssl-rs: training" not in out
    assert f"suite micro: 1 cell, 0 finished, 1 to run -> {out_dir}" in out  # was "1 cells", "ran 1 cells"
    assert f"suite micro: ran 1 cell, 0 left; results in {out_dir / 'results.csv'}" in out
    assert "ssl-rs: training: 2/4 steps (50%), epoch 1/2" in err and "ssl-rs: training: 4/4 steps (100%)" in err
    cell = json.loads((out_dir / "cells.json").read_text())[0]
    scalars, hparams, _ = scalars_and_hparams(out_dir / cell["run_dir"])
    assert "final/world/random/knn/acc_macro" in scalars and hparams["method.name"] == "mocov2"

    assert main(["bench", "report", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert f"ssl-rs: reporting {out_dir}: tables and plots" in err and "(PCA: the slow part)" in err  # the suite's
    assert "wrote" in out


def test_progress_rule():
    """A bar only on a terminal; elsewhere a line per interval and a closing line, or nothing at all
    for work that ends within the interval."""
    from ssl_rs.progress import Progress, progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    log = io.StringIO()
    assert list(progress(range(3), "work", "item", stream=log, interval=0)) == [0, 1, 2]
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("ssl-rs: work: 1/3 items (33%), ") and "elapsed, ~" in lines[0]
    assert lines[-1].startswith("ssl-rs: work: 3/3 items (100%), done in ") and "\r" not in log.getvalue()

    broken = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        for i in progress(range(3), "work", stream=broken, interval=0):
            if i == 1:
                raise KeyboardInterrupt
    assert broken.getvalue().splitlines()[-1].startswith("ssl-rs: work: 1/3 it (33%), stopped after ")

    quiet = io.StringIO()
    list(progress(range(3), "work", stream=quiet, interval=3600))
    assert quiet.getvalue() == ""  # short work leaves a log untouched

    terminal = Terminal()
    with Progress(3, "work", "item", stream=terminal) as shown:
        shown.update(3)
    assert "\r" in terminal.getvalue() and "work:" in terminal.getvalue()  # tqdm's frames

    off = Terminal()
    list(progress(range(3), "work", stream=off, enabled=False))
    assert off.getvalue() == ""

    download = io.StringIO()  # bytes read as sizes
    with Progress(3 * 2**20, "weights.pth", "B", stream=download, interval=0) as shown:
        shown.update(2**20)
        shown.update(2 * 2**20)
    first, last = download.getvalue().splitlines()  # one line as it went, one at the end
    assert first.startswith("ssl-rs: weights.pth: 1.0 MiB/3.0 MiB (33%), ")
    assert last.startswith("ssl-rs: weights.pth: 3.0 MiB/3.0 MiB (100%), done in ")


@pytest.mark.parametrize("unit, total, done, shown", [
    ("step", 30, 7, "7/30 steps (23%)"),  # the fine-tuning's line said "7/30 step"
    ("batch", 6, 1, "1/6 batches (17%)"),
    ("patch", None, 5, "5 patches,"),  # no total: the count itself
    ("epoch", 1, 0, "0/1 epoch (0%)"),
    ("step", None, 1, "1 step,"),
    ("img", 600, 256, "256/600 img (43%)"),  # abbreviations stay as they are
    ("it", 3, 1, "1/3 it (33%)"),
])
def test_progress_lines_count_in_plurals(unit, total, done, shown):
    from ssl_rs.progress import Progress

    log = io.StringIO()
    with Progress(total, "work", unit, stream=log, interval=0) as bar:
        bar.update(done)
    assert log.getvalue().startswith(f"ssl-rs: work: {shown}"), log.getvalue()


def test_a_reader_that_stops_early_ends_the_command_quietly(tiny_world):
    """``ssl-rs data info FILE | head``: when the reader of stdout closes it, the command ends with
    128 + SIGPIPE as a shell reports it, and without a BrokenPipeError traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ssl_rs.cli", "data", "info", str(tiny_world)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before the command writes anything (it is still importing)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
