"""The training loader's place in its epoch (ResumableLoader): restored from a state, the loader
goes on with exactly the batches the uninterrupted loader would have given next, with 0 and 2
workers, the seeded sampler and the geo_neighbors batch sampler, and every DDP rank resuming from
rank 0's state; the skipped batches' samples are never read; a state that does not fit restarts
the epoch with one warning. The end-to-end runs are in tests/test_resume_exact.py."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from ssl_rs.data.loader import ResumableLoader, RingGeoDataset, make_loader
from ssl_rs.data.samplers import GeoNeighborBatchSampler, SeededRandomSampler
from ssl_rs.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")

N = 48
EPOCH = 1  # a later epoch than the sampler starts at: its order must be the one used


class ReadLog(Dataset):
    """Positions 0..n-1 as samples; every read is appended to a file (DataLoader workers too)."""

    def __init__(self, n: int, log_path: Path):
        self.n, self.log_path = n, str(log_path)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, position: int) -> int:
        with open(self.log_path, "a") as f:
            f.write(f"{position}\n")
        return position

    def reads(self) -> list:
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as f:
            return sorted(int(line) for line in f)

    def forget(self) -> None:
        if os.path.exists(self.log_path):
            os.remove(self.log_path)


def geo_sampler(num_replicas=None, rank=None):
    rng = np.random.default_rng(0)
    centres = rng.uniform([-50, -150], [50, 150], size=(N // 4, 2))
    points = np.repeat(centres, 4, axis=0) + rng.normal(0, 0.02, size=(N, 2))  # clusters of 4 within ~3 km
    return GeoNeighborBatchSampler(points[:, 0], points[:, 1], batch_size=6, neighbor_km=15, seed=3,
                                   num_replicas=num_replicas, rank=rank)


def loader_for(kind: str, dataset, workers: int, shard=(None, None)) -> ResumableLoader:
    common = dict(num_workers=workers, persistent_workers=workers > 0, resumable=True)
    if kind == "geo_neighbors":
        return make_loader(dataset, batch_sampler=geo_sampler(*shard), **common)
    return make_loader(dataset, batch_size=5, drop_last=True, sampler=SeededRandomSampler(len(dataset), seed=3),
                       **common)


def set_epoch(loader, epoch: int) -> None:
    """What Lightning does at every epoch's start (on the sampler and the batch sampler's sampler)."""
    for sampler in {id(s): s for s in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)) if s}.values():
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def positions(batch) -> list:
    if isinstance(batch, dict):
        return batch["index"].tolist()
    return batch.tolist()


def epoch_batches(loader, epoch: int) -> list:
    set_epoch(loader, epoch)
    return [positions(b) for b in loader]


def interrupted_then_resumed(make, epoch: int, trained: int):
    """``trained`` batches of ``epoch`` from one loader, then the rest from a new loader given the
    first one's state the way a resumed Lightning run does: ``iter`` first (the fit loop sets its
    data up), then the state, then the epoch, then the first ``next``."""
    first = make()
    set_epoch(first, epoch)
    batches = iter(first)
    before = [positions(next(batches)) for _ in range(trained)]
    state = first.state_dict()
    del batches, first
    second = make()
    resumed = iter(second)
    second.load_state_dict(state)
    set_epoch(second, epoch)
    return before, [positions(b) for b in resumed], state


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", ["seeded", "geo_neighbors"])
def test_a_resumed_loader_gives_the_rest_of_the_epoch_and_reads_none_of_the_skipped(tmp_path, kind, workers):
    data = ReadLog(N, tmp_path / "reads.txt")
    expected = epoch_batches(loader_for(kind, data, 0), EPOCH)
    assert len(expected) >= 6
    data.forget()

    trained = 3
    first = loader_for(kind, data, workers)
    set_epoch(first, EPOCH)
    batches = iter(first)
    before = [positions(next(batches)) for _ in range(trained)]
    state = first.state_dict()
    # workers read ahead: batches read but not handed over are not counted
    assert state["batches"] == trained and state["epoch"] == EPOCH
    del batches, first
    data.forget()

    second = loader_for(kind, data, workers)
    resumed = iter(second)
    second.load_state_dict(state)
    set_epoch(second, EPOCH)
    after = [positions(b) for b in resumed]
    assert before + after == expected
    assert data.reads() == sorted(p for batch in after for p in batch)  # nothing of the skipped batches
    assert second.state_dict()["batches"] == len(expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_ring_loader_resumes_exactly(tiny_world, workers):
    """A plain GeoDataset with workers: batches through the shared-memory ring."""
    from ssl_rs.data.dataset import GeoDataset

    ds = GeoDataset(tiny_world, split="train")
    make = lambda: loader_for("seeded", ds, workers)  # noqa: E731
    if workers:
        assert isinstance(make().dataset, RingGeoDataset)
    expected = epoch_batches(loader_for("seeded", ds, 0), EPOCH)
    before, after, _ = interrupted_then_resumed(make, EPOCH, trained=4)
    assert before + after == expected


def test_a_later_resume_in_the_same_epoch_counts_the_batches_skipped_before(tmp_path):
    data = ReadLog(N, tmp_path / "reads.txt")
    make = lambda: loader_for("seeded", data, 0)  # noqa: E731
    expected = epoch_batches(make(), EPOCH)
    first, rest, state = interrupted_then_resumed(make, EPOCH, trained=2)
    second = make()
    second.load_state_dict(state)
    set_epoch(second, EPOCH)
    batches = iter(second)
    middle = [positions(next(batches)) for _ in range(3)]
    state = second.state_dict()
    assert state["batches"] == 5
    third = make()
    third.load_state_dict(state)
    set_epoch(third, EPOCH)
    assert first + middle + [positions(b) for b in third] == expected


def test_the_epoch_set_after_iter_is_the_one_drawn_with_workers(tmp_path):
    """On a resume Lightning calls iter() before set_epoch(); torch's worker iterator draws its first
    indices at iter(), which took the order of the sampler's previous epoch."""
    data = ReadLog(N, tmp_path / "reads.txt")
    expected = epoch_batches(loader_for("seeded", data, 0), 4)
    loader = loader_for("seeded", data, 2)
    batches = iter(loader)
    set_epoch(loader, 4)
    assert [positions(b) for b in batches] == expected


