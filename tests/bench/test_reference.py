"""Published reference values in suites (``reference:`` on method and regularizer entries): one-line
validation errors naming the field, per-dataset protocols, the values recorded with each cell, and
the report's "paper" column (published value, measured - published).

Cells are not trained: ``run_cell`` is replaced by a fake that returns fixed rows (as in
test_bench_reliability.py), so the bookkeeping runs in seconds."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

import ssl_rs.bench.runner as runner
from ssl_rs.bench import load_suite, report, run_suite
from ssl_rs.cli import main
from ssl_rs.errors import ConfigError

from test_bench import TINY_OVERRIDES  # the bench tests' tiny training (same folder)

SOURCE = "Some et al. 2025, Table 1"


def write_suite(path: Path, regularizer=None, datasets=None, **changes) -> Path:
    suite = {
        "name": "refs",
        "data": {"synth": {"n": 120, "size": 16, "seed": 1, "classes": 4}},
        "splits": [{"scheme": "spatial-block", "block_km": 500}],
        "base_config": "synthetic/mocov2",
        "overrides": TINY_OVERRIDES,
        "matrix": {
            "regularizer": regularizer if regularizer is not None else [
                {"name": "none", "reference": {"world/random": {"knn": {"acc_macro": 50.0}}}, "source": SOURCE},
                {"name": "georank", "alpha": 0.5,
                 "reference": {"world/random": {"knn": {"acc_macro": 60.0, "acc_micro": 61.0}},
                               "other": {"linear": {"acc_micro": 70.0}}},
                 "source": SOURCE},
                {"name": "geobasic", "alpha": 0.5},  # no reference: an empty paper cell
            ],
            "seed": [0],
        },
        "eval": {"datasets": datasets if datasets is not None else [
            {"name": "world", "data": "pretrain", "schemes": ["random", "spatial-block"]},
            {"name": "other", "data": "pretrain", "protocols": ["linear"]},
        ], "protocols": ["knn"]},
        "studies": [{"name": "methods", "compare": ["regularizer"]}],
        "report": {"embedding": "pca", "embedding_samples": 60},
    }
    suite.update(changes)
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.fixture
def fake_cells(monkeypatch):
    """Measured values: acc_macro = 40 + 10 * cell index, acc_micro one point above."""
    seen = []

    def fake_run_cell(suite, cell, cfg, out, eval_paths):
        seen.append([(d.name, list(d.protocols)) for d in suite.eval_datasets])
        base = runner._cell_row_base(suite, cell, cfg, 84, 16)
        rows = []
        for ds in suite.eval_datasets:
            for scheme in ds.schemes:
                for protocol in ds.protocols:
                    value = 40.0 + 10 * cell.index
                    rows.append({**base, "eval_data": ds.name, "scheme": scheme or "default", "protocol": protocol,
                                 "acc_macro": f"{value:.4f}", "acc_micro": f"{value + 1:.4f}", "n_eval_train": 84,
                                 "n_eval_test": 24, "train_seconds": "1.00", "epochs": 1,
                                 "run_dir": f"runs/{cell.run_name}", "finished_at": "2026-01-01T00:00:00+00:00",
                                 "status": "finished", "error": ""})
        return rows

    monkeypatch.setattr(runner, "run_cell", fake_run_cell)
    return seen


def table_rows(md: str):
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return header, [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


def test_report_shows_the_paper_column_with_the_difference(tmp_path, fake_cells):
    suite, out = write_suite(tmp_path / "refs.yaml"), tmp_path / "out"
    run_suite(suite, out, stream=io.StringIO())
    assert fake_cells[0] == [("world", ["knn"]), ("other", ["linear"])]  # a dataset's own protocols run as given

    report(out, stream=io.StringIO())
    md = (out / "results.md").read_text()
    header, rows = table_rows(md)
    by_reg = {r["regularizer"]: r for r in rows}
    # a paper column right after each measured column that has a reference, none after the others
    assert header[:6] == ["regularizer", "world/random knn acc_macro", "world/random knn paper",
                          "world/spatial-block knn acc_macro", "other/default linear acc_macro", "other/default linear paper"]
    # cells 1-3 measured 50, 60, 70 (acc_macro) and 51, 61, 71 (acc_micro)
    assert by_reg["none"]["world/random knn paper"] == "50.00 (+0.00)"
    assert by_reg["georank"]["world/random knn paper"] == "60.00 (+0.00)"  # the column's metric is preferred
    assert by_reg["georank"]["other/default linear paper"] == "70.00 acc_micro (-9.00)"  # another metric is named
    assert by_reg["geobasic"]["world/random knn paper"] == ""  # no reference: nothing
    assert by_reg["none"]["other/default linear paper"] == ""
    assert "paper: the published value (measured mean - published value in brackets)" in md
    assert f"paper column (none, georank): {SOURCE}" in md


def test_references_are_recorded_with_the_cells(tmp_path, fake_cells):
    suite, out = write_suite(tmp_path / "refs.yaml"), tmp_path / "out"
    run_suite(suite, out, stream=io.StringIO())
    cells = {c["regularizer"]: c for c in json.loads((out / "cells.json").read_text())}
    assert cells["none"]["reference"] == [{"eval_data": "world", "scheme": "random", "protocol": "knn",
                                           "metric": "acc_macro", "value": 50.0, "source": SOURCE}]
    assert "reference" not in cells["geobasic"]
    loaded = load_suite(suite)
    assert loaded.reference("mocov2", "georank")[("other", None, "linear", "acc_micro")] == (70.0, SOURCE)


def test_a_changed_reference_keeps_the_cell_ids(tmp_path):
    from ssl_rs.bench.runner import plan

    ids = []
    for value in (50.0, 55.0):
        suite = write_suite(tmp_path / f"r{value}.yaml", regularizer=[
            {"name": "none", "reference": {"world/random": {"knn": {"acc_macro": value}}}}, "georank"])
        ids.append([c.id for c in plan(load_suite(suite), tmp_path / "out")[0]])
    assert ids[0] == ids[1]  # fixing a published value never reruns a cell


def test_the_report_notes_a_reference_that_was_never_measured(tmp_path, fake_cells):
    suite = write_suite(tmp_path / "refs.yaml", regularizer=[
        {"name": "none", "reference": {"world/random": {"knn": {"ap_macro": 50.0}}}}, "georank"])
    run_suite(suite, tmp_path / "out", stream=io.StringIO())
    result = report(tmp_path / "out", stream=io.StringIO())
    assert any("references with no measured value" in n and "world/random knn ap_macro" in n for n in result["notes"])
    _, rows = table_rows((tmp_path / "out" / "results.md").read_text())
    assert rows[0]["world/random knn paper"] == "50.00 ap_macro (not measured)"


def bad(entry):
    return [entry, "georank"]


@pytest.mark.parametrize("regularizer, field, message", [
    (bad({"name": "none", "reference": {"wrld": {"knn": {"acc_macro": 1.0}}}}),
     "matrix.regularizer[0].reference.wrld", "unknown eval dataset 'wrld'; did you mean 'world'?"),
    (bad({"name": "none", "reference": {"world": {"knn": {"acc_macro": 1.0}}}}),
     "matrix.regularizer[0].reference.world", "is evaluated on several schemes (random, spatial-block): name one"),
    (bad({"name": "none", "reference": {"world/randon": {"knn": {"acc_macro": 1.0}}}}),
     "matrix.regularizer[0].reference.world/randon", "has no scheme 'randon'; did you mean 'random'?"),
    (bad({"name": "none", "reference": {"world/random": {"knm": {"acc_macro": 1.0}}}}),
     "matrix.regularizer[0].reference.world/random.knm", "unknown protocol 'knm'; did you mean 'knn'?"),
    (bad({"name": "none", "reference": {"world/random": {"linear": {"acc_macro": 1.0}}}}),
     "matrix.regularizer[0].reference.world/random.linear", "protocol 'linear' is not run on eval dataset 'world'"),
    (bad({"name": "none", "reference": {"world/random": {"knn": {"acc_macr": 1.0}}}}),
     "matrix.regularizer[0].reference.world/random.knn.acc_macr",
     "unknown metric 'acc_macr' for protocol 'knn'; did you mean 'acc_macro'?"),
    (bad({"name": "none", "reference": {"world/random": {"knn": {"acc_macro": "82%"}}}}),
     "matrix.regularizer[0].reference.world/random.knn.acc_macro", "expected a number"),
    (bad({"name": "none", "reference": [82.42]}), "matrix.regularizer[0].reference", "expected a mapping"),
    (bad({"name": "none", "source": "Table 1"}), "matrix.regularizer[0].reference", "expected a mapping"),
    (bad({"name": "none", "refrence": {}}), "matrix.regularizer[0]", "unknown key 'refrence'; did you mean 'reference'?"),
])
def test_reference_errors_are_one_line_naming_the_field(tmp_path, regularizer, field, message):
    suite = write_suite(tmp_path / "bad.yaml", regularizer=regularizer)
    with pytest.raises(ConfigError) as e:
        load_suite(suite)
    text = str(e.value)
    assert text.startswith(f"{suite}: {field}: ") and message in text and "\n" not in text


def test_a_reference_given_twice_is_an_error(tmp_path):
    suite = write_suite(tmp_path / "bad.yaml", regularizer=[
        {"name": "georank", "reference": {"world/random": {"knn": {"acc_macro": 1.0}}}}],
        matrix=None)
    raw = yaml.safe_load(suite.read_text())
    raw["matrix"] = {"method": [{"name": "mocov2_georank", "reference": {"world/random": {"knn": {"acc_macro": 2.0}}}}],
                     "regularizer": [{"name": "georank", "reference": {"world/random": {"knn": {"acc_macro": 1.0}}}}]}
    suite.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"matrix: the reference world/random.knn.acc_macro is given both by "
                                          r"method 'mocov2_georank' and by regularizer 'georank'"):
        load_suite(suite)


@pytest.mark.parametrize("datasets, message", [
    ([{"name": "world", "data": "pretrain", "protocols": ["lineer"]}],
     "eval.datasets[0].protocols: unknown protocol 'lineer'; did you mean 'linear'?"),
    ([{"name": "world", "data": "pretrain", "protocols": []}], "eval.datasets[0].protocols: expected a non-empty list"),
    ([{"name": "world", "data": "pretrain", "protocols": ["knn", "knn"]}], "a protocol is listed twice"),
    ([{"name": "a/b", "data": "pretrain"}], "name 'a/b' has a '/'"),
])
def test_per_dataset_protocol_errors(tmp_path, datasets, message):
    suite = write_suite(tmp_path / "bad.yaml", regularizer=["none"], datasets=datasets)
    with pytest.raises(ConfigError) as e:
        load_suite(suite)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_protocols_come_from_the_harness(tmp_path, monkeypatch):
    """A protocol the harness registers is accepted without a change to the bench."""
    import ssl_rs.evaluation.harness as harness

    suite = write_suite(tmp_path / "new.yaml", regularizer=["none"],
                        datasets=[{"name": "world", "data": "pretrain", "protocols": ["brand_new"]}])
    with pytest.raises(ConfigError, match="unknown protocol 'brand_new'"):
        load_suite(suite)
    monkeypatch.setattr(harness, "PROTOCOLS", tuple(harness.PROTOCOLS) + ("brand_new",))
    assert load_suite(suite).eval_datasets[0].protocols == ["brand_new"]


def test_cli_exits_2_naming_the_file_and_field(tmp_path, capsys):
    suite = write_suite(tmp_path / "bad.yaml", regularizer=bad(
        {"name": "none", "reference": {"world/random": {"knn": {"top1": 82.42}}}}))
    assert main(["bench", "run", str(suite), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{suite}: matrix.regularizer[0].reference.world/random.knn.top1: unknown metric 'top1'" in err


def test_eval_options_reach_the_harness_and_only_given_ones_change_the_ids(tmp_path, monkeypatch):
    from ssl_rs.bench.runner import plan

    plain = write_suite(tmp_path / "plain.yaml", regularizer=["none"])
    with_options = write_suite(tmp_path / "opts.yaml", regularizer=["none"],
                               eval={"datasets": [{"name": "world", "data": "pretrain", "schemes": ["random"]}],
                                     "finetune_epochs": 3, "segmentation_epochs": 2})
    assert load_suite(with_options).eval_options == {"finetune_epochs": 3, "segmentation_epochs": 2}
    assert load_suite(plain).eval_options == {}
    bad_epochs = write_suite(tmp_path / "bad.yaml", regularizer=["none"], eval={"finetune_epochs": 0})
    with pytest.raises(ConfigError, match=r"bad.yaml: eval.finetune_epochs: must be an integer >= 1, got 0"):
        load_suite(bad_epochs)
    for key, value, rule in [("finetune_backbone_lr_scale", 0, "> 0"), ("finetune_lr", "fast", "a learning rate > 0"),
                             ("finetune_layer_decay", 1.5, r"in \(0, 1\]"), ("segmentation_lr", -1.0, "a finite number > 0")]:
        bad = write_suite(tmp_path / "bad.yaml", regularizer=["none"], eval={key: value})
        with pytest.raises(ConfigError, match=rf"bad.yaml: eval.{key}: must be {rule}"):
            load_suite(bad)
    authors = write_suite(tmp_path / "authors.yaml", regularizer=["none"], eval={"finetune_backbone_lr_scale": 1.0})
    assert load_suite(authors).eval_options == {"finetune_backbone_lr_scale": 1.0}
    a = plan(load_suite(with_options), tmp_path / "o")[0][0].id
    b = plan(load_suite(write_suite(tmp_path / "opts2.yaml", regularizer=["none"], eval={
        "datasets": [{"name": "world", "data": "pretrain", "schemes": ["random"]}], "finetune_epochs": 4})),
        tmp_path / "o")[0][0].id
    assert a != b  # another evaluation recipe is another cell


def test_synth_masks_needs_a_synthesize_that_writes_them(tmp_path, monkeypatch):
    import inspect

    import ssl_rs.data.synth as synth

    suite = write_suite(tmp_path / "masks.yaml", regularizer=["none"], datasets=[
        {"name": "seg", "data": {"synth": {"n": 60, "size": 16, "masks": True}}, "protocols": ["knn"]}])
    if "masks" in inspect.signature(synth.synthesize).parameters:
        assert dict(load_suite(suite).eval_datasets[0].data.params)["masks"] is True
        monkeypatch.setattr(synth, "synthesize", lambda out, n=2000: out)  # one without the option
    with pytest.raises(ConfigError, match=r"eval.datasets\[0\].data.synth.masks: this ssl-rs cannot synthesise masks"):
        load_suite(suite)
    no_masks = write_suite(tmp_path / "nomasks.yaml", regularizer=["none"], datasets=[
        {"name": "seg", "data": {"synth": {"n": 60, "size": 16, "masks": False}}}])
    assert "masks" not in dict(load_suite(no_masks).eval_datasets[0].data.params)  # false: the default, no change


def test_the_authors_probe_options_are_checked_and_reach_the_harness(tmp_path, monkeypatch):
    """``eval.knn_votes: sum``, ``eval.linear_recipe: georank`` and ``eval.size: data`` (each dataset
    at its own size) are what georank_paper.yaml evaluates with; a run passes them to ``evaluate``."""
    import ssl_rs.evaluation.harness as harness

    for key, value in [("knn_votes", "total"), ("linear_recipe", "solo"), ("size", 64)]:
        bad = write_suite(tmp_path / "bad.yaml", regularizer=["none"], eval={key: value})
        with pytest.raises(ConfigError, match=rf"^.*bad.yaml: eval.{key}: unknown {value!r} \(use "):
            load_suite(bad)
    datasets = [{"name": "world", "data": "pretrain", "schemes": ["random"], "protocols": ["knn"]}]
    seen = []
    real = harness.evaluate

    def recording_evaluate(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("size", "knn_votes", "linear_recipe")})
        return real(*args, **kwargs)

    monkeypatch.setattr(harness, "evaluate", recording_evaluate)
    for options, expected in [({}, {"size": 16, "knn_votes": None, "linear_recipe": None}),
                              ({"knn_votes": "sum", "linear_recipe": "georank", "size": "data"},
                               {"size": None, "knn_votes": "sum", "linear_recipe": "georank"})]:
        suite = write_suite(tmp_path / "authors.yaml", regularizer=["none"], datasets=datasets,
                            data={"synth": {"n": 120, "size": 16, "seed": 1, "classes": 4}}, overrides=[
                                *TINY_OVERRIDES, "augmentation.size=12"], eval={"datasets": datasets, **options})
        seen.clear()
        run_suite(suite, tmp_path / f"out{len(options)}", progress=False)
        # the pretraining's size (12) unless size: data, which evaluates at the data's own (16)
        assert seen == [{**expected, "size": 12 if expected["size"] else None}]
