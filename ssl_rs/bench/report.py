"""``ssl-rs bench report DIR``: ``results.md`` (one table per study) and PNG plots from results.csv.

Tables show mean ± std over seeds (sample std, ddof=1; a single seed shows the mean alone)
with the best mean of each column in bold, and link every run's TensorBoard directory.
Plots whose axis the suite does not vary are skipped with a note in ``results.md``, and so is
the augmentation plot when each augmentation comes with its method (DINO's multi-crop).
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

# a segmentation column (mean IoU) stands in for the classification metric, as ap_macro does
MAIN_METRICS = ("acc_macro", "ap_macro", "miou")
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
    raise ConfigError("results.csv: no acc_macro, ap_macro or miou column")


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
        g = groups.setdefault(key, {"cols": OrderedDict(), "train": {}, "runs": OrderedDict(), "n_train": {},
                                    "rows": []})
        g["rows"].append(r)
        value = _value(r, metric)
        if value is not None:
            g["cols"].setdefault((r["eval_data"], r["scheme"], r["protocol"]), []).append(value)
        g["train"][r["cell_id"]] = float(r["train_seconds"])
        g["n_train"][r["cell_id"]] = int(r["n_train"])
        g["runs"][r["cell_id"]] = (r["seed"], r["run_dir"])
    return groups


# ----------------------------------------------------------------------------- references
def _reference_of(suite, rows: List[Dict[str, str]], col: Column, metric: str) -> Optional[Tuple[str, float, str]]:
    """The published (metric, value, source) for these rows' cells in ``col``: the column's metric
    when the suite gives it, else another of its metrics; None when the rows' cells have none or
    disagree (a group pooling cells with different references)."""
    if suite is None:
        return None
    data, scheme, protocol = col
    found = set()
    for method, regularizer in {(r["method"], r["regularizer"]) for r in rows}:
        ref = {k: v for k, v in suite.reference(method, regularizer).items()
               if k[0] == data and k[1] in (None, scheme) and k[2] == protocol}
        if not ref:
            return None
        key = next((k for k in ref if k[3] == metric), None) or sorted(ref, key=lambda k: k[3])[0]
        found.add((key[3], *ref[key]))
    return found.pop() if len(found) == 1 else None


def _paper_cell(rows: List[Dict[str, str]], col: Column, ref: Tuple[str, float, str], shown_metric: str) -> str:
    """``published (measured - published)``; the metric is named when the column shows another."""
    metric, value, _ = ref
    measured = [float(r[metric]) for r in rows
                if (r["eval_data"], r["scheme"], r["protocol"]) == col and r.get(metric)]
    name = "" if metric == shown_metric else f" {metric}"
    if not measured:
        return f"{value:.2f}{name} (not measured)"
    return f"{value:.2f}{name} ({np.mean(measured) - value:+.2f})"


def reference_notes(suite, rows: List[Dict[str, str]]) -> List[str]:
    """Where the paper columns' values come from, and the references no measured column matched."""
    if suite is None or not suite.has_references:
        return []
    notes = []
    sources = OrderedDict()
    for axis in ("method", "regularizer"):
        for v in suite.matrix.get(axis, []):
            if v.reference:
                sources.setdefault(v.source or "no source given", []).append(v.label)
    for source, labels in sources.items():
        notes.append(f"paper column ({', '.join(labels)}): {source}")
    measured = {(r["eval_data"], r["scheme"], r["protocol"], m) for r in rows for m in r if r.get(m)}
    pairs = {(r["method"], r["regularizer"]) for r in rows}
    missed = set()
    for method, regularizer in pairs:
        for (data, scheme, protocol, metric) in suite.reference(method, regularizer):
            if not any(d == data and (scheme is None or s == scheme) and p == protocol and m == metric
                       for d, s, p, m in measured):
                missed.add(f"{data}{'/' + scheme if scheme else ''} {protocol} {metric}")
    if missed:
        notes.append("references with no measured value (not run yet, or a metric the protocol does not report): "
                     + ", ".join(sorted(missed)))
    return notes


