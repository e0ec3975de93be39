"""Benchmark: feature extraction in float32 versus under bf16 autocast (the evaluation precision).

Runs ``ssl_rs.evaluation.features.extract_features`` on a ResNet-18 (12 bands, random weights)
over the same synthetic uint16 batches in each precision, in one process, alternating the
precisions within every repetition so that load on a shared machine hits both alike. Prints a
markdown table: per thread count and precision the best time of ``--repeats`` runs, images per
second, the speed-up over float32, and how far the features are from float32's (the largest
difference relative to the largest feature, and the lowest per-sample cosine similarity).

    python benchmarks/bench_eval_precision.py [--threads 1,2] [--batch-size 32] [--size 64]
        [--batches 1] [--repeats 3] [--device cpu|cuda] [--precisions 32-true,bf16-mixed]

On the CPU the speed-up depends on bf16 support in the cores (AVX512-BF16 or AMX); without it
bf16 is emulated and slower than float32. On a GPU (``--device cuda``, where ``16-mixed`` can be
added) the threads column is ignored.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_rs.backbones import create_backbone  # noqa: E402
from ssl_rs.evaluation.features import check_precision, extract_features  # noqa: E402


def cpu_bf16_support() -> str:
    """The CPU's native bf16 instructions, as /proc/cpuinfo names them ('none' when emulated)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    return ", ".join(found) or "none"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated torch CPU thread counts (default 1,2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--bands", type=int, default=12)
    parser.add_argument("--batches", type=int, default=1, help="batches per extraction (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="32-true,bf16-mixed")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    precisions = [check_precision(p, device, "--precisions") for p in args.precisions.split(",")]
    if precisions[0] != "32-true":
        precisions.insert(0, "32-true")  # the reference every row is compared with
    threads = [int(t) for t in args.threads.split(",")] if device.type == "cpu" else [torch.get_num_threads()]

    torch.manual_seed(0)
    model = create_backbone("resnet18", in_chans=args.bands).to(device)
    generator = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randint(500, 3000, (args.batch_size, args.bands, args.size, args.size),
                                       generator=generator, dtype=torch.int32).to(torch.uint16),
                "label": torch.zeros(args.batch_size, dtype=torch.int64)} for _ in range(args.batches)]

    def preprocess(x):
        return (x.float() - 1750.0) / 720.0

    def extract(precision):
        out, _ = extract_features(model, batches, preprocess=preprocess, device=device, progress=False,
                                  precision=precision)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    n_images = args.batch_size * args.batches
    print(f"ResNet-18, {n_images} images of {args.bands}x{args.size}x{args.size} in {args.batches} batches, "
          f"device {device}, torch {torch.__version__}, best of {args.repeats}; CPU bf16 instructions: "
          f"{cpu_bf16_support()}")
    print()
    print("| threads | precision | best (s) | images/s | speed-up vs 32-true | max abs diff / max abs | min cosine |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    previous_threads = torch.get_num_threads()
    try:
        for n_threads in threads:
            if device.type == "cpu":
                torch.set_num_threads(n_threads)
            features = {p: extract(p) for p in precisions}  # warm-up (oneDNN kernels, caches)
            times = {p: [] for p in precisions}
            for _ in range(args.repeats):
                for p in precisions:
                    start = time.perf_counter()
                    extract(p)
                    times[p].append(time.perf_counter() - start)
            exact = features["32-true"]
            for p in precisions:
                best = min(times[p])
                diff = float((features[p] - exact).abs().max() / exact.abs().max())
                cosine = float(F.cosine_similarity(features[p], exact, dim=1).min())
                print(f"| {n_threads} | {p} | {best:.3f} | {n_images / best:.1f} | {min(times['32-true']) / best:.2f}x "
                      f"| {diff:.2e} | {cosine:.5f} |")
    finally:
        torch.set_num_threads(previous_threads)


if __name__ == "__main__":
    main()
