"""``python -m ssl_rs.data.columns_table``, the command docs/data_format.md names to regenerate
its table, prints the table and nothing else (no RuntimeWarning about a module run twice)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ssl_rs.data.columns import markdown_table

REPO = Path(__file__).resolve().parents[2]


def test_the_table_command_prints_the_table_and_nothing_on_stderr():
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # show every warning, as a plain shell does
    proc = subprocess.run([sys.executable, "-m", "ssl_rs.data.columns_table"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == markdown_table() + "\n"
