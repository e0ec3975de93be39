"""``ssl-rs bench report DIR``: ``results.md`` (one table per study) and PNG plots from results.csv.

Tables show mean ± std over seeds (sample std, ddof=1; a single seed shows the mean alone)
with the best mean of each column in bold, and link every run's TensorBoard directory.
Plots whose axis the suite does not vary are skipped with a note in ``results.md``.
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

import numpy as np

from ..errors import ConfigError
from ..text import markdown_table
from .runner import failed_cells, finished_rows, read_results
from .suite import AXES, Study, load_suite

MAIN_METRICS = ("acc_macro", "ap_macro")
Column = Tuple[str, str, str]  # (eval data, scheme, protocol)


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _fmt(values: Sequence[float]) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:.1f}"


def main_metric(rows: List[Dict[str, str]], preferred: Optional[str] = None) -> str:
    if preferred:
        if rows and preferred not in rows[0]:
            raise ConfigError(f"studies.metric: {preferred!r} is not in results.csv (columns: {', '.join(rows[0])})")
        return preferred
    for name in MAIN_METRICS:
        if any(r.get(name) for r in rows):
            return name
    raise ConfigError("results.csv: no acc_macro or ap_macro column")


def _value(r: Dict[str, str], metric: str) -> Optional[float]:
    """The row's ``metric``; a multi-label column stands in ap_macro for acc_macro (and back)."""
    if r.get(metric):
        return float(r[metric])
    if metric in MAIN_METRICS:
        other = next((r[m] for m in MAIN_METRICS if r.get(m)), None)
        return float(other) if other else None
    return None


def column_metric(rows: List[Dict[str, str]], col: Column, metric: str) -> str:
    sub = [r for r in rows if (r["eval_data"], r["scheme"], r["protocol"]) == col]
    if metric in MAIN_METRICS and sub and not sub[0].get(metric):
        return next((m for m in MAIN_METRICS if sub[0].get(m)), metric)
    return metric


def varied_axes(rows: List[Dict[str, str]]) -> List[str]:
    return [a for a in AXES if a != "seed" and len({r[a] for r in rows}) > 1]


def columns_of(rows: List[Dict[str, str]]) -> List[Column]:
    return list(OrderedDict.fromkeys((r["eval_data"], r["scheme"], r["protocol"]) for r in rows))


def column_label(col: Column, several_datasets: bool) -> str:
    data, scheme, protocol = col
    return f"{data}/{scheme} {protocol}" if several_datasets else f"{scheme} {protocol}"


def aggregate(rows: List[Dict[str, str]], key_axes: Sequence[str], metric: str) -> "OrderedDict[tuple, Dict]":
    """Group rows by the values of ``key_axes`` (in first-seen order); seeds are pooled."""
    groups: "OrderedDict[tuple, Dict[str, Any]]" = OrderedDict()
    for r in rows:
        key = tuple(r[a] for a in key_axes)
        g = groups.setdefault(key, {"cols": OrderedDict(), "train": {}, "runs": OrderedDict(), "n_train": {}})
        value = _value(r, metric)
        if value is not None:
            g["cols"].setdefault((r["eval_data"], r["scheme"], r["protocol"]), []).append(value)
        g["train"][r["cell_id"]] = float(r["train_seconds"])
        g["n_train"][r["cell_id"]] = int(r["n_train"])
        g["runs"][r["cell_id"]] = (r["seed"], r["run_dir"])
    return groups


def study_table(rows: List[Dict[str, str]], study: Study, metric: str, link_prefix: str = "") -> Tuple[str, list]:
    """Markdown table of one study and its key axes."""
    key_axes = list(study.compare) + [a for a in varied_axes(rows) if a not in study.compare]
    if not key_axes:
        key_axes = ["method"]
    groups = aggregate(rows, key_axes, metric)
    # rows grouped by the compared axes first (their values in matrix order), then the rest
    first_seen = {a: list(OrderedDict.fromkeys(r[a] for r in rows)) for a in key_axes}
    groups = OrderedDict(sorted(groups.items(), key=lambda kv: tuple(
        first_seen[a].index(v) for a, v in zip(key_axes, kv[0]))))
    cols = columns_of(rows)
    several = len({c[0] for c in cols}) > 1
    best = {}
    for col in cols:
        means = [_mean_std(g["cols"][col])[0] for g in groups.values() if col in g["cols"]]
        best[col] = max(means) if means else None
    header = key_axes + [f"{column_label(c, several)} {column_metric(rows, c, metric)}" for c in cols] + ["pretrain s", "seeds", "TensorBoard"]
    table = []
    for key, g in groups.items():
        cells = []
        for axis, value in zip(key_axes, key):
            if axis == "subset" and value != "all":
                value = f"{value} (n={int(np.mean(list(g['n_train'].values())))})"
            cells.append(value)
        for col in cols:
            values = g["cols"].get(col)
            if not values:
                cells.append("–")
                continue
            text = _fmt(values)
            cells.append(f"**{text}**" if np.isclose(_mean_std(values)[0], best[col]) else text)
        cells.append(_fmt(list(g["train"].values())).split(" ±")[0])
        cells.append(str(len(g["runs"])))
        cells.append(" ".join(f"[s{seed}]({link_prefix}{run}/tb)" for seed, run in g["runs"].values()))
        table.append(dict(zip(header, cells)))
    # unaligned: the cells hold TensorBoard links, the table is for a Markdown renderer
    return markdown_table(table, header, align=False), key_axes


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _key_label(key: Sequence[str]) -> str:
    return " / ".join(key) if key else "all"


