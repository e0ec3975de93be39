"""``make demo``: the main job end to end on the embedded synthetic geo-world.

1. synthesise the geo-world and add a spatial-block split beside its random split;
2. score a randomly initialised backbone (the floor);
3. pretrain MoCo v2 and MoCo v2 + GeoRank (tiny CNN, a few epochs, CPU-sized);
4. k-NN evaluate all of them on the random and the spatial-block split with the shared harness;
5. print one comparison table (also written to ``<out>/results.md`` and ``results.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

SCHEMES = ("random", "spatial-block")


def run_demo(out: Path, n: int = 2000, size: int = 32, epochs: int = 10, seed: int = 0,
             methods: Sequence[str] = ("mocov2", "mocov2_georank"), extra: Sequence[str] = (),
             progress: bool = True) -> List[Dict[str, object]]:
    from .config import load_config
    from .data.splits import add_split
    from .data.synth import synthesize
    from .evaluation.harness import evaluate
    from .train import pretrain
    from .trainer import lightning_chatter_muted

    out.mkdir(parents=True, exist_ok=True)
    world = out / "world.h5"
    print(f"[1/4] synthesising the geo-world ({n} samples, {size} px) -> {world}", flush=True)
    synthesize(world, n=n, size=size, seed=seed, progress=progress)
    counts = add_split(world, "spatial-block", block_km=500.0, seed=seed)
    print(f"      spatial-block split (500 km cells): {counts}", flush=True)

    rows: List[Dict[str, object]] = []
    print("[2/4] k-NN of a randomly initialised tiny_cnn (the floor)", flush=True)
    row: Dict[str, object] = {"method": "random init", "train_s": 0.0}
    for scheme in SCHEMES:
        res = evaluate("tiny_cnn", world, scheme=scheme, seed=seed, progress=False)
        row[scheme] = res["metrics"]["knn"]
    rows.append(row)

    for i, name in enumerate(methods):
        print(f"[3/4] pretraining {name} ({epochs} epochs)", flush=True)
        cfg = load_config(f"synthetic/{name}", [  # the packaged config, wherever the demo runs
            f"data.path={world}", f"output.dir={out / 'runs'}", f"trainer.max_epochs={epochs}",
            f"trainer.seed={seed}", f"trainer.progress_bar={progress}", "output.overwrite=true", *extra,
        ])
        with lightning_chatter_muted():  # stderr: the demo's progress lines only, as `ssl-rs pretrain`
            result = pretrain(cfg)
        row = {"method": name.replace("_", " + "), "train_s": result["train_seconds"],
               "run_dir": result["run_dir"]}
        for scheme in SCHEMES:
            row[scheme] = result["eval"][scheme]["metrics"]["knn"]
        rows.append(row)
    print("[4/4] results (k-NN, k=20, T=0.07; accuracy in %)", flush=True)
    table = format_table(rows)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return rows


def format_table(rows: List[Dict[str, object]]) -> str:
    from .text import markdown_table

    header = ["method", "random acc-macro", "random acc-micro", "spatial-block acc-macro",
              "spatial-block acc-micro", "pretrain s"]
    table = []
    for r in rows:
        cells = [str(r["method"])]
        for scheme in SCHEMES:
            m = r[scheme]
            cells += [f"{m['acc_macro']:.1f}", f"{m['acc_micro']:.1f}"]  # type: ignore[index]
        cells.append(f"{float(r['train_s']):.0f}")
        table.append(dict(zip(header, cells)))
    return markdown_table(table, header)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="demo_out", type=Path)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both runs")
    args = parser.parse_args(argv)
    from .errors import SslRsError

    start = time.perf_counter()
    try:
        # progress on stderr by the rule of every command: a bar on a terminal, a line now and then in a log
        run_demo(args.out, n=args.n, size=args.size, epochs=args.epochs, seed=args.seed, extra=args.overrides)
    except SslRsError as e:
        print(f"ssl-rs demo: error: {e}", file=sys.stderr)
        return 2
    print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
