"""Two-process DDP on CPU (gloo): negatives are gathered from every process (SimCLR; the
CSP / Cross-Scale MAE InfoNCE), so the mean of the per-process losses (and the summed gradients)
equal the single-process ones on the same global batch; and a real
`ssl-rs pretrain` with Lightning's ddp strategy completes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssl_rs.backbones import create_backbone
from ssl_rs.config import packaged_config_dir
from ssl_rs.methods.losses import image_location_info_nce
from ssl_rs.methods.simclr import SimCLR

GLOBAL_BATCH, C, S = 8, 4, 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _method() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(create_backbone("tiny_cnn", in_chans=C, width=8), proj_hidden_dim=32, proj_output_dim=16).eval()


def _views():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(GLOBAL_BATCH, C, S, S, generator=g) for _ in range(2)]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        method, views = _method(), _views()
        half = GLOBAL_BATCH // world
        local = [v[rank * half:(rank + 1) * half] for v in views]
        loss, _, _ = method.ssl_loss(local, {})
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0:
            Path(out).write_text(json.dumps({"ddp": float(mean) / world}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_loss_equals_single_process_loss(tmp_path):
    out = tmp_path / "ddp.json"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ddp_loss = json.loads(out.read_text())["ddp"]
    single = _method().ssl_loss(_views(), {})[0].detach()
    assert ddp_loss == pytest.approx(float(single), rel=1e-5)
    # without gathering, each half sees fewer negatives and the loss differs: the check can fail
    half_only = sum(float(_method().ssl_loss([v[i:i + 4] for v in _views()], {})[0].detach()) for i in (0, 4)) / 2
    assert half_only != pytest.approx(float(single), rel=1e-3)


def _pairs():
    g = torch.Generator().manual_seed(2)
    return torch.randn(GLOBAL_BATCH, 6, generator=g), torch.randn(GLOBAL_BATCH, 6, generator=g)


def _info_nce_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        image, location = (t.requires_grad_() for t in _pairs())
        half = GLOBAL_BATCH // world
        rows = slice(rank * half, (rank + 1) * half)
        loss = image_location_info_nce(image[rows], location[rows], 0.1)
        (loss / world).backward()  # DDP averages gradients over processes
        grads = torch.cat([image.grad, location.grad])
        dist.all_reduce(grads)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0:
            Path(out).write_text(json.dumps({"loss": float(mean) / world, "grad": grads.tolist()}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_csp_and_cross_scale_info_nce_gather_negatives(tmp_path):
    out = tmp_path / "nce.json"
    mp.spawn(_info_nce_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ddp = json.loads(out.read_text())
    image, location = (t.requires_grad_() for t in _pairs())
    single = image_location_info_nce(image, location, 0.1)
    single.backward()
    assert ddp["loss"] == pytest.approx(float(single.detach()), rel=1e-5)
    assert torch.allclose(torch.tensor(ddp["grad"]), torch.cat([image.grad, location.grad]), atol=1e-6)
    halves = [float(image_location_info_nce(image[i:i + 4], location[i:i + 4], 0.1).detach()) for i in (0, 4)]
    assert sum(halves) / 2 != pytest.approx(float(single.detach()), rel=1e-3)  # per-device negatives would differ


@pytest.mark.slow
@pytest.mark.parametrize("config, steps", [
    ("mocov2", (84 // 2) // 16),  # each process takes half of the 84 training samples
    ("mocov2_tile2vec", (84 // 8) // 2),  # 8 anchors per batch of 16; the batches alternate between processes
])
def test_lightning_ddp_pretrain_completes(tiny_world, tmp_path, config, steps):
    cmd = [
        sys.executable, "-m", "ssl_rs.cli", "pretrain", "-c",
        str(packaged_config_dir() / "synthetic" / f"{config}.yaml"),
        f"data.path={tiny_world}", f"output.dir={tmp_path}", "output.name=ddp", "trainer.max_epochs=1",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=16",
        "data.num_workers=0", "trainer.progress_bar=false", "backbone.args.width=8", "method.args.queue_size=64",
        "eval.schemes=null", "trainer.knn_every_n_epochs=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Starting with 2 processes" in proc.stderr + proc.stdout
    result = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert result["steps"] == steps
    assert "acc_macro" in result["eval"]["random"]["metrics"]["knn"]