def plot_bars(rows, key_axes, metric, path: Path, title: str) -> None:
    """Grouped bars: one group per eval dataset/scheme/protocol, one bar per row of the table."""
    plt = _plt()
    groups = aggregate(rows, key_axes, metric)
    cols = columns_of(rows)
    several = len({c[0] for c in cols}) > 1
    width = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + len(cols) * len(groups) * 0.45), 4.0))
    x = np.arange(len(cols))
    for i, (key, g) in enumerate(groups.items()):
        stats = [_mean_std(g["cols"].get(c, [np.nan])) for c in cols]
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, [s[0] for s in stats], width, yerr=[s[1] for s in stats],
               capsize=3, label=_key_label(key))
    ax.set_xticks(x, [column_label(c, several) for c in cols])
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ablation_bars(rows, axis, metric, path: Path, title: str) -> None:
    """One panel per eval column: x = the other varied axes, one bar per value of ``axis``."""
    plt = _plt()
    others = [a for a in varied_axes(rows) if a != axis] or ["method"]
    cols = columns_of(rows)
    several = len({c[0] for c in cols}) > 1
    fig, axes = plt.subplots(1, len(cols), figsize=(4.5 * len(cols), 3.8), squeeze=False)
    values = list(OrderedDict.fromkeys(r[axis] for r in rows))
    for ax, col in zip(axes[0], cols):
        sub = [r for r in rows if (r["eval_data"], r["scheme"], r["protocol"]) == col]
        keys = list(OrderedDict.fromkeys(tuple(r[a] for a in others) for r in sub))
        width = 0.8 / len(values)
        for i, v in enumerate(values):
            g = aggregate([r for r in sub if r[axis] == v], others, metric)
            stats = [_mean_std(g[k]["cols"][col]) if k in g else (np.nan, 0.0) for k in keys]
            ax.bar(np.arange(len(keys)) + (i - (len(values) - 1) / 2) * width, [s[0] for s in stats], width,
                   yerr=[s[1] for s in stats], capsize=3, label=v)
        ax.set_xticks(np.arange(len(keys)), [_key_label(k) for k in keys], rotation=20, ha="right", fontsize=8)
        ax.set_title(column_label(col, several), fontsize=9)
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(title=axis, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lines(rows, axis, metric, path: Path, title: str, with_time: bool = False) -> None:
    """Score vs a numeric axis (subset -> number of pretraining samples, or image size), one line
    per value of the other varied axes; ``with_time`` adds pretraining seconds on a twin axis."""
    plt = _plt()
    others = [a for a in varied_axes(rows) if a != axis]
    cols = columns_of(rows)
    several = len({c[0] for c in cols}) > 1
    fig, axes = plt.subplots(1, len(cols), figsize=(4.8 * len(cols), 3.8), squeeze=False)
    x_of = (lambda r: int(r["n_train"])) if axis == "subset" else (lambda r: int(r["image_size"]))
    for ax, col in zip(axes[0], cols):
        sub = [r for r in rows if (r["eval_data"], r["scheme"], r["protocol"]) == col]
        twin = ax.twinx() if with_time else None
        for key in OrderedDict.fromkeys(tuple(r[a] for a in others) for r in sub):
            series = [r for r in sub if tuple(r[a] for a in others) == key]
            xs = sorted({x_of(r) for r in series})
            stats = [_mean_std([_value(r, metric) for r in series if x_of(r) == x]) for x in xs]
            line = ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3,
                               label=_key_label(key))
            if twin is not None:
                times = [_mean_std([float(r["train_seconds"]) for r in series if x_of(r) == x])[0] for x in xs]
                twin.plot(xs, times, linestyle="--", marker="x", color=line[0].get_color(), alpha=0.7)
        if twin is not None:
            twin.set_ylabel("pretraining time (s, dashed)")
        if axis == "subset":
            ax.set_xscale("log")
        ax.set_xlabel("pretraining samples" if axis == "subset" else "image size (px)")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(column_label(col, several), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def embed_run(run_dir: Path, max_samples: int = 1000, method: str = "tsne", seed: int = 0) -> Dict[str, np.ndarray]:
    """2-D embedding of a run's learned features (last.ckpt) on its pretraining data, with the
    lat, lon and class of every embedded sample."""
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from ..augmentations import Preprocess
    from ..data.dataset import GeoDataset
    from ..evaluation import extract_features
    from ..evaluation.harness import load_checkpoint_backbone

    backbone, cfg = load_checkpoint_backbone(run_dir / "checkpoints" / "last.ckpt")
    data_path = OmegaConf.load(run_dir / "config.yaml").data.path
    full = GeoDataset(data_path, split=None, bands=cfg["data_bands"])
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(full), size=min(max_samples, len(full)), replace=False))
    ds = GeoDataset(data_path, split=None, bands=cfg["data_bands"], indices=idx)
    size = cfg["augmentation"]["size"] or ds.size[0]
    feats, labels = extract_features(backbone, DataLoader(ds, batch_size=256), progress=False,
                                     preprocess=Preprocess(size, ds.band_mean, ds.band_std))
    x = feats.numpy().astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    from sklearn.decomposition import PCA

    if method == "pca" or len(x) < 10:
        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    else:
        from sklearn.manifold import TSNE

        x = PCA(n_components=min(30, x.shape[1], len(x)), random_state=seed).fit_transform(x)
        xy = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)
    labels_np = labels.numpy()
    cls = labels_np.argmax(1) if labels_np.ndim == 2 else labels_np
    return {"xy": xy, "lat": ds.lat_all[idx], "lon": ds.lon_all[idx], "class": cls, "class_names": ds.class_names}