def study_table(rows: List[Dict[str, str]], study: Study, metric: str, link_prefix: str = "",
                suite=None) -> Tuple[str, list]:
    """Markdown table of one study and its key axes. With a ``suite`` that gives published values
    (``reference:``), each column that has some is followed by a "paper" column: the published
    value and, in brackets, measured mean - published; empty where a row has none."""
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
    refs = {(key, col): _reference_of(suite, g["rows"], col, column_metric(rows, col, metric))
            for key, g in groups.items() for col in cols}
    paper = {col for (_, col), ref in refs.items() if ref is not None}
    header = key_axes
    for c in cols:
        header = header + [f"{column_label(c, several)} {column_metric(rows, c, metric)}"]
        if c in paper:
            header = header + [f"{column_label(c, several)} paper"]
    header = header + ["pretrain s", "seeds", "TensorBoard"]
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
            else:
                text = _fmt(values)
                cells.append(f"**{text}**" if np.isclose(_mean_std(values)[0], best[col]) else text)
            if col in paper:
                ref = refs[(key, col)]
                cells.append(_paper_cell(g["rows"], col, ref, column_metric(rows, col, metric)) if ref else "")
        cells.append(_fmt(list(g["train"].values())).split(" ±")[0])
        cells.append(str(len(g["runs"])))
        cells.append(" ".join(f"[s{seed}]({link_prefix}{run}/tb)" for seed, run in g["runs"].values()))
        table.append(dict(zip(header, cells)))
    # unaligned: the cells hold TensorBoard links, the table is for a Markdown renderer
    return markdown_table(table, header, align=False), key_axes


# ----------------------------------------------------------------------------- plots
# Every plot function builds a matplotlib Figure outside pyplot (nothing global to close, safe in
# a long process), saves it when given a path and returns it, so tests can read its labels back.
PROTOCOL_NAMES = {"knn": "k-NN", "linear": "linear probe"}
ARG_NAMES = {"regularization_strength": "strength"}  # short argument names: legends have little room
FIGURE_WIDTH_MAX = 15.0  # inches; wider figures wrap their panels onto more rows


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    # constrained layout makes room for legends placed outside the axes and for wrapped titles
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: Optional[Path], dpi: int = 120):
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def value_names(suite, rows: Sequence[Dict[str, str]] = ()) -> Dict[Tuple[str, str], str]:
    """Plot labels that need more than results.csv's value: each regularizer of the suite's matrix
    says what it sets ("georank, alpha=0.5, strength=1.0", where the csv holds "georank" or a
    custom label) and each subset its sample count ("subset=0.1 (n=140)", as in the tables)."""
    names: Dict[Tuple[str, str], str] = {}
    for r in rows:
        if r["subset"] != "all":
            names[("subset", r["subset"])] = f"subset={r['subset']} (n={r['n_train']})"
    for v in suite.matrix.get("regularizer", []) if suite is not None else []:
        geo = dict(v.geo or ())
        if not geo.get("name"):
            continue
        params = [f"alpha={_number(geo['alpha'])}"] if "alpha" in geo else []
        params += [f"{ARG_NAMES.get(k, k)}={_number(a)}" for k, a in sorted(dict(geo.get("args") or {}).items())]
        desc = ", ".join([geo["name"]] + params)
        names[("regularizer", v.label)] = desc if v.label == geo["name"] else f"{v.label}: {desc}"
    return names


def value_label(axis: str, value: str, names: Optional[Dict[Tuple[str, str], str]] = None) -> str:
    """An axis value as a plot shows it, named so that a bare "0.5" or "32" cannot be mistaken:
    methods and regularizers are names already, every other axis reads ``axis=value``."""
    if names and (axis, value) in names:
        return names[(axis, value)]
    if axis == "method":
        return value
    if axis == "regularizer":
        return "no regularizer" if value == "none" else value
    return f"{axis}={value}"


def key_label(axes: Sequence[str], key: Sequence[str], names: Optional[Dict[Tuple[str, str], str]] = None) -> str:
    return ", ".join(value_label(a, v, names) for a, v in zip(axes, key)) or "all"


def _implied(rows: List[Dict[str, str]], axis: str, others: Sequence[str]) -> bool:
    """Whether the values of ``others`` fix the value of ``axis`` in every row."""
    seen: Dict[tuple, str] = {}
    return all(seen.setdefault(tuple(r[a] for a in others), r[axis]) == r[axis] for r in rows)


def shown_axes(rows: List[Dict[str, str]], axes: Sequence[str]) -> List[str]:
    """``axes`` less those the others imply (the regularizer of mocov2_georank, the augmentation a
    method brings): naming them again only repeats the method in every label."""
    shown = list(axes)
    for axis in reversed(list(axes)):
        others = [a for a in shown if a != axis]
        if others and _implied(rows, axis, others):
            shown.remove(axis)
    return shown


