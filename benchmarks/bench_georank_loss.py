"""Benchmark: ssl-rs GeoRank loss (forward + backward) versus the authors' ``SoftRankLoss``.

Times one training-step call (loss and d loss / d z) on B embeddings of ``--dim`` dimensions
(float32, as in training) with locations in a Europe-sized box, at each soft-rank strength
(``--strengths``, default the paper's 0.001 and the synthetic configs' 1.0) and each number of
torch CPU threads (``--threads``, default 1 and 2). Every call gets a new batch (fresh ``lat`` /
``lon`` tensors), so ssl-rs computes its distance ranks in every call, as in training.

With ``--reference /path/to/georank`` (a checkout of https://github.com/tomburgert/georank,
importable when numpy, scipy, numba and haversine are installed; ``lightly`` is stubbed if
absent) the authors' implementation is timed in the same process, interleaved with ssl-rs, and
both are checked to give the same loss and gradient (in float64, with the margin test pinned as
in ``tests/geo/fixtures``). Where torchsort is installed, ssl-rs with ``soft_rank_backend=
"torchsort"`` is timed too. ``--device cuda`` times ssl-rs on the GPU instead (the authors'
soft rank runs on the CPU only).

How it measures: after one warm-up call each, ``--repeats`` rounds in which every implementation
is called once, in turn (interleaved, so that a busy spell of a shared machine hits all of them);
the table gives the median wall time and the median CPU time of the process (``process_time``)
per call, and the speed-ups as ratios of medians. On a machine shared with other jobs, the CPU
time of a one-thread run is the steadier measure. With two threads, every multi-threaded torch
operation waits for its second thread; OpenMP's default (active) waiting then costs about a
scheduler time slice per operation on a loaded machine, and ``OMP_WAIT_POLICY=PASSIVE`` (set
before the run; the header shows it) avoids most of that.

    python benchmarks/bench_georank_loss.py [--reference /path/to/georank] [--sizes 512]
        [--strengths 0.001,1.0] [--threads 1,2] [--dim 128] [--repeats 7] [--device cpu|cuda] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_rs.geodesy import pairwise_haversine_km  # noqa: E402
from ssl_rs.geo.georank import GeoRank, off_diagonal  # noqa: E402
from ssl_rs.geo.soft_rank import torchsort_available  # noqa: E402

TEMPERATURE, MAX_KM, MARGIN = 0.04, 3000.0, 1.0


def import_reference(repo: Path):
    """The authors' ``utils`` module, or None (with the reason printed) when it cannot load."""
    try:
        import lightly.models.modules.memory_bank  # noqa: F401
    except ImportError:
        for name in ("lightly", "lightly.models", "lightly.models.modules"):
            sys.modules.setdefault(name, types.ModuleType(name))
        stub = types.ModuleType("lightly.models.modules.memory_bank")
        stub.MemoryBankModule = torch.nn.Module  # base class of losses we do not use
        sys.modules["lightly.models.modules.memory_bank"] = stub
    sys.path.insert(0, str(repo))
    try:
        import utils  # the authors' utils.py
    except ImportError as exc:
        print(f"reference implementation not importable ({exc}); timing ssl-rs only\n")
        return None
    return utils


