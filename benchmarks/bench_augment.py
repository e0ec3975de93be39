"""Throughput of the augmentation presets, in source images per second.

    python benchmarks/bench_augment.py                      # CPU, and CUDA when available
    python benchmarks/bench_augment.py --device cuda --batch 512 --iters 20

Input: a (batch, 12, 120, 120) uint16 batch already on the device (as after a pinned,
non-blocking copy), so the numbers cover the cast, normalisation and all views. One image
per second means all of its views were made. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_rs.augmentations import AUGMENTATIONS  # noqa: E402

BANDS, SIDE = 12, 120


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(preset: str, device: torch.device, batch: int, iters: int, warmup: int, size: int) -> Dict[str, float]:
    mean = [1500.0] * BANDS
    std = [800.0] * BANDS
    pipeline = AUGMENTATIONS.create(preset, size=size, mean=mean, std=std).to(device)
    images = torch.randint(0, 10_000, (batch, BANDS, SIDE, SIDE), dtype=torch.int32).to(torch.uint16).to(device)
    with torch.no_grad():
        for _ in range(warmup):
            pipeline(images)
        _sync(device)
        times: List[float] = []
        for _ in range(iters):
            start = time.perf_counter()
            pipeline(images)
            _sync(device)
            times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    return {"views": pipeline.n_views, "sizes": pipeline.sizes, "ms": median * 1e3, "ips": batch / median}


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=SIDE, help="output size of the (global) views")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CPU, plus CUDA when available")
    parser.add_argument("--presets", nargs="+", default=["geometric", "standard", "multicrop"])
    args = parser.parse_args(argv)

    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device available")
        devices = [args.device]

    print(f"input ({args.batch}, {BANDS}, {SIDE}, {SIDE}) uint16, output size {args.size}, "
          f"median of {args.iters} iterations after {args.warmup} warm-up; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print()
    print("| device | preset | views (sizes) | ms / batch | images / s |")
    print("|---|---|---|---:|---:|")
    for name in devices:
        device = torch.device(name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        for preset in args.presets:
            r = bench(preset, device, args.batch, args.iters, args.warmup, args.size)
            sizes = ", ".join(f"{n}x{s}" for s, n in _counts(r["sizes"]).items())
            print(f"| {label} | {preset} | {r['views']} ({sizes}) | {r['ms']:.1f} | {r['ips']:.0f} |", flush=True)


def _counts(sizes: List[int]) -> Dict[int, int]:
    counts: Dict[int, int] = {}
    for s in sizes:
        counts[s] = counts.get(s, 0) + 1
    return counts


if __name__ == "__main__":
    main()
