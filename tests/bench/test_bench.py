"""Benchmark runner on a micro suite: run, resume after a kill, skip finished cells, report,
suite validation, and the repeated k-fold k-NN of the real-data benchmark."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssl_rs.bench import load_suite, read_results, repeated_kfold_knn, report, run_suite
from ssl_rs.errors import ConfigError

TINY_OVERRIDES = ["data.batch_size=32", "trainer.max_epochs=1", "trainer.knn_every_n_epochs=0",
                  "backbone.args.width=8", "method.args.queue_size=64"]


def write_suite(path: Path, **changes) -> Path:
    suite = {
        "name": "micro",
        "data": {"synth": {"n": 120, "size": 16, "seed": 1, "classes": 4}},
        "splits": [{"scheme": "spatial-block", "block_km": 500}],
        "base_config": "synthetic/mocov2",
        "overrides": TINY_OVERRIDES,
        "matrix": {"method": ["mocov2", "mocov2_georank"], "seed": [0, 1]},
        "eval": {"datasets": [{"name": "world", "data": "pretrain", "schemes": ["random", "spatial-block"]}]},
        "studies": [{"name": "methods", "compare": ["method"]}],
        "report": {"embedding": "pca", "embedding_samples": 60},
    }
    suite.update(changes)
    path.write_text(yaml.safe_dump(suite))
    return path


def cell_ids(out: Path):
    return [r["cell_id"] for r in read_results(out / "results.csv")]


def test_run_resume_skip_and_report(tmp_path):
    suite, out = write_suite(tmp_path / "micro.yaml"), tmp_path / "out"
    log = io.StringIO()
    first = run_suite(suite, out, max_cells=3, stream=log)  # a run stopped after 3 of 4 cells
    assert (first["ran"], first["left"]) == (3, 1)
    assert "cell 1/4 mocov2 seed=0 ... ETA ?" in log.getvalue() and "cell 2/4" in log.getvalue()
    assert "ETA " in log.getvalue().splitlines()[3] and "ETA ?" not in log.getvalue().splitlines()[3]
    rows = read_results(out / "results.csv")
    assert len(rows) == 3 * 2  # 3 cells x (random, spatial-block) x knn
    assert {r["scheme"] for r in rows} == {"random", "spatial-block"} and {r["protocol"] for r in rows} == {"knn"}
    assert [r["method"] for r in rows[::2]] == ["mocov2", "mocov2", "mocov2_georank"]
    assert [r["seed"] for r in rows[::2]] == ["0", "1", "0"]
    assert [r["regularizer"] for r in rows[::2]] == ["none", "none", "georank"]
    assert all(0 <= float(r["acc_macro"]) <= 100 and r["n_train"] == "84" for r in rows)
    assert all((out / r["run_dir"] / "tb").is_dir() for r in rows)

    # the 4th cell was "killed" mid-training: a partial run dir with a broken checkpoint
    cells = load_suite(suite).cells()
    planned = {c["cell"]: c for c in json.loads((out / "cells.json").read_text())}
    partial = out / planned[4]["run_dir"]
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints" / "last.ckpt").write_text("truncated")
    log = io.StringIO()
    second = run_suite(suite, out, stream=log)
    assert (second["skipped"], second["ran"], second["left"]) == (3, 1, 0)
    assert "cell 4/4 mocov2_georank seed=1 ... ETA " in log.getvalue() and "ETA ?" not in log.getvalue()
    assert (partial / "bench_result.json").is_file() and len(cells) == 4
    ids = cell_ids(out)
    assert len(ids) == 8 and len(set(ids)) == 4

    third = run_suite(suite, out, stream=io.StringIO())  # everything done: nothing runs
    assert (third["skipped"], third["ran"]) == (4, 0) and cell_ids(out) == ids

    # drop one cell's rows: only that cell runs again
    rows = read_results(out / "results.csv")
    lost = rows[2]["cell_id"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["cell_id"] != lost)
    fourth = run_suite(suite, out, stream=io.StringIO())
    assert (fourth["skipped"], fourth["ran"]) == (3, 1)
    assert sorted(cell_ids(out)) == sorted(ids)

    result = report(out, stream=io.StringIO())
    md = (out / "results.md").read_text()
    assert "## methods" in md and "**" in md and " ± " in md and "/tb)" in md
    table = [line for line in md.splitlines() if line.startswith("| mocov2")]
    assert len(table) == 2
    assert set(result["plots"]) == {"bars_methods.png", "embedding.png"}
    for name in result["plots"]:
        assert (out / name).stat().st_size > 1000
    assert any("augmentation.png skipped" in n for n in result["notes"])


@pytest.mark.slow
def test_subset_and_image_size_axes(tmp_path):
    suite = write_suite(tmp_path / "axes.yaml", name="axes",
                        matrix={"subset": [0.5, 1.0], "image_size": [12, 16]}, studies=[])
    out = tmp_path / "out"
    run_suite(suite, out, stream=io.StringIO())
    rows = read_results(out / "results.csv")
    assert sorted({(r["subset"], r["n_train"]) for r in rows}) == [("0.5", "42"), ("1", "84")]
    assert {r["image_size"] for r in rows} == {"12", "16"}
    assert {r["n_eval_train"] for r in rows if r["scheme"] == "random"} == {"84"}  # evaluation uses full splits
    result = report(out, stream=io.StringIO())
    assert {"subset.png", "image_size.png"} <= set(result["plots"])
    assert "augmentation.png" not in result["plots"]


@pytest.mark.parametrize("changes, message", [
    ({"matrix": {"seeds": [0]}}, "unknown key 'seeds'; did you mean 'seed'?"),
    ({"matrix": {"method": ["mocov2_georan"]}}, "unknown method 'mocov2_georan'; did you mean 'mocov2_georank'?"),
    ({"matrix": {"regularizer": ["georenk"]}}, "unknown regularizer 'georenk'; did you mean 'georank'?"),
    ({"matrix": {"augmentation": ["geometrik"]}}, "did you mean 'geometric'?"),
    ({"matrix": {"subset": [0]}}, "must be a fraction in (0, 1] or a sample count > 1"),
    ({"studies": [{"name": "x", "compare": ["methods"]}]}, "unknown axis 'methods'; did you mean 'method'?"),
    ({"evaluation": {}}, "unknown key 'evaluation'; did you mean 'eval'?"),
    ({"overrides": ["output.dir=x"]}, "output.dir is set by the runner"),
    ({"eval": {"protocols": ["knm"]}}, "unknown protocol 'knm'; did you mean 'knn'?"),
])
def test_suite_validation_errors_are_one_line(tmp_path, changes, message):
    suite = write_suite(tmp_path / "bad.yaml", **changes)
    with pytest.raises(ConfigError) as e:
        run_suite(suite, tmp_path / "out", dry_run=True, stream=io.StringIO())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_config_override_names_the_cell(tmp_path):
    suite = write_suite(tmp_path / "bad.yaml", overrides=["trainer.max_epoch=1"])
    with pytest.raises(ConfigError, match=r"cell 1 \(mocov2 seed=0\).*did you mean 'trainer.max_epochs'"):
        run_suite(suite, tmp_path / "out", dry_run=True, stream=io.StringIO())


def test_cli_dry_run_and_error_exit(tmp_path, capsys):
    from ssl_rs.cli import main

    suite = write_suite(tmp_path / "micro.yaml")
    assert main(["bench", "run", str(suite), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "4 cells, 0 finished, 4 to run" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    assert main(["bench", "report", str(tmp_path / "nothing")]) == 2
    assert "results.csv: no results yet" in capsys.readouterr().err


def test_shipped_suites_validate():
    suites = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "suites").glob("*.yaml"))
    names = {p.stem for p in suites}
    for base in ("geo_methods", "ssl_algorithms", "augmentations", "cardinality", "image_size"):
        assert {base, f"{base}-small"} <= names
    for path in suites:
        suite = load_suite(path)
        assert suite.name == path.stem and len(suite.cells()) >= 2


def test_repeated_kfold_knn_uses_every_sample(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, 8)) + 4.0 * np.eye(8)[y]
    res = repeated_kfold_knn(x, y, n_splits=5, n_repeats=3, random_state=0, k=5)
    assert res["n_folds"] == 15 and res["n_samples"] == 60
    assert res["test_counts"] == [3] * 60  # each sample scored once per repeat
    assert len(res["acc_macro"]["values"]) == 15
    assert res["acc_macro"]["mean"] > 90 and res["acc_macro"]["std"] >= 0
    assert "random_state=0" in res["protocol"]
    noise = repeated_kfold_knn(rng.normal(size=(60, 8)), y, k=5)
    assert noise["acc_macro"]["mean"] < res["acc_macro"]["mean"]
    with pytest.raises(ConfigError, match="rarest class"):
        repeated_kfold_knn(x[:8], np.array([0, 0, 0, 0, 0, 1, 1, 1]))


@pytest.mark.slow
def test_eurosat_real_benchmark_machinery(tmp_path, shared_data):
    """The real-data script end to end on a tiny setting (16 px, 1 epoch, 1 repeat)."""
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "eurosat_real.py"
    spec = importlib.util.spec_from_file_location("eurosat_real", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.run(tmp_path / "eur", shared_data / "eurosat_ms_subset", methods=["mocov2"], epochs=1,
                      size=16, n_repeats=1, command="python benchmarks/eurosat_real.py --tiny")
    assert [r["method"] for r in rows] == ["random init tiny_cnn", "mocov2"]
    assert all(r["acc_macro"]["n"] == 5 and 0 < r["acc_macro"]["mean"] <= 100 for r in rows)
    md = (tmp_path / "eur" / "results.md").read_text()
    assert "RepeatedStratifiedKFold(n_splits=5, n_repeats=1, random_state=0)" in md and "Reproduce:" in md


def test_method_args_are_checked_before_running(tmp_path):
    suite = write_suite(tmp_path / "bad.yaml", matrix={"method": ["simclr"]})  # simclr has no queue_size
    with pytest.raises(ConfigError, match=r"cell 1 \(simclr seed=0\): method.args: 'simclr' has no argument 'queue_size'"):
        run_suite(suite, tmp_path / "out", dry_run=True, stream=io.StringIO())


def test_results_csv_widens_its_header_for_new_metrics(tmp_path):
    from ssl_rs.bench.runner import append_results

    path = tmp_path / "results.csv"
    append_results(path, [{"cell_id": "a", "acc_macro": "1.0"}])
    append_results(path, [{"cell_id": "b", "acc_macro": "2.0"}])
    append_results(path, [{"cell_id": "c", "ap_macro": "3.0"}])  # a multi-label dataset joins
    rows = read_results(path)
    assert [(r["cell_id"], r["acc_macro"], r["ap_macro"]) for r in rows] == [
        ("a", "1.0", ""), ("b", "2.0", ""), ("c", "", "3.0")]


def test_cell_ids_of_a_suite_that_sets_no_new_eval_key_stay_as_they_were(tmp_path):
    """A cell id names a cell's results folder; ``bench run`` resumes by it. eval.* keys added later
    (precision, knn_votes, linear_recipe, finetune_schedule) are out of the id at their defaults, so a
    suite's finished cells are not run again after an upgrade. The ids below are those of ssl-rs 9fa0bea."""
    from ssl_rs.bench.runner import plan

    suite = tmp_path / "ids.yaml"
    suite.write_text("name: ids\ndata: {synth: {n: 120, size: 16, seed: 1, classes: 4}}\n"
                     "base_config: synthetic/mocov2\noverrides: [trainer.max_epochs=1, backbone.args.width=8]\n"
                     "matrix: {regularizer: [none, georank]}\neval: {protocols: [knn, finetune], finetune_epochs: 2}\n")
    assert [c.id for c in plan(load_suite(suite), tmp_path / "out")[0]] == ["7fa1347b21d1", "3c872e35519a"]
    changed = suite.read_text().replace("base_config: synthetic/mocov2", "base_config: synthetic/mocov2\n"
                                        "overrides: [trainer.max_epochs=1, backbone.args.width=8, eval.knn_votes=sum]")
    suite.write_text(changed.replace("overrides: [trainer.max_epochs=1, backbone.args.width=8]\n", "", 1))
    assert [c.id for c in plan(load_suite(suite), tmp_path / "out")[0]][0] != "7fa1347b21d1"
