"""The GPU check (benchmarks/gpu_check.sh, issue #13) without a GPU: its dry run (what CI can
check), its driver at toy size on the CPU (a step past its budget is stopped; results are
written), and the end-to-end throughput benchmark run for real at toy size."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402


def run(command, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_CHECK_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.slow
def test_dry_run_plans_every_step_within_8_minutes_and_writes_nothing(tmp_path):
    # the interpreter is given (GPU_CHECK_PYTHON): a test must not install packages
    out = tmp_path / "results"
    proc = run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    for step in gpu_check.STEPS:
        assert f"| {step.name} " in text
    assert "PROBLEM" not in text
    total = int(text.split("total budget ")[1].split(" s")[0])
    assert 0 < total <= 8 * 60
    # -m cuda found the CUDA tests, and only those
    tests = text.split("CUDA tests: ")[1].splitlines()[0].split()
    assert "tests/geo/test_georank.py::test_cuda_matches_cpu_without_host_sync" in tests
    assert "tests/test_cuda_paths.py::test_harness_on_the_device_matches_the_cpu" in tests
    assert all("cuda" in t for t in tests)
    assert not any(t.startswith("tests/geo/test_georank.py::") and "cuda" not in t.split("::")[1] for t in tests)
    assert not out.exists()


def _script(tmp_path: Path, flags) -> str:
    path = tmp_path / "fake_bench.py"
    path.write_text(textwrap.dedent(f"""
        import argparse
        parser = argparse.ArgumentParser()
        for flag in {list(flags)!r}:  # "--name" or "--name:int"
            name, _, kind = flag.partition(":")
            parser.add_argument(name, type=int if kind == "int" else str)
        parser.parse_args()
    """))
    return str(path)


def test_plan_passes_optional_flags_only_when_the_script_takes_them(tmp_path):
    script = _script(tmp_path, ["--device"])
    step = gpu_check.Step("fake", "a fake benchmark", 10, script,
                          optional=[("--device", "cuda"), ("--json", gpu_check.JSON)])
    planned = gpu_check.plan(step, smoke=False, budget_scale=1.0, out=tmp_path, probe_help=True)
    assert planned.problem is None
    assert planned.command[1:] == [script, "--device", "cuda"]
    assert planned.notes == ["takes no --json (yet): run without it"]


def test_plan_reports_a_flag_the_script_does_not_take_and_a_missing_script(tmp_path):
    script = _script(tmp_path, ["--device"])
    step = gpu_check.Step("fake", "a fake benchmark", 10, script, args=["--device", "cuda", "--iters", "3"])
    planned = gpu_check.plan(step, smoke=False, budget_scale=1.0, out=tmp_path, probe_help=True)
    assert planned.problem == f"{script} does not take --iters"
    step = gpu_check.Step("fake", "a fake benchmark", 10, _script(tmp_path, ["--iters:int"]), args=["--iters", "x"])
    planned = gpu_check.plan(step, smoke=False, budget_scale=1.0, out=tmp_path, probe_help=True)
    assert planned.problem.endswith("refuses its arguments: fake_bench.py: error: argument --iters: "
                                    "invalid int value: 'x'")
    gone = gpu_check.Step("gone", "not written yet", 10, str(tmp_path / "gone.py"), missing_ok=True)
    assert gpu_check.plan(gone, False, 1.0, tmp_path, True).skip.endswith("does not exist yet")
    needed = gpu_check.Step("gone", "not written yet", 10, str(tmp_path / "gone.py"))
    assert gpu_check.plan(needed, False, 1.0, tmp_path, True).problem.endswith("not found")


def test_cuda_tests_are_the_files_marking_tests_cuda_run_with_m_cuda(tmp_path, monkeypatch):
    files = gpu_check.cuda_test_files()
    for path in ("tests/test_cuda_paths.py", "tests/geo/test_georank.py", "tests/augmentations/test_augmentations.py"):
        assert path in files
    assert "tests/evaluation/test_knn.py" not in files  # no cuda mark
    # the mark, not a mention of CUDA, selects a file
    (tmp_path / "tests" / "sub").mkdir(parents=True)
    (tmp_path / "tests" / "test_a.py").write_text("import pytest\n\n@pytest.mark.cuda\ndef test_x():\n    pass\n")
    (tmp_path / "tests" / "sub" / "test_b.py").write_text("import pytest\n\npytestmark = pytest.mark.cuda\n")
    (tmp_path / "tests" / "test_c.py").write_text(
        "import pytest, torch\n\n@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')\n"
        "def test_x():\n    pass\n\n@pytest.mark.cudagraphs\ndef test_y():\n    pass\n")
    monkeypatch.setattr(gpu_check, "REPO", tmp_path)
    assert gpu_check.cuda_test_files() == ["tests/sub/test_b.py", "tests/test_a.py"]

    step = next(s for s in gpu_check.STEPS if s.name == "cuda-tests")
    monkeypatch.setenv("SSL_RS_TEST_DEVICE", "cpu")  # a developer's shell: not for the real run
    planned = gpu_check.plan(step, smoke=False, budget_scale=1.0, out=tmp_path, probe_help=False)
    assert planned.problem is None
    assert planned.command[1:3] == ["-m", "pytest"]
    assert planned.command[-2:] == ["tests/sub/test_b.py", "tests/test_a.py"]
    assert "-m" in planned.command[3:] and planned.command[planned.command.index("-m", 3) + 1] == "cuda"
    assert "SSL_RS_TEST_DEVICE" not in planned.env
    smoke = gpu_check.plan(step, smoke=True, budget_scale=1.0, out=tmp_path, probe_help=False)
    assert smoke.env["SSL_RS_TEST_DEVICE"] == "cpu"  # the smoke run checks the cheap ones on the CPU
    assert smoke.command[smoke.command.index("-k") + 1] == "knn or loader"
    monkeypatch.setattr(gpu_check, "REPO", tmp_path / "empty")
    (tmp_path / "empty" / "tests").mkdir(parents=True)
    assert "no test file marks a test cuda" in gpu_check.plan(step, False, 1.0, tmp_path, False).problem


def _pytest(args, env_device=None, cwd=REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SSL_RS_TEST_DEVICE"}
    if env_device is not None:
        env["SSL_RS_TEST_DEVICE"] = env_device
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *args], cwd=cwd,
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


def test_cuda_marker_skips_without_cuda_unless_the_cpu_is_asked_for(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the cuda tests")
    tests = tmp_path / "tests"
    tests.mkdir()
    (tmp_path / "setup.cfg").write_text("[tool:pytest]\naddopts = --strict-markers\n")
    (tests / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    mark = "@pytest.mark." + "cuda"  # in two parts: this file is no CUDA test file for cuda_test_files
    (tests / "test_m.py").write_text(textwrap.dedent(f"""
        import pytest

        {mark}
        def test_follows_the_variable(device_under_test):
            assert device_under_test.type == "cpu"

        {mark}
        def test_calls_cuda_itself():
            raise AssertionError("ran without CUDA")

        def test_plain():
            pass
    """))
    proc = _pytest(["-m", "cuda", "tests"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 skipped, 1 deselected" in proc.stdout
    assert proc.stdout.count(": needs CUDA\n") == 2  # the reason gpu_check counts as a failure on a GPU
    proc = _pytest(["-m", "cuda", "tests"], env_device="cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped, 1 deselected" in proc.stdout
    assert "needs CUDA (it does not take device_under_test" in proc.stdout
    proc = _pytest(["-m", "cuda", "tests"], env_device="tpu", cwd=tmp_path)
    assert proc.returncode != 0 and "SSL_RS_TEST_DEVICE: must be cpu or cuda, got 'tpu'" in proc.stdout + proc.stderr


def test_cuda_test_summary_fails_when_they_skip_on_a_gpu_machine():
    out = ("SKIPPED [4] tests/augmentations/test_augmentations.py:264: needs CUDA\n"
           "SKIPPED [1] tests/geo/test_georank.py:267: needs CUDA\n5 skipped, 31 deselected in 3.1s")
    assert gpu_check._summary_cuda_tests(out, None, cuda=False)[0] == "skipped"
    assert gpu_check._summary_cuda_tests(out, None, cuda=True) == (
        "failed", "5 skipped: 5 skipped for want of CUDA on a CUDA machine", "")
    # a skip for another reason (an optional package) on a CUDA machine is reported, not a failure
    out = "SKIPPED [1] tests/geo/test_soft_rank.py:9: needs torchsort\n4 passed, 1 skipped in 2.0s"
    assert gpu_check._summary_cuda_tests(out, None, cuda=True) == (None, "4 passed, 1 skipped", "")
    assert gpu_check._summary_cuda_tests("5 passed, 31 deselected in 3.1s", None, cuda=True) == (None, "5 passed", "")
    assert gpu_check._summary_cuda_tests("no tests ran in 0.1s", None, cuda=True)[0] == "failed"
    # stopped by its budget before pytest's last line: the verbose lines say how far it got
    out = ("tests/test_cuda_paths.py::test_a PASSED  [ 10%]\ntests/test_cuda_paths.py::test_b[x] FAILED  [ 20%]\n"
           "tests/test_cuda_paths.py::test_b[y] PASSED  [ 30%]\n")
    assert gpu_check._summary_cuda_tests(out, None, cuda=True) == (None, "2 passed, 1 failed", "")


def test_markdown_tables_are_read_back():
    text = "intro\n| a | b |\n|---|---:|\n| 1 | 2 |\n| 3 | 4 |\nend\n| x |\n|---|\n"
    assert gpu_check.markdown_tables(text) == [[{"a": "1", "b": "2"}, {"a": "3", "b": "4"}], []]


@pytest.mark.slow
def test_without_cuda_the_check_refuses_to_run(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the check")
    proc = run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "r")])
    assert proc.returncode == 2
    assert "no CUDA device here" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_step_past_its_budget_is_stopped_and_reported(tmp_path):
    out = tmp_path / "results"
    # bench_augment starts torch and kornia: far more than 2% of its 45 s budget
    proc = run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--only", "augment", "--budget-scale", "0.02",
                "--out", str(out)])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads((out / "results.json").read_text())
    (row,) = result["steps"]
    assert row["status"] == "timeout" and row["seconds"] < 30
    assert (out / "augment.log").read_text().startswith("$ ")
    assert "| augment | timeout |" in " ".join((out / "results.md").read_text().split())


def test_replicated_world_is_a_valid_file_with_every_sample_in_train(tmp_path):
    import bench_pretrain_throughput as bench
    import h5py

    from ssl_rs.data.dataset import GeoDataset

    stages = bench.make_world(tmp_path / "world.h5", n=20, base=8, size=16)
    assert set(stages) == {"synthesise_s", "replicate_s"}
    assert not (tmp_path / "world.base.h5").exists()
    ds = GeoDataset(tmp_path / "world.h5", split="train", scheme="all")
    assert len(ds) == 20
    with h5py.File(tmp_path / "world.h5", "r") as f:
        images, lat = f["images"][()], f["lat"][()]
        assert f["images"].chunks == (1, 12, 16, 16)
        assert len(f["splits/random"]) == 20
    np.testing.assert_array_equal(images[8:16], images[:8])
    np.testing.assert_array_equal(images[16:], images[:4])
    assert len(np.unique(lat)) == 20  # jittered: copies are not at the same place


@pytest.mark.slow
def test_throughput_benchmark_runs_at_toy_size_through_the_driver(tmp_path):
    out = tmp_path / "results"
    proc = run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--only", "pretrain", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads((out / "results.json").read_text())["steps"]
    assert row["status"] == "ok", row
    data = row["result"]
    loop, bare = data["pretrain"], data["bare"]
    assert loop["steps"] == data["warmup_steps"] + loop["steps_timed"]  # one epoch, warm-up then timed steps
    assert loop["steps_timed"] == bare["steps_timed"] == 4
    assert loop["samples_per_s"] > 0 and bare["samples_per_s"] > 0
    assert data["ratio"] == pytest.approx(loop["samples_per_s"] / bare["samples_per_s"])
    log = (out / "pretrain.log").read_text()
    assert "| ssl-rs pretrain (after 2 warm-up steps) |" in log
    assert "| bare training step, 4 pre-loaded batches |" in log
    assert "pretrain / bare step: " in log
    assert row["target"] == ">= 90%: not graded in a smoke run"  # toy size on the CPU measures nothing


@pytest.mark.slow
def test_the_cuda_tests_step_runs_its_cheap_tests_on_the_cpu_in_a_smoke_run(tmp_path):
    """``--smoke --only cuda-tests``: the driver's pytest run of ``-m cuda`` with
    SSL_RS_TEST_DEVICE=cpu, so the CUDA tests' logic and the step's summary are exercised in CI."""
    out = tmp_path / "results"
    proc = run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--only", "cuda-tests", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads((out / "results.json").read_text())["steps"]
    assert row["status"] == "ok", row
    assert re.search(r"\b[1-9]\d* passed", (out / "cuda-tests.log").read_text())


GEORANK_SMOKE_TABLE = """GeoRank forward + backward, z: B x 128 float32 on CPU

