"""The docs say what the code does: the README's shell commands run (at toy size) and leave what
the README says they leave; the data format page states GeoDataset's defaults; a suite file that
quotes a run time quotes the measured one of docs/benchmarks.md."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED = REPO.parent / "shared" / "data"

#: README lines not run here, and why
NOT_RUN = {
    "make demo": "the full-size demo; tests/test_demo.py runs it at toy size",
    "make test": "the whole suite, this test included",
    "make test-fast": "the suite without slow tests, this test included",
    "SSL_RS_TEST_DEVICE=cpu .venv/bin/pytest -m cuda tests/test_cuda_paths.py": "pytest inside pytest; "
    "tests/test_gpu_check.py runs the cuda tests' cheap set through gpu_check --smoke (SSL_RS_TEST_DEVICE=cpu)",
    # converters of distributions without a real sample in ../shared/data: their tests convert
    # fabricated files of the published layout through the same command
    "ssl-rs data convert bigearthnet-v2 PATH -o reben.h5": "tests/data/test_converter_bigearthnet_v2.py",
    "ssl-rs data convert so2sat PATH --release v3 --split block -o so2sat-block.h5": "tests/data/test_converter_so2sat.py",
    "ssl-rs data convert sen4agrinet PATH -o s4a.h5": "tests/data/test_converter_sen4agrinet.py",
    "ssl-rs data convert cashew-benin PATH -o cashew.h5": "tests/data/test_converter_segmentation_tiles.py",
}
#: (README text, what runs instead): the real samples for PATH, and toy sizes. Each must match,
#: so that a README edit that these no longer fit fails here instead of running at full size.
TOY = [
    ("../shared/data/", f"{SHARED}/"),
    ("convert bigearthnet PATH", f"convert bigearthnet {SHARED}/bigearthnet_s2_examples"),
    ("convert ssl4eo-s12 PATH", f"convert ssl4eo-s12 {SHARED}/ssl4eo_s12_sample"),
    ("convert major-tom PATH", f"convert major-tom {SHARED}/major_tom_core_s2l2a_sample"),
    ("--n 2000 --size 32", "--n 200 --size 32"),  # 140 training samples: one batch of the synthetic configs
    ("--n 500 --size 32 --masks", "--n 60 --size 32 --masks"),
    ("--scheme official --json out.json", "--scheme official --json out.json --epochs 5"),
]


def readme_commands():
    """Every line of the README's ```bash blocks, in order, as one shell session would run them."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def toy(line: str, used: set) -> str:
    for old, new in TOY:
        if old in line:
            used.add(old)
            line = line.replace(old, new)
    return line


def test_readme_commands_are_all_run_or_named():
    commands = readme_commands()
    assert any(c.startswith("ssl-rs pretrain") for c in commands) and any(c.startswith("ssl-rs eval") for c in commands)
    not_run = {command(c) for c in commands if command(c) in NOT_RUN}
    assert not_run == set(NOT_RUN), f"NOT_RUN names commands the README no longer has: {set(NOT_RUN) - not_run}"
    skipped = {command(c) for c in commands if not c.startswith("ssl-rs ")}
    assert skipped <= set(NOT_RUN), "a README command is neither run by test_readme_shell_commands nor named in NOT_RUN"


def command(line: str) -> str:
    """A README line without its comment."""
    return line.split("#")[0].strip()


@pytest.mark.slow
def test_readme_shell_commands_run_at_toy_size(tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"real Sentinel-2 samples not found at {SHARED}")
    bin_dir = Path(sys.executable).parent  # where this environment's `ssl-rs` is
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    used: set = set()
    for line in readme_commands():
        if not line.startswith("ssl-rs ") or command(line) in NOT_RUN:
            continue
        shell = toy(line, used)
        done = subprocess.run(["bash", "-c", shell], cwd=tmp_path, env=env, capture_output=True, timeout=600)
        stdout, stderr = done.stdout.decode(), done.stderr.decode()  # not text=True: it turns "\r" into "\n"
        assert done.returncode == 0, f"{shell}\n{stderr[-3000:]}"
        assert "\r" not in stdout and "\r" not in stderr, f"{shell}: progress frames in a redirected output"
        assert stdout.strip(), f"{shell}: printed no result"
    assert used == {old for old, _ in TOY}, f"substitutions that match no README line: {set(dict(TOY)) - used}"

    # what the README says a run directory holds, and that best.ckpt exists exactly when it says
    run = tmp_path / "runs" / "mocov2_georank"
    for name in ("config.yaml", "checkpoints/last.ckpt", "tb", "results.json"):
        assert (run / name).exists(), name
    result = json.loads((run / "results.json").read_text())
    assert (run / "checkpoints" / "best.ckpt").exists() == bool(result["best"]["checkpoint"])
    assert (tmp_path / "out.json").is_file()  # eval linear --json


def test_data_format_states_geodataset_defaults():
    from ssl_rs.data import GeoDataset

    text = (REPO / "docs" / "data_format.md").read_text()
    stated = re.search(r"`ssl_rs\.data\.GeoDataset\(path, ([^`]*)\)`", text).group(1)
    defaults = dict(part.split("=") for part in stated.split(", "))
    signature = inspect.signature(GeoDataset.__init__).parameters
    for name, value in defaults.items():
        assert repr(signature[name].default) == value.replace('"', "'"), f"docs/data_format.md: {name}={value}"
    assert "reads every sample of the file" in text  # what split=None means


def test_suite_files_quote_the_measured_times():
    """A run time in a shipped suite's comments is the one docs/benchmarks.md gives for it."""
    docs = (REPO / "docs" / "benchmarks.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([\w-]+)` \|.*\| ([^|]*) \|$", docs, re.M)}
    time = re.compile(r"~?\d+(?:-\d+)? min(?: \d+ s)?")
    quoted = 0
    for suite in sorted((REPO / "benchmarks" / "suites").glob("*.yaml")):
        comments = " ".join(line for line in suite.read_text().splitlines() if line.startswith("#"))
        for found in time.findall(comments):
            quoted += 1
            assert suite.stem in rows, f"{suite.name} quotes {found!r}; docs/benchmarks.md has no row for it"
            assert found in rows[suite.stem], f"{suite.name} quotes {found!r}; docs/benchmarks.md: {rows[suite.stem]!r}"
    assert quoted  # the check sees the quoted times (geo_methods-small quotes one)
