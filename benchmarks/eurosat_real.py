"""Real-data benchmark: pretrain on the 270 real EuroSAT-MS tiles, score with repeated k-fold k-NN.

    python benchmarks/eurosat_real.py --out bench_out/eurosat_real

1. convert ``<repo>/../shared/data/eurosat_ms_subset`` (read in place) to ``OUT/eurosat_subset.h5``
   and add a split scheme ``all`` that puts every tile in ``train`` (pretraining uses no labels);
2. score a randomly initialised backbone (the floor), then pretrain each method (default MoCo v2
   and MoCo v2 + GeoRank with the CPU-sized settings of the packaged ``synthetic/`` configs, tiny CNN at
   64 px) once per seed;
3. extract frozen features of ALL 270 tiles from each run's ``last.ckpt`` and score them with
   weighted k-NN (k=20, T=0.07) on ``RepeatedStratifiedKFold(n_splits=5, n_repeats=3,
   random_state=0)``: 15 folds, every tile scored 3 times. Mean ± std are over the folds (and
   seeds, when several);
4. write ``OUT/results.md`` (a table with the command that produced it) and ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "eurosat_ms_subset"


def prepare(src: Path, out: Path) -> Path:
    """Convert once (atomic writer: an existing file is complete) and add the ``all`` scheme."""
    import h5py

    from ssl_rs.data.converters import convert
    from ssl_rs.data.layout import write_split

    path = out / "eurosat_subset.h5"
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        convert("eurosat-ms", src, path)
    with h5py.File(path, "r+") as f:
        if "splits" not in f or "all" not in f["splits"]:
            write_split(f, "all", np.zeros(len(f["lat"]), np.uint8))
    return path


def features_of(backbone, path: Path, bands: Sequence[str], size: int):
    from torch.utils.data import DataLoader

    from ssl_rs.augmentations import Preprocess
    from ssl_rs.data.dataset import GeoDataset
    from ssl_rs.evaluation import extract_features

    ds = GeoDataset(path, split=None, bands=list(bands))
    return extract_features(backbone, DataLoader(ds, batch_size=128), progress=False,
                            preprocess=Preprocess(size, ds.band_mean, ds.band_std))


def run(out: Path, src: Path = DEFAULT_SRC, methods: Sequence[str] = ("mocov2", "mocov2_georank"),
        epochs: int = 20, seeds: Sequence[int] = (0,), backbone: str = "tiny_cnn", size: int = 64,
        batch_size: int = 64, n_splits: int = 5, n_repeats: int = 3, extra: Sequence[str] = (),
        command: Optional[str] = None) -> List[Dict]:
    import torch

    from ssl_rs.backbones import create_backbone
    from ssl_rs.bench.kfold import repeated_kfold_knn
    from ssl_rs.trainer import quiet_lightning
    from ssl_rs.config import load_config
    from ssl_rs.checkpoint import load_encoder
    from ssl_rs.train import pretrain

    out = out.resolve()
    path = prepare(src, out)
    kfold = dict(n_splits=n_splits, n_repeats=n_repeats, random_state=0)
    rows: List[Dict] = []

    def add_row(name: str, scores: List[Dict], train_s: List[float], runs: List[str]) -> None:
        row = {"method": name, "seeds": len(scores), "train_seconds": float(np.mean(train_s)) if train_s else 0.0,
               "runs": runs, "protocol": scores[0]["protocol"]}
        for metric in ("acc_macro", "acc_micro"):
            values = [v for s in scores for v in s[metric]["values"]]
            row[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)), "n": len(values)}
        rows.append(row)
        print(f"  {name}: k-NN acc_macro {row['acc_macro']['mean']:.1f} ± {row['acc_macro']['std']:.1f} "
              f"({row['acc_macro']['n']} folds)", flush=True)

    print(f"data {path} (all tiles; folds: RepeatedStratifiedKFold({n_splits}, {n_repeats}, random_state=0))",
          flush=True)
    scores = []
    for seed in seeds:
        torch.manual_seed(seed)
        from ssl_rs.data.dataset import GeoDataset

        ds = GeoDataset(path, split=None)
        model = create_backbone(backbone, in_chans=ds.in_chans).eval()
        x, y = features_of(model, path, ds.bands, size)
        scores.append(repeated_kfold_knn(x, y, **kfold))
    add_row(f"random init {backbone}", scores, [], [])

    for name in methods:
        scores, times, runs = [], [], []
        for seed in seeds:
            print(f"pretraining {name} seed {seed} ({epochs} epochs, {backbone}, {size} px)", flush=True)
            overrides = [f"data.path={path}", "data.scheme=all", f"data.batch_size={batch_size}",
                         f"augmentation.size={size}", f"backbone.name={backbone}", f"trainer.max_epochs={epochs}",
                         f"trainer.seed={seed}", "trainer.knn_every_n_epochs=0", "trainer.progress_bar=false",
                         "eval.schemes=null", f"output.dir={out / 'runs'}", f"output.name={name}-s{seed}",
                         "output.overwrite=true"]
            if name.startswith("mocov2"):
                overrides.append("method.args.queue_size=256")  # below the 270 tiles: no tile twice in the queue
            cfg = load_config(f"synthetic/{name}", overrides + list(extra))  # a packaged config
            with quiet_lightning():
                result = pretrain(cfg, evaluate_after=False)
            trained, ckpt_cfg = load_encoder(Path(result["run_dir"]) / "checkpoints" / "last.ckpt")
            x, y = features_of(trained, path, ckpt_cfg["data_bands"], size)
            scores.append(repeated_kfold_knn(x, y, **kfold))
            times.append(result["train_seconds"])
            runs.append(str(Path(result["run_dir"]).relative_to(out)))
        add_row(name.replace("_", " + "), scores, times, runs)

    table = format_table(rows, command)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    print(table)
    return rows


def format_table(rows: List[Dict], command: Optional[str]) -> str:
    lines = ["| method | k-NN acc_macro | k-NN acc_micro | folds | pretrain s | TensorBoard |",
             "|---|---|---|---|---|---|"]
    best = max(r["acc_macro"]["mean"] for r in rows)
    for r in rows:
        macro = f"{r['acc_macro']['mean']:.1f} ± {r['acc_macro']['std']:.1f}"
        if np.isclose(r["acc_macro"]["mean"], best):
            macro = f"**{macro}**"
        links = " ".join(f"[{Path(run).name}]({run}/tb)" for run in r["runs"]) or "–"
        lines.append(f"| {r['method']} | {macro} | {r['acc_micro']['mean']:.1f} ± {r['acc_micro']['std']:.1f} | "
                     f"{r['acc_macro']['n']} | {r['train_seconds']:.0f} | {links} |")
    notes = [f"Folds: {rows[0]['protocol']}; mean ± std over folds x seeds (sample std)."]
    if command:
        notes.append(f"Reproduce: `{command}`")
    return "\n".join(lines + [""] + notes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/eurosat_real"))
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="the EuroSAT-MS subset folder (read in place)")
    parser.add_argument("--methods", default="mocov2,mocov2_georank", help="packaged synthetic/ config names")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", default="0", help="comma-separated pretraining seeds")
    parser.add_argument("--backbone", default="tiny_cnn")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-splits", type=int, default=5)
    parser.add_argument("--n-repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every pretraining run")
    args = parser.parse_args(argv)
    from ssl_rs.errors import SslRsError

    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = "python benchmarks/eurosat_real.py " + " ".join(shlex.quote(a) for a in argv_list)
    start = time.perf_counter()
    try:
        run(args.out, args.src, [m for m in args.methods.split(",") if m], args.epochs,
            [int(s) for s in args.seeds.split(",")], args.backbone, args.size, args.batch_size,
            args.n_splits, args.n_repeats, args.overrides, command.strip())
    except SslRsError as e:
        print(f"eurosat_real: error: {e}", file=sys.stderr)
        return 2
    print(f"finished in {time.perf_counter() - start:.0f} s; outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