def plot_embeddings(runs: List[Tuple[str, Path]], path: Path, max_samples: int, method: str) -> None:
    """One row per run: the same 2-D embedding coloured by latitude, longitude and class."""
    plt = _plt()
    fig, axes = plt.subplots(len(runs), 3, figsize=(12, 3.6 * len(runs)), squeeze=False)
    for row, (label, run_dir) in zip(axes, runs):
        e = embed_run(run_dir, max_samples=max_samples, method=method)
        for ax, key, cmap in zip(row, ("lat", "lon"), ("viridis", "twilight")):
            sc = ax.scatter(e["xy"][:, 0], e["xy"][:, 1], c=e[key], cmap=cmap, s=6, linewidths=0)
            fig.colorbar(sc, ax=ax, fraction=0.046, label=f"{key} (deg)")
            ax.set_title(f"{label}: {key}", fontsize=9)
        n_classes = max(len(e["class_names"]), int(e["class"].max()) + 1)
        cmap = plt.get_cmap("tab10" if n_classes <= 10 else "tab20")
        for c in np.unique(e["class"]):
            mask = e["class"] == c
            name = e["class_names"][c] if c < len(e["class_names"]) else str(c)
            row[2].scatter(e["xy"][mask, 0], e["xy"][mask, 1], color=cmap(int(c) % cmap.N), s=6, linewidths=0,
                           label=name)
        row[2].legend(fontsize=6, markerscale=2, loc="best")
        row[2].set_title(f"{label}: class", fontsize=9)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"learned features ({method.upper() if method == 'pca' else 't-SNE'}), coloured by latitude, "
                 "longitude and class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- report
