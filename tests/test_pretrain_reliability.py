"""`ssl-rs pretrain` under interruption, replacement, concurrent use and bad values: SIGINT / SIGTERM
exit 130 / 143 with a resumable last.ckpt; output.overwrite never loses the old run before the new
one has a checkpoint; one process per run directory; bad values are one line, exit 2, nothing written."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssl_rs.cli import main
from ssl_rs.config import load_config, packaged_config_dir
from ssl_rs.errors import ConfigError
from ssl_rs.train import pretrain  # imports Lightning (and its log handlers) outside any captured output

REPO = Path(__file__).resolve().parents[1]
CONFIG = packaged_config_dir() / "synthetic" / "mocov2.yaml"


def overrides(world, out, *extra):
    """A tiny MoCo v2 run (2 steps an epoch on the tiny world, a few seconds in all)."""
    return [f"data.path={world}", f"output.dir={out}", "output.name=run", "data.batch_size=32",
            "data.num_workers=0", "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0",
            "eval.schemes=null", "method.args.queue_size=64", "backbone.args.width=8",
            "trainer.accelerator=cpu", *extra]


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def start(world, out, *extra, session=False):
    """`python -m ssl_rs.cli pretrain ...` in a subprocess (SIGINT not inherited as ignored; with
    ``session``, in a process group of its own, DataLoader workers included)."""
    cmd = [sys.executable, "-m", "ssl_rs.cli", "pretrain", "-c", str(CONFIG), *overrides(world, out, *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out, env=env,
                            start_new_session=session, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"pretrain ended (rc {proc.returncode}) before {path} appeared:\n"
                                 + proc.stderr.read()[-3000:])
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)


def finish(proc: subprocess.Popen, timeout: float = 120):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"pretrain did not end within {timeout} s after the signal:\n{err[-3000:]}")
    return proc.returncode, out, err


# ----------------------------------------------------------------------------- 1. interruption
@pytest.mark.slow
@pytest.mark.parametrize("signum, code, group", [
    (signal.SIGTERM, 143, True),  # a scheduler's notice to every process, DataLoader workers included
    (signal.SIGINT, 130, False),  # Ctrl-C (the SIGTERM of the main process alone: the lock test)
], ids=["sigterm-to-the-group", "sigint"])
def test_signal_exits_non_zero_with_a_resumable_last_checkpoint(tiny_world, tmp_path, capsys, signum, code, group):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    workers = "data.num_workers=2" if group else "data.num_workers=0"
    proc = start(tiny_world, tmp_path, "trainer.max_epochs=100000", workers, session=group)
    try:
        wait_for(last, proc)  # the end of the first epoch: training is under way
        time.sleep(0.5)
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        rc, _, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == code, err[-3000:]
    assert "ssl-rs: interrupted" in err
    assert f"--resume {last}" in err
    assert not (run / "results.json").exists() and not (run / ".lock").exists()
    saved = torch.load(last, map_location="cpu", weights_only=True)
    epochs_done = saved["epoch"]
    assert saved["global_step"] >= 2 and saved["state_dict"]
    # continue it: the run ends at max_epochs with every step taken
    target = epochs_done + 2
    rc, _, err = cli(capsys, "pretrain", "-c", str(CONFIG),
                     *overrides(tiny_world, tmp_path, f"trainer.max_epochs={target}"), "--resume", str(last))
    assert rc == 0, err[-3000:]
    result = json.loads((run / "results.json").read_text())
    assert result["epochs"] == target and result["steps"] == 2 * target  # 84 training samples, batch 32


@pytest.mark.slow
def test_sigterm_to_every_ddp_process_stops_them_together(tiny_world, tmp_path):
    """Two CPU processes (gloo): the scheduler's SIGTERM reaches both; they agree on the step to stop
    at (no collective in a signal handler), rank 0 saves last.ckpt, both end with 143."""
    run = tmp_path / "run"
    proc = start(tiny_world, tmp_path, "trainer.max_epochs=100000", "trainer.devices=2", "trainer.strategy=ddp",
                 "data.batch_size=16", session=True)
    try:
        wait_for(run / "checkpoints" / "last.ckpt", proc, timeout=240)
        assert (run / ".lock").read_text().strip() == str(proc.pid)  # rank 0 (the launcher) owns the run
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGTERM)
        rc, _, err = finish(proc)
    finally:
        try:  # whatever is left of the group (the second process too)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert rc == 143, err[-3000:]
    assert err.count("ssl-rs: interrupted") == 2  # each process says so
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] >= 1
    assert not (run / ".lock").exists()


# ----------------------------------------------------------------------------- 2. replacing a run
def _finished_run(world, tmp_path, capsys):
    rc, _, err = cli(capsys, "pretrain", "-c", str(CONFIG), *overrides(world, tmp_path, "trainer.max_epochs=1"))
    assert rc == 0, err
    run = tmp_path / "run"
    return run, {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_overwrite_refused_by_validation_keeps_the_old_run(tiny_world, tmp_path, capsys):
    run, before = _finished_run(tiny_world, tmp_path, capsys)
    # too large a batch is found when the data is opened, after the overwrite used to delete checkpoints/
    rc, _, err = cli(capsys, "pretrain", "-c", str(CONFIG),
                     *overrides(tiny_world, tmp_path, "trainer.max_epochs=1", "output.overwrite=true",
                                "data.batch_size=1000"))
    assert rc == 2 and err.count("ssl-rs: error: data.batch_size") == 1
    assert _snapshot(run) == before


def test_overwrite_that_crashes_before_its_first_checkpoint_restores_the_old_run(tiny_world, tmp_path, capsys,
                                                                                 monkeypatch):
    from ssl_rs.methods.mocov2 import MoCoV2

    run, before = _finished_run(tiny_world, tmp_path, capsys)

    def crash(self, batch, batch_idx):
        raise RuntimeError("boom")

    monkeypatch.setattr(MoCoV2, "training_step", crash)
    cfg = load_config(CONFIG, overrides(tiny_world, tmp_path, "trainer.max_epochs=1", "output.overwrite=true",
                                        "trainer.seed=7"))
    with pytest.raises(RuntimeError, match="boom"):
        pretrain(cfg)
    assert _snapshot(run) == before  # no new config.yaml beside the old results.json, checkpoints back
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "results.json", "tb"]


def test_overwrite_replaces_the_old_run_once_the_new_one_has_a_checkpoint(tiny_world, tmp_path, capsys,
                                                                          monkeypatch):
    from ssl_rs.methods.mocov2 import MoCoV2

    run, before = _finished_run(tiny_world, tmp_path, capsys)
    seen, original = [], MoCoV2.on_train_epoch_start

    def record(self):
        seen.append(sorted(p.name for p in run.iterdir()))
        original(self)

    monkeypatch.setattr(MoCoV2, "on_train_epoch_start", record)
    cfg = load_config(CONFIG, overrides(tiny_world, tmp_path, "trainer.max_epochs=2", "output.overwrite=true"))
    pretrain(cfg, evaluate_after=False)
    # epoch 1: the old run is aside; epoch 2: the new run has its first checkpoint, the old one is gone
    assert ".previous" in seen[0] and ".previous" not in seen[1]
    names = sorted(p.name for p in run.iterdir())
    assert names == ["checkpoints", "config.yaml", "tb"]  # no results.json of the old run beside the new one
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


# ----------------------------------------------------------------------------- 3. one owner
@pytest.mark.slow
def test_second_pretrain_into_a_running_run_directory_is_refused(tiny_world, tmp_path, capsys):
    run = tmp_path / "run"
    first = start(tiny_world, tmp_path, "trainer.max_epochs=100000")
    try:
        wait_for(run / "checkpoints" / "last.ckpt", first)
        # the second `ssl-rs pretrain` is this test's process
        rc, _, err = cli(capsys, "pretrain", "-c", str(CONFIG),
                         *overrides(tiny_world, tmp_path, "trainer.max_epochs=1", "output.overwrite=true"))
        assert rc == 2, err[-3000:]
        assert err.count("\n") == 1 and err.startswith(f"ssl-rs: error: {run}: ") and f"pid {first.pid}" in err
        assert first.poll() is None  # the owner goes on
        assert (run / ".lock").read_text().strip() == str(first.pid)
        first.send_signal(signal.SIGTERM)
        assert finish(first)[0] == 143
    finally:
        if first.poll() is None:
            first.kill()
    assert not (run / ".lock").exists()  # released with its owner


def test_rank_variables_single_out_global_rank_zero_for_the_early_checks(monkeypatch):
    """Before Lightning sets the ranks up, only rank 0 probes the lock (the others would find it
    taken); the lock itself is taken by ``trainer.is_global_zero`` (the DDP tests)."""
    from ssl_rs.run_directory import is_rank_zero as _is_rank_zero

    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    assert _is_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "0")
    assert _is_rank_zero()
    for var, value in (("LOCAL_RANK", "1"), ("NODE_RANK", "1"), ("RANK", "3"), ("SLURM_PROCID", "2")):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            assert not _is_rank_zero()


# ----------------------------------------------------------------------------- 4. bad values
@pytest.mark.parametrize("override, key", [
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("trainer.max_epochs=-1", "trainer.max_epochs"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.batch_size=0", "data.batch_size"),
])
def test_bad_values_are_one_line_exit_2_nothing_written(tiny_world, tmp_path, capsys, override, key):
    rc, out, err = cli(capsys, "pretrain", "-c", str(CONFIG), *overrides(tiny_world, tmp_path / "out", override))
    assert rc == 2
    assert err.startswith(f"ssl-rs: error: {key}: ") and err.count("\n") == 1, err[-3000:]
    assert not (tmp_path / "out").exists()


def test_validate_runs_before_the_run_directory_is_touched(tiny_world, tmp_path):
    cfg = load_config(CONFIG, overrides(tiny_world, tmp_path / "out", "trainer.max_epochs=0"))
    with pytest.raises(ConfigError, match=r"^trainer\.max_epochs: must be a positive integer, got 0$"):
        pretrain(cfg)
    assert not (tmp_path / "out").exists()


def test_run_directory_lock_names_its_owner_and_is_removed_on_release(tmp_path):
    from ssl_rs.run_directory import RunDirectory

    run = tmp_path / "runs" / "run"
    owner = RunDirectory(run).acquire()
    assert (run / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(ConfigError, match=rf"^{run}: the run directory is in use by another ssl-rs pretrain "
                                          rf"\(pid {os.getpid()}\)"):
        RunDirectory(run).acquire()
    owner.release()
    assert not (tmp_path / "runs").exists()  # it created the directories, and they are empty again
    again = RunDirectory(run).acquire()
    again.release()


def test_a_replacement_killed_before_its_first_checkpoint_is_undone_by_the_next_owner(tmp_path):
    from ssl_rs.run_directory import RunDirectory

    run = tmp_path / "run"
    (run / ".previous" / "checkpoints").mkdir(parents=True)
    (run / ".previous" / "checkpoints" / "last.ckpt").write_text("old")
    (run / ".previous" / "results.json").write_text("{}")
    (run / "config.yaml").write_text("new")  # what the killed replacement had written
    (run / "notes.txt").write_text("mine")  # not a run file: left alone
    owner = RunDirectory(run).acquire()
    with pytest.raises(ConfigError, match="a run already exists there"):
        owner.start(fresh=True, overwrite=False)
    owner.release()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "notes.txt", "results.json"]
    assert (run / "checkpoints" / "last.ckpt").read_text() == "old"


def test_config_and_results_are_written_atomically(tiny_world, tmp_path, capsys, monkeypatch):
    """config.yaml and results.json go through ssl_rs.files like every output: a full disk is one
    line, not a truncated file (checkpoints, written by Lightning, are not part files)."""
    sys.path.insert(0, str(REPO / "tests" / "data"))
    from test_reliability import fail_writes_of_part_files  # the data tests' full-disk injector

    fail_writes_of_part_files(monkeypatch, errno.ENOSPC)
    rc, _, err = cli(capsys, "pretrain", "-c", str(CONFIG), *overrides(tiny_world, tmp_path, "trainer.max_epochs=1"))
    assert rc == 2, err
    assert f"{tmp_path / 'run' / 'config.yaml'}: no space left on device" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "config.yaml").exists()
