"""Every benchmark script's ``--help`` opens with its docstring's first paragraph, whole: the
description of bench_pretrain_throughput.py stopped mid-sentence at the docstring's first line."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py"))


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_describes_the_script_in_whole_sentences(script, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("COLUMNS", "100")
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    # argparse prints: usage (up to a blank line), the description, a blank line, the arguments
    description = words(text.split("\n\n")[1])
    assert description == words(module.__doc__.split("\n\n")[0])
    assert re.search(r"[.?]$", description), f"{script}.py --help: the description stops mid-sentence: {description!r}"