def make_batch(b: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((b, dim))
    lat = rng.uniform(35.0, 65.0, b)
    lon = rng.uniform(-10.0, 30.0, b)
    return z, lat, lon


def ours_step(z: np.ndarray, lat: np.ndarray, lon: np.ndarray, device: str, strength: float,
              dtype=torch.float32, backend: str = "torch"):
    module = GeoRank(temperature=TEMPERATURE, regularization_strength=strength, max_km=MAX_KM, margin=MARGIN,
                     soft_rank_backend=backend)
    z0 = torch.tensor(z, dtype=dtype, device=device)
    lat0, lon0 = torch.tensor(lat, device=device), torch.tensor(lon, device=device)

    def step():
        zt = z0.clone().requires_grad_(True)
        # a new batch every call: the distance ranks are computed again, as in training
        loss = module(zt, {"lat": lat0.clone(), "lon": lon0.clone()})
        loss.backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return loss.item(), zt.grad

    return step


def reference_step(utils, z: np.ndarray, lat: np.ndarray, lon: np.ndarray, strength: float, dtype=torch.float32,
                   margin=MARGIN):
    module = utils.SoftRankLoss(
        temperature=TEMPERATURE, reg_strength=strength, min_dist_km=0, max_dist_km=MAX_KM, soft_margin=margin,
        loss_type="mse", distance_measure="haversine",
    )
    z0 = torch.tensor(z, dtype=dtype)
    gps = torch.tensor(np.stack([lat, lon], 1))  # (lat, lon), as their training step builds it

    def step():
        zt = z0.clone().requires_grad_(True)
        loss = module(zt, None, gps)
        loss.backward()
        return loss.item(), zt.grad

    return step


def interleaved_times(fns: dict, repeats: int) -> dict:
    """Median wall and process-CPU seconds per call of each function: one warm-up call each, then
    ``repeats`` rounds calling every function once, in turn."""
    for fn in fns.values():
        fn()  # warm-up: numba compilation, thread pools, allocator, CUDA context
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def agreement(utils, z, lat, lon, strength: float) -> str:
    """Loss and gradient differences in float64; the authors' margin is nudged by 1e-9 so that
    one-rank errors are zeroed deterministically, as ssl-rs does (see the fixture README).

    The reference ranks distances rounded to float32; the rows where that changes the ranks
    are counted, as they account for the remaining differences."""
    loss_o, grad_o = ours_step(z, lat, lon, "cpu", strength, torch.float64)()
    loss_r, grad_r = reference_step(utils, z, lat, lon, strength, torch.float64, MARGIN * (1 + 1e-9))()
    scale = max(grad_r.abs().max().item(), 1e-30)
    dist = off_diagonal(pairwise_haversine_km(torch.tensor(lat), torch.tensor(lon)))
    rank64 = torch.argsort(dist, dim=1, stable=True)
    rank32 = torch.argsort(dist.float(), dim=1, stable=True)
    rows32 = int((rank64 != rank32).any(dim=1).sum())
    return (
        f"{abs(loss_o - loss_r) / abs(loss_r):.1e} / {(grad_o - grad_r).abs().max().item() / scale:.1e}"
        f" / {rows32}"
    )


def csv(text: str, kind=float) -> list:
    return [kind(s) for s in text.split(",") if s.strip()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, help="checkout of tomburgert/georank (timed on the CPU)")
    parser.add_argument("--sizes", default="512", help="batch sizes B, comma-separated (default 512)")
    parser.add_argument("--strengths", default="0.001,1.0", help="soft-rank strengths, comma-separated")
    parser.add_argument("--threads", default="1,2", help="torch CPU thread counts, comma-separated")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds after the warm-up (median)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where ssl-rs runs (the authors' soft rank is CPU-only; cuda: ssl-rs alone)")
    parser.add_argument("--no-cuda", action="store_true", help="kept for old command lines: the default is the CPU")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    on_cuda = args.device == "cuda"
    utils = import_reference(args.reference) if args.reference and not on_cuda else None
    with_torchsort = torchsort_available() and not on_cuda
    sizes, strengths, threads = csv(args.sizes, int), csv(args.strengths), csv(args.threads, int)

    rows, agreements = [], {}
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for b in sizes:
            z, lat, lon = make_batch(b, args.dim, seed=b)
            for strength in strengths:
                fns = {"ssl-rs": ours_step(z, lat, lon, args.device, strength)}
                if with_torchsort:
                    fns["torchsort"] = ours_step(z, lat, lon, "cpu", strength, backend="torchsort")
                if utils is not None:
                    fns["authors"] = reference_step(utils, z, lat, lon, strength)
                times = interleaved_times(fns, args.repeats)
                row = {"threads": n_threads, "B": b, "strength": strength,
                       **{f"{k} wall ms": round(v[0] * 1e3, 2) for k, v in times.items()},
                       **{f"{k} cpu ms": round(v[1] * 1e3, 2) for k, v in times.items()}}
                if utils is not None:
                    row["speed-up wall"] = round(times["authors"][0] / times["ssl-rs"][0], 2)
                    row["speed-up cpu"] = round(times["authors"][1] / times["ssl-rs"][1], 2)
                    if (b, strength) not in agreements:
                        agreements[b, strength] = agreement(utils, z, lat, lon, strength)
                    row["agreement"] = agreements[b, strength]
                rows.append(row)

    where = torch.cuda.get_device_name() if on_cuda else "CPU"
    print(
        f"GeoRank forward + backward, z: B x {args.dim} float32 on {where}, T={TEMPERATURE}, max_km={MAX_KM:g}, "
        f"margin={MARGIN:g}; torch {torch.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"a new batch every call; median of {args.repeats} interleaved rounds after a warm-up (wall time, and "
        f"CPU time of the process)\n"
    )
    header = ["threads", "B", "strength", "ssl-rs (ms)"]
    if with_torchsort:
        header += ["ssl-rs + torchsort (ms)"]
    if utils is not None:
        header += ["authors (ms)", "speed-up", "ssl-rs CPU (ms)", "authors CPU (ms)", "speed-up (CPU time)",
                   "float64: loss rel. diff / grad max rel. diff / float32-rank rows"]
    else:
        header += ["ssl-rs CPU (ms)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [str(row["threads"]), str(row["B"]), f"{row['strength']:g}", f"{row['ssl-rs wall ms']:.1f}"]
        if with_torchsort:
            cells += [f"{row['torchsort wall ms']:.1f}"]
        if utils is not None:
            cells += [f"{row['authors wall ms']:.1f}", f"{row['speed-up wall']:.1f}x", f"{row['ssl-rs cpu ms']:.1f}",
                      f"{row['authors cpu ms']:.1f}", f"{row['speed-up cpu']:.1f}x", row["agreement"]]
        else:
            cells += [f"{row['ssl-rs cpu ms']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    if utils is not None:
        print(
            "\nThe last column compares both in float64 (margin edge pinned); the reference ranks distances rounded to"
            "\nfloat32, and the rows where that changes a rank (ties within ~0.2 m) explain the remaining differences."
        )
    if args.json:
        args.json.write_text(json.dumps({"device": where, "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