def report(out: str | Path, *, embedding: Optional[str] = None, stream: Optional[TextIO] = None) -> Dict[str, Any]:
    """Write ``results.md`` and the plots into ``out``; return their paths and the skip notes."""
    stream = stream or sys.stdout
    out = Path(out).resolve()
    rows = read_results(out / "results.csv")
    if not rows:
        raise ConfigError(f"{out}: results.csv: no results yet (run `ssl-rs bench run SUITE --out {out}` first)")
    if not (out / "suite.yaml").is_file():
        raise ConfigError(f"{out}: suite.yaml: not a bench output directory")
    suite = load_suite(out / "suite.yaml")
    cells_file = out / "cells.json"
    n_cells = None
    labels: Dict[str, str] = {}
    if cells_file.is_file():  # keep the suite's current cells; rows of cells edited away stay in the csv
        planned = json.loads(cells_file.read_text())
        current = {c["cell_id"] for c in planned}
        labels = {c["cell_id"]: c.get("label", "") for c in planned}
        n_cells = len(current)
        rows = [r for r in rows if r["cell_id"] in current]
    # Failed cells (status column) are left out of tables and plots and listed in the notes.
    failed = failed_cells(rows)
    rows = finished_rows(rows)
    if not rows:
        raise ConfigError(f"{out}: results.csv: no finished cells yet ({len(failed)} failed; see the error column, "
                          f"and run `ssl-rs bench run SUITE --out {out}` again to retry them)")
    finished = len({r["cell_id"] for r in rows})
    plots: List[str] = []
    notes: List[str] = []
    for cell_id, r in sorted(failed.items(), key=lambda kv: int(kv[1]["cell"]) if kv[1]["cell"].isdigit() else 0):
        label = labels.get(cell_id) or f"{r['method']} seed={r['seed']}"
        notes.append(f"cell {r['cell']} ({label}) failed and is left out: {r['error'] or 'no reason recorded'}")
    md = [f"# {suite.name}", ""]
    if suite.description:
        md += [suite.description, ""]
    md += [f"Cells finished: {finished}" + (f" of {n_cells}" if n_cells else "") +
           (f" ({len(failed)} failed, left out: see the notes)" if failed else "") +
           ". Mean ± std over seeds (sample std); best mean per column in **bold**. "
           "Pretrain s: mean pretraining wall time per run. TensorBoard: `tensorboard --logdir runs`.", ""]
    for study in suite.studies:
        metric = main_metric(rows, study.metric)
        table, key_axes = study_table(rows, study, metric)
        md += [f"## {study.title}", "", table, ""]
        name = f"bars_{study.name}.png"
        plot_bars(rows, key_axes, metric, out / name, study.title)
        plots.append(name)
        md += [f"![{study.title}]({name})", ""]

    metric = main_metric(rows)
    varied = varied_axes(rows)
    ablations = [
        ("augmentation", "augmentation.png", "Augmentation ablation",
         lambda p: plot_ablation_bars(rows, "augmentation", metric, p, "Augmentation ablation")),
        ("subset", "subset.png", "Downstream score vs pretraining set size",
         lambda p: plot_lines(rows, "subset", metric, p, "Downstream score vs pretraining set size")),
        ("image_size", "image_size.png", "Score and pretraining time vs image size",
         lambda p: plot_lines(rows, "image_size", metric, p, "Score vs image size", with_time=True)),
    ]
    md += ["## Plots", ""]
    for axis, name, title, draw in ablations:
        if axis in varied:
            draw(out / name)
            plots.append(name)
            md += [f"### {title}", "", f"![{title}]({name})", ""]
        else:
            notes.append(f"{name} skipped: the suite does not vary `{axis}`.")

    method = embedding or suite.report.get("embedding", "tsne")
    runs = _embedding_runs(rows, int(suite.report.get("embedding_runs", 6)), out)
    if runs:
        plot_embeddings(runs, out / "embedding.png", int(suite.report.get("embedding_samples", 1000)), method)
        plots.append("embedding.png")
        md += ["### Learned feature space by location and class", "",
               "2-D embedding of each run's features on its pretraining data (first seed), coloured by latitude, "
               "longitude and class.", "", "![embedding](embedding.png)", ""]
    else:
        notes.append("embedding.png skipped: no run directory with checkpoints/last.ckpt found.")
    if notes:
        md += ["### Notes", ""] + [f"- {n}" for n in notes] + [""]
    (out / "results.md").write_text("\n".join(md))
    print(f"wrote {out / 'results.md'} and {len(plots)} plots ({', '.join(plots)})"
          + (f"; {len(failed)} failed cells left out (listed in its notes)" if failed else ""), file=stream)
    return {"results_md": str(out / "results.md"), "plots": plots, "notes": notes, "failed": sorted(failed)}


def _embedding_runs(rows, limit: int, out: Path) -> List[Tuple[str, Path]]:
    """The first run (lowest seed, first values of the other axes) of each method+regularizer."""
    # The regularizer joins the label only where a method is run with several (else it is implied).
    with_reg = any(len({r["regularizer"] for r in rows if r["method"] == m}) > 1 for m in {r["method"] for r in rows})

    def label_of(r: Dict[str, str]) -> str:
        return r["method"] + (f"+{r['regularizer']}" if with_reg and r["regularizer"] != "none" else "")

    chosen: "OrderedDict[str, Path]" = OrderedDict()
    for r in sorted(rows, key=lambda r: int(r["seed"])):
        run = out / r["run_dir"]
        if label_of(r) not in chosen and (run / "checkpoints" / "last.ckpt").is_file():
            chosen[label_of(r)] = run
    order = list(OrderedDict.fromkeys(label_of(r) for r in rows))
    return [(k, chosen[k]) for k in order if k in chosen][:limit]
