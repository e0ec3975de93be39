"""Benchmark: ssl-rs weighted k-NN versus scikit-learn's brute-force cosine k-NN.

Both run the same protocol (k neighbours, cosine similarity, weights exp(sim / T)) on the
same synthetic features, EuroSAT-sized by default (27,000-sample bank, 5,400 queries,
512-d, 10 classes). Prints a markdown table with the prediction agreement, the best time of
``--repeats`` runs for each, and the speed-up.

    python benchmarks/bench_knn.py [--n-train 27000 --n-test 5400 --dim 512 --k 20]
        [--device cpu] [--repeats 5] [--chunk-sizes 128,256,512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_rs.evaluation.knn import _bf16_is_fast, knn_scores  # noqa: E402


def synthetic_features(n_train: int, n_test: int, dim: int, num_classes: int, seed: int = 0):
    """Gaussian class clusters plus noise, so neighbours carry signal as real features do."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim)).astype(np.float32)
    y_train = rng.integers(0, num_classes, n_train)
    y_test = rng.integers(0, num_classes, n_test)
    noise = 5.5  # ~93% k-NN accuracy, close to EuroSAT with a good backbone
    x_train = centres[y_train] + noise * rng.standard_normal((n_train, dim), dtype=np.float32)
    x_test = centres[y_test] + noise * rng.standard_normal((n_test, dim), dtype=np.float32)
    return x_train, y_train, x_test, y_test


def best_times(fns: dict, repeats: int):
    """Best wall time of each function over ``repeats`` back-to-back runs.

    Best, not mean: on a shared machine single runs vary a lot (scikit-learn took 1.5 to
    4.2 s on the same input here), and the minimum is the least disturbed measurement.
    """
    seconds, results = {}, {}
    for name, fn in fns.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            results[name] = fn()
            times.append(time.perf_counter() - start)
        seconds[name] = min(times)
    return seconds, results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=27000)
    parser.add_argument("--n-test", type=int, default=5400)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--chunk-sizes", default="", help="comma-separated query chunk sizes to time as well (e.g. 256,512,1024)"
    )
    args = parser.parse_args(argv)

    from sklearn.neighbors import KNeighborsClassifier

    x_train, y_train, x_test, y_test = synthetic_features(args.n_train, args.n_test, args.dim, args.classes)
    t = args.temperature

    def run_sklearn():
        clf = KNeighborsClassifier(
            n_neighbors=args.k, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1.0 - d) / t)
        )
        return clf.fit(x_train, y_train).predict(x_test)

    def run_ours(**kwargs):
        def fn():
            scores = knn_scores(
                torch.from_numpy(x_train),
                torch.from_numpy(y_train),
                torch.from_numpy(x_test),
                k=args.k,
                temperature=t,
                num_classes=args.classes,
                device=args.device,
                **kwargs,
            )
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return scores.argmax(dim=1).numpy()

        return fn

    variants = {"ssl-rs knn_scores (defaults)": run_ours()}
    if not args.device.startswith("cuda"):
        variants["ssl-rs, bf16_prefilter=False (plain float32)"] = run_ours(bf16_prefilter=False)
    for size in [int(s) for s in args.chunk_sizes.split(",") if s.strip()]:
        variants[f"ssl-rs chunk_size={size}"] = run_ours(chunk_size=size)
    for fn in variants.values():
        fn()  # warm-up: thread pools, allocator, CUDA context
    fns = {"scikit-learn brute cosine": run_sklearn, **variants}
    seconds, predictions = best_times(fns, args.repeats)

    sk_s, sk_pred = seconds["scikit-learn brute cosine"], predictions["scikit-learn brute cosine"]
    print(
        f"bank {args.n_train} x {args.dim}, {args.n_test} queries, {args.classes} classes, k={args.k}, "
        f"T={t}, device={args.device}, torch threads={torch.get_num_threads()}, "
        f"default bf16 prefilter: {'on' if _bf16_is_fast(torch.device(args.device)) else 'off'}, "
        f"best of {args.repeats}\n"
    )
    print("| implementation | time (s) | speed-up vs sklearn | agreement with sklearn | accuracy |")
    print("|---|---|---|---|---|")
    for name in fns:
        secs, pred = seconds[name], predictions[name]
        print(
            f"| {name} | {secs:.3f} | {sk_s / secs:.1f}x | {100.0 * np.mean(pred == sk_pred):.2f}% "
            f"| {100.0 * np.mean(pred == y_test):.2f}% |"
        )


if __name__ == "__main__":
    main()