def panel_title(col: Column, several_datasets: bool) -> str:
    data, scheme, protocol = col
    text = PROTOCOL_NAMES.get(protocol, protocol) + (f", {scheme} split" if scheme else "")
    return f"{data}: {text}" if several_datasets else text


def seeds_note(rows: List[Dict[str, str]]) -> str:
    """What the error bars are: the seed count per point of the plot."""
    seeds: Dict[tuple, set] = {}
    for r in rows:
        seeds.setdefault(tuple(r[a] for a in AXES if a != "seed"), set()).add(r["seed"])
    counts = sorted({len(s) for s in seeds.values()})
    if counts == [1]:
        return "one seed, no error bars"
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"mean ± std over {n} seeds"


def _plotted_columns(rows: List[Dict[str, str]], metric: str) -> List[Column]:
    """Eval columns that have the metric (the geo protocol reports other numbers); the first column
    when none has it, so the figure still has a (empty) panel instead of failing."""
    return [c for c in columns_of(rows)
            if any(_value(r, metric) is not None for r in rows
                   if (r["eval_data"], r["scheme"], r["protocol"]) == c)] or columns_of(rows)[:1]


def _grid(n_panels: int, panel_width: float):
    """(rows, columns) of panels: side by side up to FIGURE_WIDTH_MAX, four as 2 x 2."""
    per_row = max(1, min(n_panels, int(FIGURE_WIDTH_MAX // panel_width)))
    if n_panels == 4 and per_row >= 3:
        per_row = 2
    return -(-n_panels // per_row), per_row


def _zoom(ax, lows: Sequence[float], highs: Sequence[float]) -> None:
    """Frame the value axis on the data (from 0 the bars differ by a few points and look equal),
    staying within 0-100 for scores that are there."""
    lo, hi = float(np.nanmin(lows)), float(np.nanmax(highs))
    pad = max(0.15 * (hi - lo), 1.0)
    bottom, top = lo - pad, hi + pad
    ax.set_ylim(max(0.0, bottom) if lo >= 0 else bottom, min(100.0, top) if hi <= 100 else top)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)) or text


def _title(fig, title: str, note: str) -> None:
    fig.suptitle(_wrap(title, int(fig.get_figwidth() * 9.5)) + f"\n({note})", fontsize=11)


def _legend_columns(labels: Sequence[str], width: float) -> int:
    """As many legend columns as fit the figure's width (about 0.075 in per character)."""
    longest = max(max(len(line) for line in s.split("\n")) for s in labels) if labels else 1
    return max(1, min(len(labels), int(width / (0.075 * min(longest, 28) + 0.6))))


def _legend_height(labels: Sequence[str], width: float) -> float:
    """Inches the legend below the panels takes (0 without one), so the panels keep their height."""
    if not labels:
        return 0.0
    per_row = _legend_columns(labels, width)
    lines = max(s.count("\n") + 1 for s in labels)
    return 0.35 + 0.17 * lines * -(-len(labels) // per_row)


def _legend_entries(axes) -> Tuple[list, list]:
    """Labels and handles of every panel, each once (a panel may lack a series)."""
    entries: "OrderedDict[str, Any]" = OrderedDict()
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    return list(entries), list(entries.values())


def _bar_figure(rows, x_axes: Sequence[str], hue_axes: Sequence[str], metric: str, title: str,
                names: Optional[Dict[Tuple[str, str], str]] = None):
    """One panel per eval column; a group of bars per value of ``x_axes``, one colour per value of
    ``hue_axes`` (legend outside the panels); the value axis framed on the data."""
    cols = _plotted_columns(rows, metric)
    several = len({c[0] for c in cols}) > 1
    x_keys = list(OrderedDict.fromkeys(tuple(r[a] for a in x_axes) for r in rows))
    hue_keys = list(OrderedDict.fromkeys(tuple(r[a] for a in hue_axes) for r in rows))
    x_labels = [_wrap(key_label(x_axes, k, names), 16) for k in x_keys]
    lines_per_label = max(s.count("\n") + 1 for s in x_labels)
    longest = max(len(line) for s in x_labels for line in s.split("\n"))  # names like mocov2_geobasic do not wrap
    panel_w = max(3.6, 0.8 + len(x_keys) * max(0.07 * longest + 0.25, 0.3 * len(hue_keys) + 0.35))
    n_rows, n_cols = _grid(len(cols), panel_w)
    width = panel_w * n_cols + 0.3
    legend = [_wrap(key_label(hue_axes, k, names), 28) for k in hue_keys] if len(hue_keys) > 1 else []
    fig = _figure(width, n_rows * (3.2 + 0.14 * lines_per_label) + 0.8 + _legend_height(legend, width))
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    bar_w = 0.8 / len(hue_keys)
    for ax, col in zip(axes, cols):
        sub = [r for r in rows if (r["eval_data"], r["scheme"], r["protocol"]) == col]
        lows, highs = [], []
        for j, hue in enumerate(hue_keys):
            xs, means, stds = [], [], []
            for i, xk in enumerate(x_keys):
                values = [v for r in sub if tuple(r[a] for a in x_axes) == xk and tuple(r[a] for a in hue_axes) == hue
                          for v in [_value(r, metric)] if v is not None]
                if values:  # a combination the suite did not run leaves a gap, not a zero bar
                    mean, std = _mean_std(values)
                    xs.append(i + (j - (len(hue_keys) - 1) / 2) * bar_w)
                    means.append(mean)
                    stds.append(std)
            lows += [m - s for m, s in zip(means, stds)]
            highs += [m + s for m, s in zip(means, stds)]
            ax.bar(xs, means, bar_w, color=f"C{j % 10}", label=key_label(hue_axes, hue, names) if hue_axes else None)
            _error_bars(ax, xs, means, stds)
        ax.set_xticks(np.arange(len(x_keys)), x_labels, fontsize=8)
        ax.set_title(panel_title(col, several), fontsize=10)
        ax.set_ylabel(f"{column_metric(rows, col, metric)} (%)")  # a multi-label or segmentation column says its own
        ax.grid(axis="y", alpha=0.3)
        if lows:
            _zoom(ax, lows, highs)
    for ax in axes[len(cols):]:
        ax.set_visible(False)
    if hue_axes and len(hue_keys) > 1:
        labels, handles = _legend_entries(axes)
        fig.legend(handles, [_wrap(s, 28) for s in labels], loc="outside lower center", fontsize=8,
                   ncols=_legend_columns(labels, fig.get_figwidth()),
                   title=", ".join(hue_axes))
    _title(fig, title, seeds_note(rows))
    return fig


def plot_bars(rows, key_axes, metric, path: Optional[Path], title: str,
              names: Optional[Dict[Tuple[str, str], str]] = None):
    """A study's bars: the first of its key axes along x, the others as colours."""
    shown = shown_axes(rows, key_axes) or ["method"]
    return _save(_bar_figure(rows, shown[:1], shown[1:], metric, title, names), path)


def plot_ablation_bars(rows, axis, metric, path: Optional[Path], title: str,
                       names: Optional[Dict[Tuple[str, str], str]] = None):
    """The other varied axes along x, one colour per value of ``axis``."""
    others = shown_axes(rows, [a for a in varied_axes(rows) if a != axis])
    x_axes, hue_axes = (others, [axis]) if others else ([axis], [])
    return _save(_bar_figure(rows, x_axes, hue_axes, metric, title, names), path)


def _error_bars(ax, xs, means, stds) -> None:
    """Error bars where there is a spread (one seed draws none, not a flat cap)."""
    keep = [i for i, s in enumerate(stds) if s > 0]
    if keep:
        ax.errorbar([xs[i] for i in keep], [means[i] for i in keep], yerr=[stds[i] for i in keep], fmt="none",
                    ecolor="black", capsize=3)


def _dodge(xs: Sequence[float], i: int, n: int, gap: float, log: bool) -> np.ndarray:
    """Series ``i`` of ``n`` shifted sideways by a fraction of the smallest gap between x values,
    so that error bars at the same x do not hide each other (on a log axis: in log units)."""
    shift = (i - (n - 1) / 2) * 0.2 * gap / max(1, n - 1)
    xs = np.asarray(xs, np.float64)
    return xs * 10 ** shift if log else xs + shift


def plot_lines(rows, axis, metric, path: Optional[Path], title: str, with_time: bool = False,
               names: Optional[Dict[Tuple[str, str], str]] = None):
    """Score vs a numeric axis (subset -> number of pretraining samples, or image size), one line
    per value of the other varied axes; ``with_time`` adds a panel of pretraining seconds."""
    from matplotlib.ticker import NullLocator

    others = shown_axes(rows, [a for a in varied_axes(rows) if a != axis])
    cols = _plotted_columns(rows, metric)
    several = len({c[0] for c in cols}) > 1
    panels: List[Optional[Column]] = list(cols) + ([None] if with_time else [])  # None: the time panel
    n_rows, n_cols = _grid(len(panels), 4.4)
    series = list(OrderedDict.fromkeys(tuple(r[a] for a in others) for r in rows))
    width = 4.4 * n_cols + 0.3
    legend = [_wrap(key_label(others, k, names), 28) for k in series] if len(series) > 1 else []
    fig = _figure(width, 3.4 * n_rows + 0.8 + _legend_height(legend, width))
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    log = axis == "subset"  # sizes grow by factors; image sizes by steps
    x_of = (lambda r: int(r["n_train"])) if log else (lambda r: int(r["image_size"]))
    ticks = sorted({x_of(r) for r in rows})
    steps = np.diff(np.log10(ticks) if log else np.asarray(ticks, np.float64))
    gap = float(steps.min()) if len(steps) else 1.0
    for ax, col in zip(axes, panels):
        if col is None:  # pretraining time does not depend on the eval column: one panel
            sub = list({r["cell_id"]: r for r in rows}.values())
            value_of = lambda r: float(r["train_seconds"])  # noqa: E731
        else:
            sub = [r for r in rows if (r["eval_data"], r["scheme"], r["protocol"]) == col]
            value_of = lambda r: _value(r, metric)  # noqa: E731
        for i, key in enumerate(series):
            mine = [r for r in sub if tuple(r[a] for a in others) == key and value_of(r) is not None]
            xs = sorted({x_of(r) for r in mine})
            stats = [_mean_std([value_of(r) for r in mine if x_of(r) == x]) for x in xs]
            stds = [s[1] for s in stats]
            ax.errorbar(_dodge(xs, i, len(series), gap, log), [s[0] for s in stats],
                        yerr=stds if any(stds) else None,  # one seed: no flat caps posing as error bars
                        marker="o", capsize=3, color=f"C{i % 10}", label=key_label(others, key, names))
        if log:
            ax.set_xscale("log")
        # ticks at the values run, as plain numbers: a log axis over less than a decade otherwise
        # labels its minor ticks (3x10^2, 4x10^2, ...) and they run into each other
        ax.set_xticks(ticks, [str(t) for t in ticks], rotation=45 if len(ticks) > 6 else 0)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("pretraining samples" if log else "image size (px)")
        ax.set_ylabel("pretraining time (s)" if col is None else f"{column_metric(rows, col, metric)} (%)")
        ax.set_title("pretraining time" if col is None else panel_title(col, several), fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if len(series) > 1:
        labels, handles = _legend_entries(axes)
        fig.legend(handles, [_wrap(s, 28) for s in labels], loc="outside lower center", fontsize=8,
                   ncols=_legend_columns(labels, fig.get_figwidth()),
                   title=", ".join(others))
    _title(fig, title, seeds_note(rows))
    return _save(fig, path)


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
    # pretraining data without locations (allowed without a geo regularizer): blank latitude/longitude panels
    lat, lon = (ds.lat_all[idx], ds.lon_all[idx]) if ds.has_location else (None, None)
    return {"xy": xy, "lat": lat, "lon": lon, "class": cls, "class_names": ds.class_names}


def plot_embeddings(runs: List[Tuple[str, Path]], path: Optional[Path], max_samples: int, method: str):
    """One row per run: the same 2-D embedding coloured by latitude, longitude and class."""
    embeddings = []
    for i, (label, run_dir) in enumerate(runs, 1):  # t-SNE takes a while per run: say which (stdout keeps results)
        print(f"ssl-rs: embedding {i}/{len(runs)}: {label} ({method} of up to {max_samples} samples)",
              file=sys.stderr, flush=True)
        embeddings.append((label, embed_run(run_dir, max_samples=max_samples, method=method)))
    return _save(embedding_figure(embeddings, method), path, dpi=110)


def embedding_figure(embeddings: List[Tuple[str, Dict[str, np.ndarray]]], method: str):
    """The figure of :func:`plot_embeddings` from computed embeddings (``embed_run``'s dicts)."""
    import matplotlib
    from matplotlib.colors import BoundaryNorm, ListedColormap

    fig = _figure(12.5, 3.2 * len(embeddings) + 0.7)
    axes = fig.subplots(len(embeddings), 3, squeeze=False)
    n_classes = max(max(len(e["class_names"]), int(e["class"].max()) + 1) for _, e in embeddings)
    base = matplotlib.colormaps["tab10" if n_classes <= 10 else "tab20"]
    # classes get a colour bar with their names as ticks, like latitude and longitude: the three
    # panels of a row then have the same size, and no legend covers the points
    classes = ListedColormap([base(c % base.N) for c in range(n_classes)])
    class_norm = BoundaryNorm(np.arange(n_classes + 1) - 0.5, n_classes)
    for r, (row, (label, e)) in enumerate(zip(axes, embeddings)):
        panels = (("latitude", e["lat"], "viridis", None), ("longitude", e["lon"], "twilight", None),
                  ("class", e["class"], classes, class_norm))  # twilight: longitude wraps at ±180
        for ax, (what, values, cmap, norm) in zip(row, panels):
            if values is None:
                ax.text(0.5, 0.5, f"no {what}: the data has no lat/lon", ha="center", va="center",
                        transform=ax.transAxes, fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"coloured by {what}", fontsize=10)
                continue
            sc = ax.scatter(e["xy"][:, 0], e["xy"][:, 1], c=values, cmap=cmap, norm=norm, s=6, linewidths=0)
            if norm is None:
                fig.colorbar(sc, ax=ax, label=f"{what} (°)")
            else:
                names = [e["class_names"][c] if c < len(e["class_names"]) else str(c) for c in range(n_classes)]
                bar = fig.colorbar(sc, ax=ax, ticks=np.arange(n_classes))
                bar.ax.set_yticklabels(names, fontsize=7 if n_classes <= 10 else 5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"coloured by {what}", fontsize=10)
        row[0].set_ylabel(_wrap(label, 30), fontsize=9)  # the row's run, left of its panels
    kind = "PCA" if method == "pca" else "t-SNE"
    fig.suptitle(f"Learned features ({kind}) of each method's first run, on its pretraining data")
    return fig


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
    names = value_names(suite, rows)
    for study in suite.studies:
        metric = main_metric(rows, study.metric)
        table, key_axes = study_table(rows, study, metric, suite=suite)
        md += [f"## {study.title}", "", table, ""]
        if suite.has_references and " paper |" in table.splitlines()[0] + " |":
            md += ["paper: the published value (measured mean - published value in brackets); sources in the "
                   "notes.", ""]
        name = f"bars_{study.name}.png"
        plot_bars(rows, key_axes, metric, out / name, study.title, names)
        plots.append(name)
        md += [f"![{study.title}]({name})", ""]

    metric = main_metric(rows)
    varied = varied_axes(rows)
    ablations = [
        ("augmentation", "augmentation.png", "Augmentation ablation",
         lambda p: plot_ablation_bars(rows, "augmentation", metric, p, "Augmentation ablation", names)),
        ("subset", "subset.png", "Downstream score vs pretraining set size",
         lambda p: plot_lines(rows, "subset", metric, p, "Downstream score vs pretraining set size", names=names)),
        ("image_size", "image_size.png", "Score and pretraining time vs image size",
         lambda p: plot_lines(rows, "image_size", metric, p, "Score and pretraining time vs image size",
                              with_time=True, names=names)),
    ]
    md += ["## Plots", ""]
    for axis, name, title, draw in ablations:
        others = [a for a in varied if a != axis]
        if axis == "augmentation" and axis in varied and others and _implied(rows, axis, others):
            # e.g. DINO brings multi-crop, MAE its own crops: the bars would only repeat the methods
            notes.append(f"{name} skipped: each augmentation comes with its method (or other axes), "
                         "so there is no ablation to plot.")
        elif axis in varied:
            draw(out / name)
            plots.append(name)
            md += [f"### {title}", "", f"![{title}]({name})", ""]
        else:
            notes.append(f"{name} skipped: the suite does not vary `{axis}`.")

    notes += reference_notes(suite, rows)
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

    # the plot names the chosen run in full: its other axis values are not always the obvious ones
    rest = [a for a in shown_axes(rows, varied_axes(rows)) if a not in ("method", "regularizer")] + ["seed"]

    def run_label(r: Dict[str, str]) -> str:
        return f"{label_of(r)} ({', '.join(value_label(a, r[a]) for a in rest)})"

    chosen: "OrderedDict[str, Tuple[str, Path]]" = OrderedDict()
    for r in sorted(rows, key=lambda r: int(r["seed"])):
        run = out / r["run_dir"]
        if label_of(r) not in chosen and (run / "checkpoints" / "last.ckpt").is_file():
            chosen[label_of(r)] = (run_label(r), run)
    order = list(OrderedDict.fromkeys(label_of(r) for r in rows))
    return [chosen[k] for k in order if k in chosen][:limit]
