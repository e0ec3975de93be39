"""``make demo`` (``python -m ssl_rs.demo``) at toy size: the table it prints and writes has the
README's columns and rows, its numbers are the ones in ``results.json``, and everything it writes
lies under ``--out``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Tuple

import pytest

from ssl_rs import demo

REPO = Path(__file__).resolve().parents[1]
# toy size: 160 samples of 16 px, one epoch, batch 32, an 8-wide CNN, a short MoCo queue
TINY = ["--n", "160", "--size", "16", "--epochs", "1", "data.batch_size=32", "backbone.args.width=8",
        "method.args.queue_size=64", "trainer.knn_every_n_epochs=0"]


def cells(line: str) -> List[str]:
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip() for c in line[1:-1].split("|")]


def is_separator(line: str) -> bool:
    return all(re.fullmatch(r":?-{3,}:?", c) for c in cells(line))


def readme_table() -> Tuple[List[str], List[str]]:
    """The header and the method column of the demo table shown in README.md."""
    lines = [line.strip() for line in (REPO / "README.md").read_text().splitlines()]
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("|") and cells(line)[:2] == ["method", "random acc-macro"])
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return cells(table[0]), [cells(line)[0] for line in table[2:]]


def test_readme_shows_the_demo_table():
    header, methods = readme_table()
    assert header == ["method", "random acc-macro", "random acc-micro", "spatial-block acc-macro",
                      "spatial-block acc-micro", "pretrain s"]
    assert methods == ["random init", "mocov2", "mocov2 + georank"]


def test_format_table_has_the_readme_layout():
    metrics = {"acc_macro": 12.345, "acc_micro": 67.891}
    rows = [{"method": "random init", "train_s": 0.0, "random": metrics, "spatial-block": metrics},
            {"method": "mocov2", "train_s": 46.4, "random": metrics, "spatial-block": metrics}]
    lines = demo.format_table(rows).splitlines()
    header, _ = readme_table()
    assert cells(lines[0]) == header
    assert len(cells(lines[1])) == len(header) and is_separator(lines[1])
    assert cells(lines[2]) == ["random init", "12.3", "67.9", "12.3", "67.9", "0"]
    assert cells(lines[3]) == ["mocov2", "12.3", "67.9", "12.3", "67.9", "46"]


@pytest.mark.slow
def test_tiny_demo_prints_and_writes_the_readme_table_under_out_only(tmp_path, monkeypatch, capfd):
    cwd = tmp_path / "cwd"  # the demo runs from here; it must write nothing here
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    code = demo.main(["--out", str(out), *TINY])
    captured = capfd.readouterr()  # the file descriptors: Lightning's logging handler writes there
    assert code == 0, captured.err
    assert "Trainer.fit` stopped" not in captured.err and "GPU available" not in captured.err  # as `ssl-rs pretrain`

    header, methods = readme_table()
    table = (out / "results.md").read_text().strip()
    assert table in captured.out  # printed as well as written
    lines = table.splitlines()
    assert cells(lines[0]) == header
    assert len(cells(lines[1])) == len(header) and is_separator(lines[1])
    rows = [cells(line) for line in lines[2:]]
    assert [r[0] for r in rows] == methods
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results] == methods
    for row, result in zip(rows, results):
        assert len(row) == len(header)
        expected = [f"{result[s][k]:.1f}" for s in ("random", "spatial-block") for k in ("acc_macro", "acc_micro")]
        assert row[1:5] == expected
        assert all(0.0 <= float(v) <= 100.0 for v in expected)
        assert row[5] == f"{float(result['train_s']):.0f}"
    assert results[0]["train_s"] == 0.0 and "run_dir" not in results[0]
    for result in results[1:]:  # the pretraining runs live under --out too
        assert Path(result["run_dir"]).resolve().is_relative_to(out.resolve())
        assert (Path(result["run_dir"]) / "checkpoints" / "last.ckpt").is_file()
    assert (out / "world.h5").is_file()
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "out"]
