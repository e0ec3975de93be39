"""What a reader of `ssl-rs bench report`'s plots relies on, read back from the matplotlib figures:
readable x ticks on the subset plot, series dodged apart, a value axis framed on the data, labels
that name their axis, and legends that cover no panel. Rows are written by hand (no training)."""

from __future__ import annotations

import csv
import io
import itertools
import json

import numpy as np
import pytest
import yaml

from ssl_rs.bench import load_suite, report
from ssl_rs.bench.report import (embedding_figure, key_label, plot_ablation_bars, plot_bars, plot_lines,
                                 value_label, value_names)
from ssl_rs.bench.runner import KEY_COLUMNS, TAIL_COLUMNS

SUBSETS = {"0.1": 140, "0.25": 350, "0.5": 700, "1": 1400}


def make_rows(methods=("mocov2", "mocov2_georank"), subsets=("all",), image_sizes=("32",), seeds=(0, 1),
              schemes=("random", "spatial-block"), protocols=("knn",), score=lambda i, r: 70.0 + i,
              augmentation=lambda method: "geometric", regularizer=None):
    """results.csv rows of a finished suite; ``score(i, row)`` gives the metric of the i-th row."""
    rows = []
    cells = itertools.product(methods, subsets, image_sizes, seeds)
    for cell, (method, subset, size, seed) in enumerate(cells, 1):
        reg = regularizer(method) if regularizer else ("georank" if method.endswith("_georank") else "none")
        for scheme, protocol in itertools.product(schemes, protocols):
            r = {"suite": "t", "cell_id": f"c{cell}", "cell": str(cell), "method": method, "regularizer": reg,
                 "augmentation": augmentation(method), "subset": subset, "n_train": str(SUBSETS.get(subset, 1400)),
                 "image_size": size, "seed": str(seed), "eval_data": "world", "scheme": scheme,
                 "protocol": protocol, "n_eval_train": "100", "n_eval_test": "50",
                 "train_seconds": str(10.0 * cell), "cell_seconds": str(11.0 * cell), "epochs": "10",
                 "run_dir": f"runs/{method}-s{seed}-c{cell}", "finished_at": "", "status": "finished",
                 "error": ""}
            r["acc_macro"] = f"{score(len(rows), r):.4f}"
            rows.append(r)
    return rows