| threads | B | strength | ssl-rs (ms) | ssl-rs + torchsort (ms) | ssl-rs CPU (ms) |
|---|---|---|---|---|---|
| 1 | 64 | 0.001 | 2.9 | 4.4 | 2.9 |
| 1 | 64 | 1 | 2.5 | 2.8 | 2.5 |
| 2 | 64 | 0.001 | 59.8 | 64.8 | 59.6 |
| 2 | 64 | 1 | 64.1 | 63.9 | 64.0 |
"""


def test_georank_summary_says_which_strength_and_threads_each_entry_is():
    # was "ssl-rs: B=64: 2.9 ms, 4.4 ms; B=64: 2.5 ms, 2.8 ms; ...": four entries alike but for their numbers
    status, summary, target = gpu_check._summary_georank(GEORANK_SMOKE_TABLE, None, False)
    assert (status, target) == (None, "")
    assert summary == ("ssl-rs / ssl-rs + torchsort: B=64, strength 0.001, 1 thread: 2.9 / 4.4 ms; "
                       "B=64, strength 1, 1 thread: 2.5 / 2.8 ms; B=64, strength 0.001, 2 threads: 59.8 / 64.8 ms; "
                       "B=64, strength 1, 2 threads: 64.1 / 63.9 ms")


@pytest.mark.parametrize("smoke, target", [(True, ">= 90%: not graded in a smoke run"), (False, ">= 90%: missed")])
def test_a_smoke_run_does_not_grade_the_throughput_target(tmp_path, smoke, target):
    step = next(s for s in gpu_check.STEPS if s.name == "pretrain")
    result = {"pretrain": {"samples_per_s": 40.0}, "bare": {"samples_per_s": 100.0}, "ratio": 0.4, "target": 0.9,
              "target_met": False, "batch_size": 4, "workers": 0, "precision": "32-true"}
    write = (f"import json, pathlib; pathlib.Path({str(tmp_path / 'pretrain.json')!r})"
             f".write_text(json.dumps({result!r}))")
    planned = gpu_check.Planned(step, [sys.executable, "-c", write], dict(os.environ), 60.0, [])
    planned.smoke = smoke
    row = gpu_check.run_step(planned, False, tmp_path)
    assert row["status"] == "ok", row
    assert row["target"] == target
    assert row["summary"].startswith("pretrain 40 vs bare step 100 samples/s = 40.0%")