@pytest.mark.parametrize("kind", ["seeded", "geo_neighbors"])
def test_every_ddp_rank_resumes_from_rank_zeros_state(tmp_path, kind):
    """Two ranks, as Lightning sets them up: the seeded loader rebuilt around the DistributedSampler
    Lightning injects, the geo_neighbors batch sampler sharding itself. The checkpoint keeps rank 0's
    state only; each rank goes on with the rest of its own shard."""
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled, _update_dataloader

    data = ReadLog(N, tmp_path / "reads.txt")

    def make(rank: int) -> ResumableLoader:
        if kind == "geo_neighbors":
            return loader_for(kind, data, 0, shard=(2, rank))
        loader = loader_for(kind, data, 0)
        sampler = _get_distributed_sampler(loader, shuffle=_is_dataloader_shuffled(loader), overfit_batches=0,
                                           mode=RunningStage.TRAINING, num_replicas=2, rank=rank)
        rebuilt = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
        assert type(rebuilt) is ResumableLoader
        return rebuilt

    expected = [epoch_batches(make(rank), EPOCH) for rank in (0, 1)]
    assert expected[0] != expected[1] and len(expected[0]) == len(expected[1]) >= 3
    trained = 2
    firsts = [make(rank) for rank in (0, 1)]
    for loader in firsts:
        set_epoch(loader, EPOCH)
    iterators = [iter(loader) for loader in firsts]
    before = [[positions(next(it)) for _ in range(trained)] for it in iterators]
    state = firsts[0].state_dict()  # what rank 0 writes into the checkpoint
    assert state["world_size"] == 2
    for rank in (0, 1):
        resumed = make(rank)
        batches = iter(resumed)
        resumed.load_state_dict(state)
        set_epoch(resumed, EPOCH)
        assert before[rank] + [positions(b) for b in batches] == expected[rank]


@pytest.mark.parametrize("change, expected_words", [
    (dict(batch_size=4), "batch_size 5 -> 4"),
    (dict(epoch=EPOCH + 1), f"epoch {EPOCH} -> {EPOCH + 1}"),
])
def test_a_state_of_another_loader_restarts_the_epoch_with_one_warning(tmp_path, caplog, change, expected_words):
    data = ReadLog(N, tmp_path / "reads.txt")
    state = loader_for("seeded", data, 0)
    set_epoch(state, EPOCH)
    batches = iter(state)
    next(batches), next(batches)
    saved = state.state_dict()
    epoch = change.get("epoch", EPOCH)
    if "batch_size" in change:
        other = make_loader(data, batch_size=change["batch_size"], drop_last=True, resumable=True,
                            sampler=SeededRandomSampler(N, seed=3))
    else:
        other = loader_for("seeded", data, 0)
    expected = epoch_batches(other, epoch)
    other.load_state_dict(saved)
    set_epoch(other, epoch)
    with caplog.at_level(logging.WARNING, logger="ssl_rs"):
        got = [positions(b) for b in other]
    assert got == expected  # the whole epoch, from its start
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and expected_words in warnings[0] and "restarts its data order" in warnings[0]


def test_a_state_of_a_complete_epoch_starts_the_next_one_silently(tmp_path, caplog):
    data = ReadLog(N, tmp_path / "reads.txt")
    first = loader_for("seeded", data, 0)
    epoch_batches(first, EPOCH)
    saved = first.state_dict()
    assert saved["batches"] == saved["num_batches"]
    resumed = loader_for("seeded", data, 0)
    resumed.load_state_dict(saved)
    with caplog.at_level(logging.WARNING, logger="ssl_rs"):
        assert epoch_batches(resumed, EPOCH + 1) == epoch_batches(loader_for("seeded", data, 0), EPOCH + 1)
    assert not caplog.records


@pytest.mark.parametrize("state", [{"epoch": 1}, {"epoch": 1, "batches": -2}, {"batches": "3"}, [3]])
def test_a_damaged_state_is_one_line(tmp_path, state):
    loader = loader_for("seeded", ReadLog(N, tmp_path / "reads.txt"), 0)
    with pytest.raises(ConfigError, match=r"^--resume: the checkpoint's training data position .* is not "):
        loader.load_state_dict(state)


def test_the_length_is_the_whole_epoch_and_the_state_plain_types(tmp_path):
    """Lightning counts an epoch's batches by len() (the place continues its count), and the state
    goes into a checkpoint loaded with weights_only=True."""
    data = ReadLog(N, tmp_path / "reads.txt")
    loader = loader_for("seeded", data, 0)
    batches = iter(loader)
    next(batches)
    state = loader.state_dict()
    loader.load_state_dict(state)
    assert len(loader) == N // 5
    path = tmp_path / "state.pt"
    torch.save({"state": state}, path)
    assert torch.load(path, weights_only=True)["state"] == state
    assert all(type(v) in (int, type(None)) for v in state.values())
