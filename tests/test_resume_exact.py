"""A pretraining stopped by SIGTERM in the middle of an epoch and resumed with ``--resume`` trains
what the uninterrupted run trains: the same samples in the same batches at every step, and the
same final weights (CPU is deterministic), with the seeded sampler and the geo_neighbors batch
sampler, with 0 and 2 DataLoader workers (the shared-memory ring), interrupted once or twice in
one epoch or at an epoch's end. A checkpoint without the training data's position (an older
ssl-rs) still resumes, with one warning that the interrupted epoch restarts its data order. The
loader-level cases (DDP ranks, skipped samples never read) are in tests/data/test_loader_resume.py."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from ssl_rs.config import load_config, packaged_config_dir
from ssl_rs.errors import Interrupted
from ssl_rs.train import pretrain  # imports Lightning (and its log handlers) outside any captured output

CONFIG = packaged_config_dir() / "synthetic" / "mocov2.yaml"
EPOCHS = 2
STEPS_PER_EPOCH = 5  # 84 training samples: batches of 16 (seeded), or of 32 with 16 anchors (geo_neighbors)

Steps = List[Tuple[int, List[int]]]  # (epoch, sample indices of the batch) per training step


def config(world: Path, out: Path, sampler: str, workers: int):
    extra = ["data.batch_size=16"]
    if sampler == "geo_neighbors":
        extra = ["data.sampler=geo_neighbors", "data.batch_size=32"]
    return load_config(CONFIG, [f"data.path={world}", f"output.dir={out}", "output.name=run",
                                f"data.num_workers={workers}", "trainer.progress_bar=false",
                                "trainer.knn_every_n_epochs=0", "eval.schemes=null", "method.args.queue_size=64",
                                "backbone.args.width=8", "trainer.accelerator=cpu", f"trainer.max_epochs={EPOCHS}",
                                *extra])


class StepRecorder:
    """Patches the training step to note each step's (epoch, sample indices) and, after the steps
    numbered in ``stops`` (1-based, over the whole run), to send this process SIGTERM: the run then
    stops after that step with a resumable last.ckpt, as under a scheduler's notice."""

    def __init__(self, monkeypatch, stops=()):
        from ssl_rs.methods.base import BaseMethod

        self.seen: Steps = []
        self.stops = list(stops)
        original = BaseMethod.training_step

        def step(method, batch, batch_idx):
            self.seen.append((int(method.current_epoch), batch["index"].tolist()))
            if self.stops and int(method.global_step) + 1 == self.stops[0]:
                self.stops.pop(0)
                os.kill(os.getpid(), signal.SIGTERM)
            return original(method, batch, batch_idx)

        monkeypatch.setattr(BaseMethod, "training_step", step)


