"""``ssl-rs pretrain`` run from a shell: stderr holds ssl-rs's own lines, not Lightning's per-run
chatter (device summary, "Loading `train_dataloader`...", "`Trainer.fit` stopped", the
"Checkpoint directory ... exists and is not empty" warning of every --resume, the missing
val loader of a run without online k-NN). Lightning's other lines and real warnings still show."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

from ssl_rs.trainer import lightning_chatter_muted

TINY = ["-c", "synthetic/mocov2", "data.batch_size=32", "eval.schemes=null", "method.args.queue_size=64",
        "backbone.args.width=8", "trainer.accelerator=cpu", "trainer.knn_every_n_epochs=0"]
CHATTER = ("GPU available", "TPU available", "Loading `train_dataloader`", "`Trainer.fit` stopped",
           "exists and is not empty", "validation_step")


def shell_pretrain(cwd, *args: str) -> subprocess.CompletedProcess:
    """``ssl-rs pretrain ARGS 2> err``, as from a shell: a fresh process, no pytest warning filters."""
    # no GPU in sight: on a GPU machine Lightning's real "GPU available but not used" warning would show
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "ssl_rs.cli", "pretrain", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_pretrain_and_resume_stderr_has_no_lightning_chatter(tiny_world, tmp_path):
    base = [*TINY, f"data.path={tiny_world}", "output.dir=runs", "output.name=run"]
    first = shell_pretrain(tmp_path, *base, "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert not [c for c in CHATTER if c in first.stderr], first.stderr
    assert all(line.startswith("ssl-rs: ") for line in first.stderr.splitlines()), first.stderr

    resumed = shell_pretrain(tmp_path, *base, "trainer.max_epochs=2", "--resume", "runs/run/checkpoints/last.ckpt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continued from epoch 1; 2 in all" in resumed.stdout
    assert not [c for c in CHATTER if c in resumed.stderr], resumed.stderr
    # what is left of Lightning's: where it restored the run from
    others = [line for line in resumed.stderr.splitlines() if not line.startswith("ssl-rs: ")]
    assert others == ["Restoring states from the checkpoint path at runs/run/checkpoints/last.ckpt",
                      "Restored all states from the checkpoint at runs/run/checkpoints/last.ckpt"], resumed.stderr


def test_only_the_chatter_is_muted_and_only_in_the_block(caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with lightning_chatter_muted(), caplog.at_level(logging.INFO):
            rank_zero_info("GPU available: False, used: False")
            rank_zero_info("`Trainer.fit` stopped: `max_epochs=1` reached.")
            rank_zero_info("Restoring states from the checkpoint path at x.ckpt")
            rank_zero_warn("Checkpoint directory /x exists and is not empty.")
            rank_zero_warn("You defined a `validation_step` but have no `val_dataloader`. Skipping val loop.")
            rank_zero_warn("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.")
        rank_zero_info("`Trainer.fit` stopped: `max_epochs=2` reached.")
        rank_zero_warn("Checkpoint directory /y exists and is not empty.")
    assert [r.getMessage() for r in caplog.records] == ["Restoring states from the checkpoint path at x.ckpt",
                                                        "`Trainer.fit` stopped: `max_epochs=2` reached."]
    assert [str(w.message) for w in seen] == [
        "GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.",
        "Checkpoint directory /y exists and is not empty."]