def draw(fig):
    """Lay the figure out as savefig would, so extents and tick labels are final."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def panels(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]


def tick_texts(ax):
    return [t.get_text() for t in ax.get_xticklabels()]


def legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def assert_legends_cover_no_panel(fig):
    draw(fig)
    renderer = fig.canvas.get_renderer()
    for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        box = legend.get_window_extent(renderer)
        for ax in panels(fig):
            assert not box.overlaps(ax.get_window_extent(renderer)), f"legend covers panel {ax.get_title()!r}"


# ----------------------------------------------------------------------------- subset.png
def subset_rows():
    rng = np.random.default_rng(0)
    return make_rows(subsets=tuple(SUBSETS), score=lambda i, r: 65 + 10 * np.log10(int(r["n_train"]) / 100)
                     + rng.normal(0, 1))


def test_subset_plot_ticks_are_the_subset_sizes():
    fig = draw(plot_lines(subset_rows(), "subset", "acc_macro", None, "Score vs size"))
    assert len(panels(fig)) == 2
    for ax in panels(fig):
        assert ax.get_xscale() == "log"
        assert tick_texts(ax) == ["140", "350", "700", "1400"]
        assert list(ax.get_xticks()) == [140, 350, 700, 1400]
        # a log axis over less than a decade labels its minor ticks 2x10^2, 3x10^2, ... over each other
        assert len(ax.xaxis.get_minorticklocs()) == 0
        assert not [t for t in ax.xaxis.get_minorticklabels() if t.get_text()]


def test_subset_plot_dodges_the_series():
    fig = plot_lines(subset_rows(), "subset", "acc_macro", None, "Score vs size")
    for ax in panels(fig):
        xs = [np.asarray(c.lines[0].get_xdata(), float) for c in ax.containers]
        assert len(xs) == 2
        assert np.all(xs[0] != xs[1])  # error bars of the two series never share an x
        for x in xs:  # each point stays nearer its own subset size than any other
            assert np.all(np.abs(np.log10(x / [140, 350, 700, 1400])) < 0.5 * np.log10(350 / 140))
        assert sorted(legend_texts(fig)) == ["mocov2", "mocov2_georank"]  # no "mocov2_georank / georank"
    assert_legends_cover_no_panel(fig)


def test_image_size_plot_ticks_and_time_panel():
    rows = make_rows(image_sizes=("16", "32", "48"), seeds=(0,))
    fig = draw(plot_lines(rows, "image_size", "acc_macro", None, "Score vs image size", with_time=True))
    titles = [ax.get_title() for ax in panels(fig)]
    assert titles == ["k-NN, random split", "k-NN, spatial-block split", "pretraining time"]
    for ax in panels(fig):
        assert tick_texts(ax) == ["16", "32", "48"] and ax.get_xscale() == "linear"
        xs = [np.asarray(c.lines[0].get_xdata(), float) for c in ax.containers]
        assert np.all(xs[0] != xs[1]) and np.all(np.abs(xs[0] - [16, 32, 48]) < 8)
        assert not any(c.has_yerr for c in ax.containers)  # one seed: nothing to draw
    # pretraining time is one number per cell (not per eval column): 3 sizes x 2 methods
    time_ax = panels(fig)[-1]
    assert sorted(y for c in time_ax.containers for y in c.lines[0].get_ydata()) == [10, 20, 30, 40, 50, 60]
    assert "one seed" in fig.get_suptitle()


# ----------------------------------------------------------------------------- bars_<study>.png
def test_bar_value_axis_is_framed_on_the_data():
    rows = make_rows(subsets=tuple(SUBSETS), score=lambda i, r: 78 + (i % 5) * 0.8)
    fig = plot_bars(rows, ["subset", "method", "regularizer"], "acc_macro", None, "Score vs size")
    for ax in panels(fig):
        tops = [p.get_height() for p in ax.patches]
        bottom, top = ax.get_ylim()
        assert 0 < bottom < min(tops) and max(tops) < top <= 100
        assert top - bottom < 10  # the 3-point spread fills the panel instead of its top tenth


def test_bar_value_axis_keeps_zero_for_small_scores():
    fig = plot_bars(make_rows(score=lambda i, r: 1.0 + i % 3), ["method"], "acc_macro", None, "low")
    for ax in panels(fig):
        assert ax.get_ylim()[0] == 0  # never a negative score axis


def test_bar_labels_name_their_axis():
    rows = make_rows(subsets=tuple(SUBSETS))
    fig = plot_bars(rows, ["subset", "method", "regularizer"], "acc_macro", None, "Score vs size",
                    value_names(None, rows))
    for ax in panels(fig):
        assert tick_texts(ax) == ["subset=0.1\n(n=140)", "subset=0.25\n(n=350)", "subset=0.5\n(n=700)",
                                  "subset=1\n(n=1400)"]
    # the regularizer follows from the method: named once, not "mocov2_georank / georank"
    assert legend_texts(fig) == ["mocov2", "mocov2_georank"]
    assert fig.legends[0].get_title().get_text() == "method"
    assert_legends_cover_no_panel(fig)


def write_suite(tmp_path, matrix, **extra):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "data": {"synth": {"n": 100, "size": 16}}, "base_config": "synthetic/simclr",
        "matrix": matrix, **extra}))
    return load_suite(path)


def test_regularizer_labels_say_what_they_set(tmp_path):
    suite = write_suite(tmp_path, {"method": ["simclr", "byol"], "regularizer": [
        "none", {"name": "georank", "alpha": 0.5, "args": {"regularization_strength": 1.0}},
        {"label": "bottleneck a0.2", "name": "georank", "alpha": 0.2, "overrides": ["geo.embedding=bottleneck"]}]})
    rows = []
    for reg in ("none", "georank", "bottleneck a0.2"):
        rows += [dict(r, regularizer=reg, cell_id=f"{reg}-{r['cell_id']}")
                 for r in make_rows(methods=("simclr", "byol"), seeds=(0,), schemes=("random",))]
    names = value_names(suite, rows)
    assert value_label("regularizer", "georank", names) == "georank, alpha=0.5, strength=1"
    assert value_label("regularizer", "bottleneck a0.2", names) == "bottleneck a0.2: georank, alpha=0.2"
    assert value_label("regularizer", "none", names) == "no regularizer"
    fig = plot_bars(rows, ["method", "regularizer"], "acc_macro", None, "with and without", names)
    assert tick_texts(panels(fig)[0]) == ["simclr", "byol"]
    assert [s.replace("\n", " ") for s in legend_texts(fig)] == [
        "no regularizer", "georank, alpha=0.5, strength=1", "bottleneck a0.2: georank, alpha=0.2"]


@pytest.mark.parametrize("axis, value, label", [
    ("method", "mocov2", "mocov2"), ("augmentation", "geometric", "augmentation=geometric"),
    ("subset", "0.5", "subset=0.5"), ("image_size", "32", "image_size=32"), ("seed", "1", "seed=1")])
def test_every_axis_value_is_named(axis, value, label):
    assert value_label(axis, value) == label


def test_key_label_joins_named_values():
    assert key_label(["method", "subset"], ["mocov2", "0.5"]) == "mocov2, subset=0.5"
    assert key_label([], []) == "all"


def test_one_seed_draws_no_error_bars_and_says_so():
    one = plot_bars(make_rows(seeds=(0,)), ["method"], "acc_macro", None, "one")
    assert "one seed, no error bars" in one.get_suptitle()
    assert not [c for ax in panels(one) for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    several = plot_bars(make_rows(seeds=(0, 1, 2), score=lambda i, r: 70 + i % 4), ["method"], "acc_macro",
                        None, "three")
    assert "mean ± std over 3 seeds" in several.get_suptitle()
    assert all(any(type(c).__name__ == "ErrorbarContainer" for c in ax.containers) for ax in panels(several))


def test_many_columns_wrap_and_name_split_and_protocol():
    rows = make_rows(protocols=("knn", "linear"), seeds=(0,))
    rows += [dict(r, protocol="geo", acc_macro="") for r in rows if r["protocol"] == "knn"]  # geo: no accuracy
    fig = draw(plot_bars(rows, ["method", "regularizer"], "acc_macro", None, "many"))
    titles = [ax.get_title() for ax in panels(fig)]
    assert titles == ["k-NN, random split", "linear probe, random split", "k-NN, spatial-block split",
                      "linear probe, spatial-block split"]
    rows_of_panels = sorted({round(ax.get_position().y0, 2) for ax in panels(fig)})
    assert len(rows_of_panels) == 2  # 2 x 2, not a strip of four


def test_ablation_bars_colour_the_ablated_axis():
    rows = make_rows(seeds=(0,)) + [dict(r, augmentation="standard", cell_id=r["cell_id"] + "s")
                                    for r in make_rows(seeds=(0,))]
    fig = plot_ablation_bars(rows, "augmentation", "acc_macro", None, "Augmentation ablation")
    assert tick_texts(panels(fig)[0]) == ["mocov2", "mocov2_georank"]
    assert legend_texts(fig) == ["augmentation=geometric", "augmentation=standard"]
    assert_legends_cover_no_panel(fig)


def test_each_panel_names_the_metric_it_plots():
    rows = make_rows(seeds=(0,), schemes=("random",))
    for r in make_rows(seeds=(0,), schemes=("random",), protocols=("segmentation",)):
        r["miou"], r["acc_macro"], r["eval_data"] = r.pop("acc_macro"), "", "cashew"
        rows.append(r)
    fig = plot_bars(rows, ["method"], "acc_macro", None, "Methods")
    assert {ax.get_title(): ax.get_ylabel() for ax in panels(fig)} == {
        "world: k-NN, random split": "acc_macro (%)", "cashew: segmentation, random split": "miou (%)"}


# ----------------------------------------------------------------------------- embedding.png
def test_embedding_rows_name_their_run_and_classes_get_a_colour_bar():
    rng = np.random.default_rng(0)
    e = {"xy": rng.normal(size=(50, 2)), "lat": rng.uniform(-60, 60, 50), "lon": rng.uniform(-180, 180, 50),
         "class": rng.integers(0, 3, 50), "class_names": ["water", "forest", "crop"]}
    fig = draw(embedding_figure([("mocov2 (subset=0.1, seed=0)", e), ("mocov2_georank (subset=0.1, seed=0)", e)],
                                "tsne"))
    assert not fig.legends and not [ax for ax in fig.axes if ax.get_legend()]  # nothing covers the points
    scatter_axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(scatter_axes) == 6
    assert [scatter_axes[i].get_ylabel().replace("\n", " ") for i in (0, 3)] == [
        "mocov2 (subset=0.1, seed=0)", "mocov2_georank (subset=0.1, seed=0)"]
    class_bars = [ax for ax in fig.axes if [t.get_text() for t in ax.get_yticklabels()] == ["water", "forest", "crop"]]
    assert len(class_bars) == 2
    widths = {round(ax.get_position().width, 3) for ax in scatter_axes}
    assert len(widths) == 1  # the class panel is as wide as the latitude and longitude panels


def test_embedding_of_data_without_locations_says_so_instead_of_failing():
    rng = np.random.default_rng(0)
    e = {"xy": rng.normal(size=(20, 2)), "lat": None, "lon": None, "class": rng.integers(0, 2, 20),
         "class_names": ["a", "b"]}
    fig = draw(embedding_figure([("mocov2 (seed=0)", e)], "pca"))
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert notes == ["no latitude: the data has no lat/lon", "no longitude: the data has no lat/lon"]


# ----------------------------------------------------------------------------- report()
def write_output(tmp_path, rows, matrix):
    out = tmp_path / "out"
    out.mkdir()
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "t", "data": {"synth": {"n": 100, "size": 16}},
                                     "base_config": "synthetic/simclr", "matrix": matrix}))
    (out / "suite.yaml").write_text(suite.read_text())
    columns = KEY_COLUMNS + ["acc_macro"] + TAIL_COLUMNS
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / "cells.json").write_text(json.dumps([{"cell_id": c, "label": c} for c in {r["cell_id"] for r in rows}]))
    return out


def test_report_skips_an_augmentation_plot_that_only_repeats_the_methods(tmp_path):
    # DINO brings multi-crop: augmentation varies across rows but is no ablation
    rows = make_rows(methods=("simclr", "dino"), augmentation=lambda m: "multicrop" if m == "dino" else "geometric")
    out = write_output(tmp_path, rows, {"method": ["simclr", "dino"], "seed": [0, 1]})
    result = report(out, stream=io.StringIO())
    assert "augmentation.png" not in result["plots"] and "bars_main.png" in result["plots"]
    skipped = "augmentation.png skipped: each augmentation comes with its method"
    assert any(n.startswith(skipped) for n in result["notes"])


def test_report_plots_an_augmentation_ablation(tmp_path):
    rows = make_rows(seeds=(0,))
    rows += [dict(r, augmentation="standard", cell_id=r["cell_id"] + "s") for r in rows]
    out = write_output(tmp_path, rows, {"method": ["mocov2", "mocov2_georank"],
                                        "augmentation": ["geometric", "standard"]})
    result = report(out, stream=io.StringIO())
    assert "augmentation.png" in result["plots"] and (out / "augmentation.png").stat().st_size > 1000
