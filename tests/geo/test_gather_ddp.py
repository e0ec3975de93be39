"""``geo.gather``: under DDP each device compares its rows with every device's samples, so the
devices' average loss and DDP's averaged gradient are those of one process holding the global
batch (GeoRank, GeoBasic, Tile2Vec); the config key and its validation."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

import ssl_rs.geo.tile2vec as tile2vec_module
from ssl_rs.config import PretrainConfig, validate
from ssl_rs.errors import ConfigError
from ssl_rs.registry import REGULARIZERS

WORLD, GLOBAL_BATCH = 2, 12

# name, regularizer, arguments: each with a non-zero gradient on this batch
CASES = [
    ("georank_smooth", "georank", {"regularization_strength": 0.05, "margin": 0.0}),
    ("georank_band_absolute", "georank", {"regularization_strength": 0.02, "error": "absolute", "min_km": 10.0,
                                          "max_km": 600.0, "margin": 0.5}),
    ("georank_default_near_ties", "georank", {}),
    ("geobasic", "geobasic", {}),
    ("tile2vec_l2", "tile2vec", {"l2_weight": 0.01, "margin": 2.0}),
]


def _batch():
    """Four places with three samples each, a few km apart (neighbours for Tile2Vec), places
    hundreds of km apart; near-duplicate embeddings, so GeoRank's default strength pools some."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[45.0, 5.0], [47.0, 9.0], [50.0, 2.0], [44.0, 12.0]], dtype=torch.float64)
    coords = centres.repeat_interleave(3, dim=0) + 0.03 * torch.randn(GLOBAL_BATCH, 2, generator=g, dtype=torch.float64)
    z = torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float64)
    z[1::3] = z[0::3] + 1e-7 * torch.randn(GLOBAL_BATCH // 3, 6, generator=g, dtype=torch.float64)
    # the devices' halves differ in their places' mix, so the per-device losses differ from the global one
    order = torch.tensor([0, 3, 4, 9, 10, 11, 1, 2, 5, 6, 7, 8])
    return z[order], coords[order, 0], coords[order, 1]


def _first_member(mask: torch.Tensor) -> torch.Tensor:
    # Tile2Vec draws its neighbour and distant sample at random (per device, from its own random
    # stream); the first candidate instead makes the draws of both runs the same
    return mask.to(torch.uint8).argmax(dim=1)


def _loss_and_grad(name: str, kwargs: dict, rows: slice, gather: bool):
    z, lat, lon = _batch()
    z.requires_grad_(True)
    module = REGULARIZERS.create(name, gather=gather, **kwargs)
    loss = module(z[rows], {"lat": lat[rows], "lon": lon[rows]})
    return z, loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    tile2vec_module._random_member = _first_member
    try:
        half = GLOBAL_BATCH // world
        rows = slice(rank * half, (rank + 1) * half)
        results = {}
        for case, name, kwargs in CASES:
            z, loss = _loss_and_grad(name, kwargs, rows, gather=True)
            (loss / world).backward()  # DDP averages the gradients over the processes
            grad = z.grad.clone()
            dist.all_reduce(grad)
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            results[case] = {"loss": float(mean) / world, "grad": grad.tolist()}
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_geo_losses_equal_the_global_batch_loss(tmp_path, monkeypatch):
    out = tmp_path / "gather.json"
    mp.spawn(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    ddp = json.loads(out.read_text())
    monkeypatch.setattr(tile2vec_module, "_random_member", _first_member)
    half = GLOBAL_BATCH // WORLD
    for case, name, kwargs in CASES:
        z, single = _loss_and_grad(name, kwargs, slice(None), gather=False)
        single.backward()
        assert z.grad.abs().max() > 0, case
        tol = 1e-6 if name == "tile2vec" else 1e-10  # Tile2Vec computes in float32, the others in float64
        assert ddp[case]["loss"] == pytest.approx(float(single.detach()), rel=tol), case
        torch.testing.assert_close(torch.tensor(ddp[case]["grad"], dtype=torch.float64), z.grad, rtol=tol,
                                   atol=tol * float(z.grad.abs().max()), msg=case)
        # per device (the default), each half compares only among itself: another loss
        per_device = [float(_loss_and_grad(name, kwargs, slice(i, i + half), gather=False)[1].detach())
                      for i in range(0, GLOBAL_BATCH, half)]
        assert sum(per_device) / WORLD != pytest.approx(float(single.detach()), rel=1e-3), case


def test_gather_without_distributed_is_the_plain_loss():
    # a single process (or gather off): the same loss and gradient, bit for bit
    for case, name, kwargs in CASES:
        grads, losses = [], []
        for gather in (False, True):
            torch.manual_seed(0)
            z, loss = _loss_and_grad(name, kwargs, slice(None), gather)
            loss.backward()
            losses.append(float(loss.detach()))
            grads.append(z.grad)
        assert losses[0] == losses[1], case
        assert torch.equal(grads[0], grads[1]), case


def test_drop_self_removes_each_rows_own_column():
    from ssl_rs.geo.base import drop_self

    m = torch.arange(4 * 12).reshape(4, 12)
    got = drop_self(m, offset=4)
    expected = torch.stack([torch.cat([m[i, : 4 + i], m[i, 5 + i :]]) for i in range(4)])
    assert torch.equal(got, expected)
    square = torch.arange(25).reshape(5, 5)
    assert torch.equal(drop_self(square), square[~torch.eye(5, dtype=torch.bool)].reshape(5, 4))


@pytest.mark.parametrize("name", ["georank", "geobasic", "tile2vec", "ayush"])
def test_every_regularizer_takes_gather(name):
    assert REGULARIZERS.create(name, gather=True).gather is True
    assert REGULARIZERS.create(name).gather is False


def _config(**geo):
    cfg = OmegaConf.merge(OmegaConf.structured(PretrainConfig), {"data": {"path": "x.h5"}, "geo": geo})
    return cfg


def test_geo_gather_config_key():
    assert OmegaConf.structured(PretrainConfig).geo.gather is False  # per device, as the authors train
    validate(_config(name="georank", gather=True))
    with pytest.raises(ConfigError, match="geo.args.gather"):
        validate(_config(name="georank", args={"gather": True}))
    with pytest.raises(Exception):
        _config(name="georank", gather="sometimes")


def test_geo_gather_needs_a_regularizer_that_takes_it(monkeypatch):
    from ssl_rs.geo.base import GeoRegularizer

    class NoGather(GeoRegularizer):
        def __init__(self, scale: float = 1.0):
            super().__init__()

    REGULARIZERS.load()
    monkeypatch.setitem(REGULARIZERS._entries, "no_gather_test", REGULARIZERS._entries["georank"].__class__(
        name="no_gather_test", factory=NoGather, summary="test"))
    with pytest.raises(ConfigError, match="geo.gather"):
        validate(_config(name="no_gather_test"))


def test_batch_columns_of_one_process_are_the_rows():
    from ssl_rs.geo.base import batch_columns

    z = torch.randn(3, 2)
    lat, lon = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    columns = batch_columns(z, lat, lon, gather=True)
    assert columns.z is z and columns.lat is lat and columns.offset == 0 and columns.world == 1
