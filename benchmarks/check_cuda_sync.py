"""Does the GeoRank loss run on CUDA without a host synchronisation?

    python benchmarks/check_cuda_sync.py [--batch 512] [--dim 128] [--strengths 0.001,1.0] [--json PATH]

For each soft-rank strength, one forward + backward of ``GeoRank`` on a B x dim batch already on
the device (as in training: float32 embeddings, and bfloat16 ones under ``torch.autocast`` as
bf16-mixed produces them; float64 lat/lon) runs under
``torch.cuda.set_sync_debug_mode("error")``, after an untimed warm-up call (CUDA context, cuBLAS
handles). A call that synchronises raises there; it is then run again under ``"warn"`` to list
every place that synchronised. The soft rank has fixed shapes precisely so that it never waits for
the GPU: one synchronisation per step would stall the training loop on every batch.

Prints one row per check and the time of a call (best of 5, CUDA events); ``--json PATH`` also
writes them (atomically). Exit status 1 when a check synchronised, 0 otherwise, also on a machine
without CUDA, where nothing is checked (``status: skipped``).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_rs.geo.georank import GeoRank  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _where(frames) -> str:
    """The innermost frame in ssl-rs's own code (``ssl_rs/...:line``), else the innermost one."""
    frames = list(frames)
    ours = [f for f in frames if "ssl_rs" in Path(f.filename).parts]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return "?"
    try:
        name = Path(frame.filename).resolve().relative_to(REPO)
    except ValueError:
        name = Path(frame.filename).name
    return f"{name}:{frame.lineno}"


def check(strength: float, batch: int, dim: int, dtype: torch.dtype, device: torch.device) -> Dict[str, Any]:
    module = GeoRank(regularization_strength=strength)
    gen = torch.Generator(device="cpu").manual_seed(0)
    z0 = torch.randn(batch, dim, generator=gen).to(device)
    coords = {"lat": (torch.rand(batch, generator=gen, dtype=torch.float64) * 30 + 35).to(device),
              "lon": (torch.rand(batch, generator=gen, dtype=torch.float64) * 40 - 10).to(device)}
    autocast = dtype != torch.float32

    def step():
        z = z0.to(dtype).requires_grad_(True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = module(z, coords)
        loss.backward()
        return loss

    step()  # warm-up: context, cuBLAS / cuSOLVER handles and allocator pools are made here, once
    torch.cuda.synchronize(device)
    row: Dict[str, Any] = {"strength": strength, "batch": batch, "dim": dim,
                           "embeddings": "bfloat16 (autocast)" if autocast else "float32"}
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        row["synced"] = False
    except RuntimeError as e:
        row["synced"] = True
        row["error"] = str(e).strip().splitlines()[0]
        row["first_sync"] = _where(traceback.extract_tb(e.__traceback__))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    if row["synced"]:
        torch.cuda.synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        sites = []
        for w in caught:
            site = _where([traceback.FrameSummary(w.filename, w.lineno, "")])
            if "synchroniz" in str(w.message) and site not in sites:
                sites.append(site)
        row["sync_sites"] = sites
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end))
    row["ms"] = min(times)
    return row


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--strengths", default="0.001,1.0",
                        help="soft-rank regularization strengths (default: the paper's 0.001 and the synthetic "
                             "configs' 1.0)")
    parser.add_argument("--device", default="cuda", help="a CUDA device (default cuda)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    strengths = [float(s) for s in args.strengths.split(",") if s.strip()]

    result: Dict[str, Any] = {"torch": torch.__version__, "checks": []}
    if not torch.cuda.is_available():
        result.update(status="skipped", reason="no CUDA device: nothing to check")
        print(f"check_cuda_sync: {result['reason']}")
    else:
        device = torch.device(args.device)
        result["device"] = torch.cuda.get_device_name(device)
        for strength in strengths:
            for dtype in (torch.float32, torch.bfloat16):
                result["checks"].append(check(strength, args.batch, args.dim, dtype, device))
        result["status"] = "failed" if any(r["synced"] for r in result["checks"]) else "ok"
        print(f"GeoRank forward + backward under torch.cuda.set_sync_debug_mode('error'), B={args.batch}, "
              f"dim {args.dim}, on {result['device']}; torch {torch.__version__}\n")
        print("| strength | embeddings | host sync | where | ms / call |")
        print("|---|---|---|---|---:|")
        for r in result["checks"]:
            where = ", ".join(r.get("sync_sites") or [r.get("first_sync", "")]) if r["synced"] else ""
            print(f"| {r['strength']:g} | {r['embeddings']} | {'yes' if r['synced'] else 'none'} | {where} "
                  f"| {r['ms']:.2f} |")
    if args.json:
        from ssl_rs.files import write_text

        write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 1 if result["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