def run(world: Path, out: Path, sampler: str, workers: int, monkeypatch, stops=(), edit_checkpoint=None):
    """The run in as many sessions as the stops make (each stopped one resumed from its last.ckpt,
    after ``edit_checkpoint(path)``); the steps trained and the final weights."""
    steps = StepRecorder(monkeypatch, stops)
    sessions, resume = 0, None
    while True:
        sessions += 1
        try:
            pretrain(config(world, out, sampler, workers), resume=resume, evaluate_after=False)
            break
        except Interrupted as e:
            assert e.checkpoint is not None and sessions <= len(stops)
            resume = str(e.checkpoint)
            if edit_checkpoint is not None:
                edit_checkpoint(e.checkpoint)
    assert sessions == len(stops) + 1 and not steps.stops
    final = torch.load(out / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == EPOCHS * STEPS_PER_EPOCH
    return steps.seen, final["state_dict"]


_uninterrupted: Dict[str, Tuple[Steps, Dict[str, torch.Tensor]]] = {}


def uninterrupted(world: Path, tmp_path_factory, sampler: str):
    """The reference run (0 workers), once per sampler."""
    if sampler not in _uninterrupted:
        with pytest.MonkeyPatch.context() as monkeypatch:
            _uninterrupted[sampler] = run(world, tmp_path_factory.mktemp("uninterrupted"), sampler, 0, monkeypatch)
    return _uninterrupted[sampler]


def assert_same_weights(got: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    differ = [key for key in expected if not torch.equal(got[key], expected[key])]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run's, e.g. {differ[0]}"


@pytest.mark.parametrize("sampler, workers, stops", [
    ("seeded", 0, [7]),  # the second batch of epoch 2
    ("seeded", 2, [7]),
    ("geo_neighbors", 0, [8]),
    ("geo_neighbors", 2, [8]),
    ("seeded", 0, [6, 8]),  # twice in one epoch: the second place counts the batches skipped before it
    ("seeded", 2, [5]),  # at the end of epoch 1: the next epoch's order, though workers draw at iter()
], ids=["seeded-0-workers", "seeded-2-workers", "geo-0-workers", "geo-2-workers", "seeded-twice-in-an-epoch",
        "seeded-2-workers-at-an-epoch-end"])
def test_a_resumed_run_trains_the_batches_and_weights_of_the_uninterrupted_one(tiny_world, tmp_path, tmp_path_factory,
                                                                              monkeypatch, sampler, workers, stops):
    expected_steps, expected_weights = uninterrupted(tiny_world, tmp_path_factory, sampler)
    assert len(expected_steps) == EPOCHS * STEPS_PER_EPOCH
    steps, weights = run(tiny_world, tmp_path, sampler, workers, monkeypatch, stops)
    assert [epoch for epoch, _ in steps] == [epoch for epoch, _ in expected_steps]
    for i, (got, expected) in enumerate(zip(steps, expected_steps)):
        assert got == expected, f"step {i + 1} trained other samples than the uninterrupted run's"
    assert_same_weights(weights, expected_weights)


def without_data_position(path: Path) -> None:
    """The checkpoint as an ssl-rs before the training data's position was kept wrote it."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["loops"]["fit_loop"]["state_dict"].pop("combined_loader", None)
    torch.save(checkpoint, path)


def test_a_checkpoint_without_the_data_position_restarts_the_epochs_order_with_one_warning(
        tiny_world, tmp_path, tmp_path_factory, monkeypatch, caplog):
    expected_steps, _ = uninterrupted(tiny_world, tmp_path_factory, "seeded")
    stop = 7  # 2 of epoch 2's 5 batches trained
    with caplog.at_level(logging.WARNING):
        steps, _ = run(tiny_world, tmp_path, "seeded", 0, monkeypatch, [stop], edit_checkpoint=without_data_position)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and "data order" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0] == (f"--resume: {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'} was saved after 2 of the 5 "
                           "batches of epoch 2, without the training data's position (an older ssl-rs): the epoch's "
                           "other 3 batches restart its data order, so some of its samples are trained twice and "
                           "others not at all")
    # what the warning says: the epoch's remaining steps take its first batches again
    assert steps[:stop] == expected_steps[:stop]
    assert steps[stop:] == expected_steps[STEPS_PER_EPOCH:STEPS_PER_EPOCH + 3]
    assert not any("not resumable" in r.getMessage() for r in caplog.records)  # ours replaces Lightning's


def test_an_epoch_end_checkpoint_without_the_data_position_resumes_exactly_and_silently(
        tiny_world, tmp_path, tmp_path_factory, monkeypatch, caplog):
    expected_steps, expected_weights = uninterrupted(tiny_world, tmp_path_factory, "seeded")
    with caplog.at_level(logging.WARNING):
        steps, weights = run(tiny_world, tmp_path, "seeded", 2, monkeypatch, [STEPS_PER_EPOCH],
                             edit_checkpoint=without_data_position)
    assert not [r for r in caplog.records if "data order" in r.getMessage() or "not resumable" in r.getMessage()]
    assert steps == expected_steps
    assert_same_weights(weights, expected_weights)


# ----------------------------------------------------------------------------- DDP
RECORDING_PRETRAIN = '''
import json, os, signal, sys
from ssl_rs.methods.base import BaseMethod

record, stop = sys.argv[1], int(sys.argv[2])
original = BaseMethod.training_step


def step(method, batch, batch_idx):
    with open(f"{record}.rank{method.global_rank}", "a") as f:
        f.write(json.dumps([int(method.current_epoch), batch["index"].tolist()]) + "\\n")
    if method.global_rank == 0 and int(method.global_step) + 1 == stop:
        os.kill(os.getpid(), signal.SIGTERM)  # rank 1 learns it at the end of the step (StopOnSignal)
    return original(method, batch, batch_idx)


BaseMethod.training_step = step
from ssl_rs.cli import main  # noqa: E402

sys.exit(main(sys.argv[3:]))
'''


def ddp_session(script: Path, world: Path, out: Path, record: Path, stop: int, resume=None):
    """One `ssl-rs pretrain` session on two CPU processes (gloo), the training steps of each rank
    appended to ``record``.rank<r>; its exit code."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    args = ["pretrain", "-c", str(CONFIG), f"data.path={world}", f"output.dir={out}", "output.name=run",
            "data.batch_size=8", "data.num_workers=0", "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0",
            "eval.schemes=null", "method.args.queue_size=64", "backbone.args.width=8", "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.strategy=ddp", f"trainer.max_epochs={EPOCHS}"]
    if resume:
        args += ["--resume", str(resume)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, str(script), str(record), str(stop), *args], cwd=out, env=env,
                          capture_output=True, text=True, timeout=300, start_new_session=True)
    return done.returncode, done.stderr


def ddp_steps(record: Path):
    import json

    return [[tuple(json.loads(line)) for line in Path(f"{record}.rank{rank}").read_text().splitlines()]
            for rank in (0, 1)]


@pytest.mark.slow
def test_a_ddp_run_resumed_mid_epoch_trains_what_the_uninterrupted_one_trains(tiny_world, tmp_path):
    """Two processes: Lightning rebuilds the seeded loader around its DistributedSampler; the
    checkpoint keeps rank 0's place, and each rank goes on with the rest of its own shard."""
    script = tmp_path / "recording_pretrain.py"
    script.write_text(RECORDING_PRETRAIN)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rc, err = ddp_session(script, tiny_world, tmp_path / "a", tmp_path / "a" / "steps", stop=0)
    assert rc == 0, err[-3000:]
    last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    rc, err = ddp_session(script, tiny_world, tmp_path / "b", tmp_path / "b" / "steps", stop=STEPS_PER_EPOCH + 2)
    assert rc == 143, err[-3000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == STEPS_PER_EPOCH + 2
    rc, err = ddp_session(script, tiny_world, tmp_path / "b", tmp_path / "b" / "steps", stop=0, resume=last)
    assert rc == 0, err[-3000:]
    assert "data order" not in err
    expected = ddp_steps(tmp_path / "a" / "steps")
    got = ddp_steps(tmp_path / "b" / "steps")
    assert len(expected[0]) == len(expected[1]) == EPOCHS * STEPS_PER_EPOCH
    assert expected[0] != expected[1]  # each rank its own shard
    assert got == expected
    weights = [torch.load(run / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
               for run in (tmp_path / "a", tmp_path / "b")]
    assert weights[1]["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert_same_weights(weights[1]["state_dict"], weights[0]["state_dict"])
