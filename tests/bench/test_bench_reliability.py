"""``ssl-rs bench run`` never loses results: a failing cell is recorded (status + one-line reason),
the suite goes on, the exit status says so and a rerun retries it; ``bench report`` copes with
failed rows and with results.csv files written before the status column; bad options and
missing data are one line before anything is written.

Cells are not trained here: ``run_cell`` is replaced by a fake that returns rows at once (or
fails), so the runner's bookkeeping is tested in seconds. test_bench.py trains real cells.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import ssl_rs.bench.runner as runner
from ssl_rs.bench import read_results, report, run_suite
from ssl_rs.cli import main
from ssl_rs.data.converters.parallel import ConversionPlan, write_shards
from ssl_rs.errors import ConfigError

TINY_OVERRIDES = ["data.batch_size=32", "trainer.max_epochs=1", "trainer.knn_every_n_epochs=0",
                  "backbone.args.width=8", "method.args.queue_size=64"]
OLD_HEADER = ["suite", "cell_id", "cell", "method", "regularizer", "augmentation", "subset", "n_train", "image_size",
              "seed", "eval_data", "scheme", "protocol", "acc_macro", "n_eval_train", "n_eval_test", "train_seconds",
              "cell_seconds", "epochs", "run_dir", "finished_at"]


def write_suite(path: Path, **changes) -> Path:
    suite = {
        "name": "micro",
        "data": {"synth": {"n": 120, "size": 16, "seed": 1, "classes": 4}},
        "base_config": "synthetic/mocov2",
        "overrides": TINY_OVERRIDES,
        "matrix": {"method": ["mocov2", "mocov2_georank"], "seed": [0, 1]},
        "eval": {"datasets": [{"name": "world", "data": "pretrain", "schemes": ["random"]}]},
        "studies": [{"name": "methods", "compare": ["method"]}],
        "report": {"embedding": "pca", "embedding_samples": 60},
    }
    suite.update(changes)
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.fixture
def fake_cells(monkeypatch):
    """Replace training + evaluation by a fake; ``fail`` holds the cell indices that raise."""
    state = {"fail": set(), "ran": []}

    def fake_run_cell(suite, cell, cfg, out, eval_paths):
        state["ran"].append(cell.index)
        if cell.index in state["fail"]:
            raise RuntimeError(f"CUDA out of memory in cell {cell.index}\nTried to allocate 2.00 GiB")
        base = runner._cell_row_base(suite, cell, cfg, 84, 16)
        return [{**base, "eval_data": "world", "scheme": "random", "protocol": "knn",
                 "acc_macro": f"{40 + cell.index:.4f}", "n_eval_train": 84, "n_eval_test": 24, "train_seconds": "1.00",
                 "epochs": 1, "run_dir": f"runs/{cell.run_name}", "finished_at": "2026-01-01T00:00:00+00:00",
                 "status": "finished", "error": ""}]

    monkeypatch.setattr(runner, "run_cell", fake_run_cell)
    return state


def statuses(out: Path):
    return [(r["cell"], r["status"]) for r in read_results(out / "results.csv")]


# ----------------------------------------------------------------------------- failed cells
def test_a_failing_cell_is_recorded_and_the_suite_goes_on(tmp_path, fake_cells):
    suite, out = write_suite(tmp_path / "micro.yaml"), tmp_path / "out"
    fake_cells["fail"] = {2}
    log = io.StringIO()
    summary = run_suite(suite, out, stream=log)
    assert fake_cells["ran"] == [1, 2, 3, 4]  # the cells after the failing one ran
    assert (summary["ran"], summary["failed"], summary["left"]) == (3, 1, 1)
    assert summary["failures"][0]["cell"] == 2
    rows = read_results(out / "results.csv")
    assert statuses(out) == [("1", "finished"), ("2", "failed"), ("3", "finished"), ("4", "finished")]
    failed = rows[1]
    assert failed["error"] == "RuntimeError: CUDA out of memory in cell 2 Tried to allocate 2.00 GiB"
    assert failed["acc_macro"] == "" and failed["method"] == "mocov2" and failed["seed"] == "1"
    assert "FAILED after" in log.getvalue() and "1 failed, 1 left" in log.getvalue()
    assert "CUDA out of memory" in (out / failed["run_dir"] / "bench_error.log").read_text()


def test_a_rerun_retries_failed_cells_and_skips_finished_ones(tmp_path, fake_cells):
    suite, out = write_suite(tmp_path / "micro.yaml"), tmp_path / "out"
    fake_cells["fail"] = {2, 4}
    first = run_suite(suite, out, stream=io.StringIO())
    assert (first["ran"], first["failed"]) == (2, 2)

    fake_cells["ran"].clear()
    fake_cells["fail"] = {4}  # still broken
    log = io.StringIO()
    second = run_suite(suite, out, stream=log)
    assert fake_cells["ran"] == [2, 4]
    assert (second["skipped"], second["ran"], second["failed"], second["left"]) == (2, 1, 1, 1)
    assert "(2 failed before: retried)" in log.getvalue()

    fake_cells["ran"].clear()
    fake_cells["fail"] = set()
    third = run_suite(suite, out, stream=io.StringIO())
    assert fake_cells["ran"] == [4] and (third["ran"], third["failed"], third["left"]) == (1, 0, 0)
    assert runner.failed_cells(read_results(out / "results.csv")) == {}
    fake_cells["ran"].clear()
    fourth = run_suite(suite, out, stream=io.StringIO())
    assert fake_cells["ran"] == [] and fourth["skipped"] == 4


def test_max_cells_counts_failed_attempts(tmp_path, fake_cells):
    suite, out = write_suite(tmp_path / "micro.yaml"), tmp_path / "out"
    fake_cells["fail"] = {1}
    summary = run_suite(suite, out, max_cells=2, stream=io.StringIO())
    assert fake_cells["ran"] == [1, 2] and (summary["ran"], summary["failed"], summary["left"]) == (1, 1, 3)


def test_cli_exits_non_zero_with_a_summary_line(tmp_path, fake_cells, capsys):
    suite, out = write_suite(tmp_path / "micro.yaml"), tmp_path / "out"
    fake_cells["fail"] = {3}
    assert main(["bench", "run", str(suite), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("ssl-rs: error: 1 of 4 cells run failed")
    assert "cell 3 mocov2_georank seed=0: RuntimeError: CUDA out of memory" in captured.err
    assert "all 4 cells finished" not in captured.out
    fake_cells["fail"] = set()
    assert main(["bench", "run", str(suite), "--out", str(out)]) == 0
    assert "all 4 cells finished" in capsys.readouterr().out


def test_interrupt_still_stops_the_suite(tmp_path, fake_cells, monkeypatch):
    suite, out = write_suite(tmp_path / "micro.yaml"), tmp_path / "out"
    real = runner.run_cell

    def interrupted(suite, cell, *args):
        if cell.index == 2:
            raise KeyboardInterrupt
        return real(suite, cell, *args)

    monkeypatch.setattr(runner, "run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out, stream=io.StringIO())
    assert statuses(out) == [("1", "finished")]  # an interrupted cell is not recorded as failed


# ----------------------------------------------------------------------------- report
def test_report_leaves_failed_cells_out_with_a_note(tmp_path, fake_cells):
    suite, out = write_suite(tmp_path / "micro.yaml"), tmp_path / "out"
    fake_cells["fail"] = {2}
    run_suite(suite, out, stream=io.StringIO())
    result = report(out, stream=io.StringIO())
    md = (out / "results.md").read_text()
    assert "Cells finished: 3 of 4 (1 failed, left out: see the notes)" in md
    assert any("cell 2 (mocov2 seed=1) failed and is left out: RuntimeError: CUDA out of memory" in n
               for n in result["notes"])
    assert "failed and is left out" in md and result["failed"] == [read_results(out / "results.csv")[1]["cell_id"]]
    assert "bars_methods.png" in result["plots"]


def test_report_reads_a_failed_row_as_the_runner_writes_it(tmp_path, fake_cells):
    """Report alone: results.csv with three finished cells and a failed row (no metrics, no times)."""
    suite, out = write_suite(tmp_path / "micro.yaml"), tmp_path / "out"
    run_suite(suite, out, max_cells=3, stream=io.StringIO())
    rows = read_results(out / "results.csv")
    cell4 = next(c for c in json.loads((out / "cells.json").read_text()) if c["cell"] == 4)
    failed = {k: "" for k in rows[0]}
    failed.update({"suite": "micro", "cell_id": cell4["cell_id"], "cell": "4", "method": "mocov2_georank",
                   "regularizer": "georank", "augmentation": "geometric", "subset": "all", "seed": "1",
                   "cell_seconds": "3.00", "run_dir": cell4["run_dir"], "status": "failed",
                   "error": "RuntimeError: loss is NaN"})
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + [failed])
    result = report(out, stream=io.StringIO())
    assert any("cell 4 (mocov2_georank seed=1) failed and is left out: RuntimeError: loss is NaN" in n
               for n in result["notes"])
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| mocov2")]
    assert [line.split(" | ")[-2] for line in table] == ["2", "1"]  # seeds per row: the failed cell is not counted


def test_report_with_only_failed_cells_is_one_line(tmp_path, fake_cells, capsys):
    suite, out = write_suite(tmp_path / "micro.yaml"), tmp_path / "out"
    fake_cells["fail"] = {1, 2, 3, 4}
    run_suite(suite, out, stream=io.StringIO())
    assert main(["bench", "report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no finished cells yet (4 failed" in err


def test_results_csv_without_a_status_column_stays_readable(tmp_path, fake_cells):
    """A results.csv of an earlier version (no status/error columns): every row is finished, a
    rerun skips those cells, a new failure widens the header and the report reads both."""
    suite, out = write_suite(tmp_path / "micro.yaml"), tmp_path / "out"
    run_suite(suite, out, max_cells=2, stream=io.StringIO())
    old = [{k: r[k] for k in OLD_HEADER} for r in read_results(out / "results.csv")]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, OLD_HEADER)
        writer.writeheader()
        writer.writerows(old)
    rows = read_results(out / "results.csv")
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert runner.finished_rows(rows) == rows

    fake_cells["ran"].clear()
    fake_cells["fail"] = {4}
    summary = run_suite(suite, out, stream=io.StringIO())
    assert fake_cells["ran"] == [3, 4] and (summary["skipped"], summary["failed"]) == (2, 1)
    assert statuses(out) == [("1", "finished"), ("2", "finished"), ("3", "finished"), ("4", "failed")]
    with open(out / "results.csv", newline="") as f:
        assert next(csv.reader(f))[-2:] == ["status", "error"]
    result = report(out, stream=io.StringIO())
    assert any("cell 4" in n and "failed" in n for n in result["notes"])


# ----------------------------------------------------------------------------- bad options, bad data
@pytest.mark.parametrize("value", ["-1", "0"])
def test_max_cells_below_one_is_one_line_and_writes_nothing(tmp_path, fake_cells, capsys, value):
    suite, out = write_suite(tmp_path / "micro.yaml"), tmp_path / "out"
    assert main(["bench", "run", str(suite), "--out", str(out), "--max-cells", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ssl-rs: error: --max-cells: must be a number of cells >= 1, got {value}")
    assert err.count("\n") == 1
    assert not out.exists() and fake_cells["ran"] == []
    with pytest.raises(ConfigError, match="max_cells"):
        run_suite(suite, out, max_cells=int(value), stream=io.StringIO())


@pytest.mark.parametrize("where", ["pretrain", "eval"])
def test_missing_data_path_is_one_line_before_anything_is_written(tmp_path, fake_cells, capsys, where):
    missing = tmp_path / "nowhere" / "data.h5"
    if where == "pretrain":
        suite = write_suite(tmp_path / "micro.yaml", data={"path": str(missing)})
    else:
        suite = write_suite(tmp_path / "micro.yaml", eval={"datasets": [
            {"name": "other", "data": {"path": str(missing)}, "schemes": ["random"]}]})
    out = tmp_path / "out"
    assert main(["bench", "run", str(suite), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssl-rs: error: ") and err.count("\n") == 1 and "data.path" in err and "not found" in err
    assert not out.exists() and fake_cells["ran"] == []
    # a dry run validates the same way
    assert main(["bench", "run", str(suite), "--out", str(out), "--dry-run"]) == 2
    assert "not found" in capsys.readouterr().err and not out.exists()


def test_missing_convert_source_is_one_line_before_anything_is_written(tmp_path, fake_cells, capsys):
    suite = write_suite(tmp_path / "micro.yaml",
                        data={"convert": {"format": "eurosat-ms", "src": str(tmp_path / "no_such_dir")}})
    out = tmp_path / "out"
    assert main(["bench", "run", str(suite), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data.convert.src" in err and "no_such_dir not found" in err and err.count("\n") == 1
    assert not out.exists()


def test_a_sharded_folder_is_a_data_path_and_a_plain_folder_is_refused(tmp_path, fake_cells, capsys):
    folder = tmp_path / "shards"
    folder.mkdir()
    suite = write_suite(tmp_path / "micro.yaml", data={"path": str(folder)})
    out = tmp_path / "out"
    assert main(["bench", "run", str(suite), "--out", str(out), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "is a folder without index.json" in err and err.count("\n") == 1
    (folder / "index.json").write_text("{}\n")  # an index the cells could not read fails the dry run
    assert main(["bench", "run", str(suite), "--out", str(out), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "index.json" in err and "format" in err and err.count("\n") == 1
    assert not out.exists()
    shutil.rmtree(folder)
    write_shards(ConversionPlan(name="bench shards", items=list(range(6)), read=_shard_items,
                                writer=dict(bands=["B02", "B03"], size=(8, 8), gsd=10.0, source="test",
                                            class_names=["a", "b"])), folder, shard_size=4, workers=1, progress=False)
    assert main(["bench", "run", str(suite), "--out", str(out), "--dry-run"]) == 0
    assert "not found" not in capsys.readouterr().err


def _shard_items(item, context):
    rng = np.random.default_rng(item)
    yield (rng.integers(0, 10_000, (2, 8, 8), dtype=np.uint16),
           dict(lat=float(rng.uniform(-60, 60)), lon=float(rng.uniform(-180, 180)), label=int(item % 2)))
