"""The GPU check: everything in ssl-rs that needs a GPU to be measured, in one command.

    bash benchmarks/gpu_check.sh [--out DIR] [--only STEP,...] [--skip STEP,...]   # on a machine with CUDA
    bash benchmarks/gpu_check.sh --dry-run      # the plan; checks that every script exists and takes its flags
    bash benchmarks/gpu_check.sh --smoke        # every step at toy size on the CPU (tests this driver, not the GPU)

Steps, each a subprocess with its own time budget (a step that runs past it is stopped, with its
process group, and reported as ``timeout``; the next step starts on time), together within 8 min:

* ``cuda-tests``: the tests marked ``cuda`` (``pytest -m cuda``: tests/test_cuda_paths.py, a tiny
  pretraining of every method and regularizer, the evaluation harness against the CPU, the loader
  with pinned memory, the k-NN's bf16 path; and the CUDA tests of other modules), which skip
  without CUDA; here one that skips anyway fails the step. ``--smoke`` runs the cheap ones on the
  CPU (``SSL_RS_TEST_DEVICE=cpu``, tests/conftest.py);
* ``augment``: ``bench_augment.py`` on the GPU;
* ``georank-loss``: ``bench_georank_loss.py`` on the GPU (``--device cuda`` when it takes it);
* ``cuda-sync``: ``check_cuda_sync.py``, GeoRank forward + backward under
  ``torch.cuda.set_sync_debug_mode("error")``;
* ``loader``: ``bench_loader.py`` (skipped while it does not exist);
* ``pretrain``: ``bench_pretrain_throughput.py``, samples/s of ``ssl-rs pretrain`` (MoCo v2 +
  GeoRank, ResNet-18, 120 px, bf16-mixed) against the bare training step (target >= 90%).

Prints one table at the end and writes, atomically, to ``--out`` (default
``bench_out/gpu_check/<UTC time>``): ``results.json`` (every step: status, seconds, command, key
numbers, the Markdown tables it printed), ``results.md`` (the table) and ``<step>.log``. Exit
status 0 when no step failed or timed out (a missed throughput target is a result, not a failure).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 8 * 60  # issue #13: the whole check fits in 8 minutes
KILL_GRACE_S = 10  # after SIGTERM (pretrain then saves a checkpoint), before SIGKILL
JSON = "{json}"  # in a step's arguments: the path of the step's JSON result, OUT/<step>.json


# ----------------------------------------------------------------------------- the CUDA tests
#: tests/conftest.py: ``cpu`` runs the ``cuda`` tests that take its ``device_under_test`` on the CPU
TEST_DEVICE_VARIABLE = "SSL_RS_TEST_DEVICE"
#: a line that marks tests cuda: a decorator, or the module's ``pytestmark``
CUDA_MARK = re.compile(r"^[ \t]*(@pytest\.mark\.cuda\b|pytestmark\b.*\bmark\.cuda\b)", re.MULTILINE)


def cuda_test_files() -> List[str]:
    """Test files that mark tests ``cuda`` (``@pytest.mark.cuda``, ``pytestmark = pytest.mark.cuda``);
    ``-m cuda`` then picks the tests: collecting only these files takes seconds, the whole suite
    much longer."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                  if CUDA_MARK.search(p.read_text(encoding="utf-8", errors="replace")))


# ----------------------------------------------------------------------------- the steps
Flag = Tuple[str, ...]  # ("--device", "cuda"): passed only when the script's --help lists "--device"


@dataclass(frozen=True)
class Step:
    name: str
    what: str
    budget_s: int
    script: Optional[str] = None  # relative to the repository; None: pytest
    args: Sequence[str] = ()  # on the GPU (pytest: its options)
    smoke_args: Sequence[str] = ()  # --smoke: on the CPU, at toy size
    # flags of scripts that other work is changing: passed only if the script's --help lists them
    optional: Sequence[Flag] = ()
    smoke_optional: Sequence[Flag] = ()
    missing_ok: bool = False  # a script not written yet: the step is skipped, not failed
    # its target grades a measurement (a throughput), which a smoke run at toy size on the CPU is not
    measured_target: bool = False
    summarize: Optional[Callable[..., Tuple[Optional[str], str, str]]] = field(default=None, compare=False)


def _summary_cuda_tests(out: str, data, cuda: bool):
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out)}
    if not counts:  # stopped before pytest's last line: its verbose line per test so far
        for outcome in re.findall(r"^\S+::\S+ (PASSED|FAILED|ERROR|SKIPPED)\b", out, re.MULTILINE):
            key = "errors" if outcome == "ERROR" else outcome.lower()
            counts[key] = counts.get(key, 0) + 1
    shown = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "deselected") or "no tests"
    # -rs lists each skip with its reason: one that names CUDA on a CUDA machine means a CUDA test
    # did not run; one for another reason (an optional package missing) is only reported
    cuda_skips = sum(int(n) for n, reason in re.findall(r"^SKIPPED \[(\d+)\] [^\n]*?: (.*)$", out, re.MULTILINE)
                     if re.search(r"\b(cuda|gpu)\b", reason, re.IGNORECASE))
    if cuda and cuda_skips:
        return "failed", f"{shown}: {cuda_skips} skipped for want of CUDA on a CUDA machine", ""
    if not any(counts.get(k) for k in ("passed", "failed", "error", "errors")):
        if counts.get("skipped") and not cuda:
            return "skipped", f"{shown} (no CUDA here)", ""
        return "failed", f"{shown}: no CUDA test ran", ""
    return None, shown, ""


def _summary_augment(out: str, data, cuda: bool):
    rows = [r for t in markdown_tables(out) for r in t if "preset" in r]
    gpu = [r for r in rows if r.get("device", "cpu") != "cpu"] or rows
    return None, ", ".join(f"{r['preset']} {r.get('images / s', '?')} img/s" for r in gpu) or "no table", ""


def _summary_georank(out: str, data, cuda: bool):
    for table in reversed(markdown_tables(out)):
        columns = list(table[0]) if table else []
        timed = [c for c in columns if "cuda" in c.lower()] or [c for c in columns if "ms" in c.lower()]
        if timed and "B" in columns:
            timed = timed[:2]
            # every entry names its batch, strength and threads: the rows differ in more than B
            entries = []
            for r in table:
                where = [f"B={r['B']}"]
                if "strength" in r:
                    where.append(f"strength {r['strength']}")
                if "threads" in r:
                    where.append(f"{r['threads']} thread{'' if r['threads'] == '1' else 's'}")
                entries.append(", ".join(where) + ": " + " / ".join(r[c] for c in timed) + " ms")
            names = " / ".join(c.replace("(ms)", "").strip() for c in timed)
            return None, f"{names}: " + "; ".join(entries), ""
    return None, "see the log", ""


def _summary_cuda_sync(out: str, data, cuda: bool):
    if not data:
        return "failed", "no result written", ""
    if data.get("status") == "skipped":
        return "skipped", data.get("reason", ""), "no host sync: not checked"
    synced = [c for c in data["checks"] if c["synced"]]
    if synced:
        sites = sorted({s for c in synced for s in c.get("sync_sites") or [c.get("first_sync", "?")]})
        shown = f"{len(synced)} of {len(data['checks'])} checks synchronised: {', '.join(sites)}"
        return "failed", shown, "no host sync: missed"
    worst = max(c["ms"] for c in data["checks"])
    shown = f"no host sync in {len(data['checks'])} checks (B={data['checks'][0]['batch']}; <= {worst:.1f} ms/call)"
    return None, shown, "no host sync: met"


def _summary_loader(out: str, data, cuda: bool):
    rows = [r for t in markdown_tables(out) for r in t if "samples/s" in r and "reader" in r]

    def rate(row) -> float:
        try:
            return float(row["samples/s"].replace(",", ""))
        except ValueError:
            return 0.0

    h5 = [r for r in rows if r["reader"].startswith("h5py")]
    loaders = [r for r in rows if "DataLoader" in r["reader"]]
    if not h5 or not loaders:
        return None, "see the log", ""
    best = max(loaders, key=rate)
    return None, (f"h5py {h5[0]['samples/s']}/s; best loader: {best['reader']} {best['samples/s']}/s "
                  f"({best.get('vs h5py', '?')} per process vs h5py)"), ""


def _summary_pretrain(out: str, data, cuda: bool):
    if not data:
        return "failed", "no result written", ""
    loop, bare = data["pretrain"]["samples_per_s"], data["bare"]["samples_per_s"]
    target = f">= {100 * data['target']:.0f}%: {'met' if data['target_met'] else 'missed'}"
    return None, (f"pretrain {loop:.0f} vs bare step {bare:.0f} samples/s = {100 * data['ratio']:.1f}% "
                  f"(batch {data['batch_size']}, {data['workers']} workers, {data['precision']})"), target


STEPS: Tuple[Step, ...] = (
    # 75 s: the set is sized for <= 60 s on an H100 with pytest's imports (not measured on a GPU yet;
    # SSL_RS_TEST_DEVICE=cpu on 2 shared CPU cores: 75-102 s wall, 35-36 s of CPU); the cheapest tests run
    # first, so a run stopped by the budget still reports most of them
    Step("cuda-tests", "the tests marked cuda (pytest -m cuda)", 75,
         args=["--durations=15"], smoke_args=["-k", "knn or loader"], summarize=_summary_cuda_tests),
    Step("augment", "augmentation presets on the GPU, batch 256 of 12 x 120 x 120", 45, "benchmarks/bench_augment.py",
         args=["--device", "cuda", "--batch", "256", "--iters", "10"],
         smoke_args=["--device", "cpu", "--batch", "4", "--iters", "1", "--warmup", "0", "--presets", "geometric"],
         summarize=_summary_augment),
    # 60 s: on the GPU it times ssl-rs alone, 2 thread counts x 2 strengths x 8 calls at B=512
    Step("georank-loss", "GeoRank loss forward + backward on the GPU", 60, "benchmarks/bench_georank_loss.py",
         optional=[("--device", "cuda"), ("--json", JSON)],
         smoke_optional=[("--device", "cpu"), ("--sizes", "64"), ("--repeats", "1"), ("--no-cuda",), ("--json", JSON)],
         summarize=_summary_georank),
    Step("cuda-sync", "GeoRank at B=512 under torch.cuda.set_sync_debug_mode('error')", 30,
         "benchmarks/check_cuda_sync.py", args=["--json", JSON], smoke_args=["--json", JSON],
         summarize=_summary_cuda_sync),
    # 12 x 120 x 120 only: the pretraining's input; the 13 x 64 x 64 rows need no GPU host to measure
    Step("loader", "GeoDataset + DataLoader samples/s against plain h5py reads, 12 x 120 x 120", 110,
         "benchmarks/bench_loader.py",
         optional=[("--shapes", "12x120x120"), ("--repeats", "3"), ("--json", JSON)],
         smoke_optional=[("--shapes", "13x64x64"), ("--n", "64"), ("--batch-size", "16"), ("--batches", "1"),
                         ("--repeats", "1"), ("--workers", "1"), ("--shard-size", "0"), ("--json", JSON)],
         missing_ok=True, summarize=_summary_loader),
    Step("pretrain", "samples/s of ssl-rs pretrain (MoCo v2 + GeoRank, ResNet-18, 120 px, bf16-mixed) vs the bare step",
         150, "benchmarks/bench_pretrain_throughput.py", args=["--device", "cuda", "--json", JSON],
         smoke_args=["--device", "cpu", "--tiny", "--json", JSON], summarize=_summary_pretrain, measured_target=True),
)


# ----------------------------------------------------------------------------- helpers
def markdown_tables(text: str) -> List[List[Dict[str, str]]]:
    """The Markdown tables in ``text``, each a list of {header: cell} rows."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            block.append([c.strip() for c in line[1:-1].split("|")])
            continue
        if len(block) >= 2 and set("".join(block[1])) <= set("-: "):
            header = block[0]
            tables.append([dict(zip(header, row)) for row in block[2:]])
        block = []
    return tables


def flag_listed(flag: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def script_help(script: str, args: Sequence[str] = ()) -> Tuple[bool, str]:
    """(``script ARGS --help`` exited 0, its output). argparse acts on ``--help`` when it reaches
    it, after the arguments before it were converted and checked against their choices (unknown
    flags it would refuse only at the end, which :func:`flag_listed` covers)."""
    try:
        proc = subprocess.run([sys.executable, str(REPO / script), *args, "--help"], cwd=REPO, capture_output=True,
                              text=True, errors="replace", timeout=120)
    except subprocess.TimeoutExpired:
        return False, "--help did not finish in 120 s"
    return proc.returncode == 0, proc.stdout + proc.stderr


@dataclass
class Planned:
    step: Step
    command: List[str]
    env: Dict[str, str]
    budget_s: float
    notes: List[str]
    problem: Optional[str] = None  # the step cannot run as planned (dry run: an error)
    skip: Optional[str] = None  # the step is skipped, with this reason
    smoke: bool = False  # planned for a smoke run (toy size, CPU)


def plan(step: Step, smoke: bool, budget_scale: float, out: Path, probe_help: bool) -> Planned:
    env = dict(os.environ)
    notes: List[str] = []
    budget = step.budget_s * budget_scale
    json_path = str(out / f"{step.name}.json")
    if step.script is None:  # the CUDA tests
        files = cuda_test_files()
        # the real run on the GPU whatever the caller's shell says; the smoke run on the CPU
        env.pop(TEST_DEVICE_VARIABLE, None)
        if smoke:
            env[TEST_DEVICE_VARIABLE] = "cpu"
        # -v: a line per test, so that a run stopped by its budget still says what passed
        command = [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", "-m", "cuda",
                   *(step.smoke_args if smoke else step.args), *files]
        planned = Planned(step, command, env, budget, notes, smoke=smoke)
        if not files:
            planned.problem = "no test file marks a test cuda (@pytest.mark.cuda)"
        return planned
    args = step.smoke_args if smoke else step.args
    command = [sys.executable, step.script] + [a.replace(JSON, json_path) for a in args]
    planned = Planned(step, command, env, budget, notes, smoke=smoke)
    if not (REPO / step.script).is_file():
        if step.missing_ok:
            planned.skip = f"{step.script} does not exist yet"
        else:
            planned.problem = f"{step.script} not found"
        return planned
    optional = step.smoke_optional if smoke else step.optional
    if optional or probe_help:
        # one call checks the given arguments' values and returns the help that lists the flags
        ok, text = script_help(step.script, command[2:])
        if not ok:
            planned.problem = f"{step.script} refuses its arguments: {(text.strip().splitlines() or ['?'])[-1]}"
            return planned
        given = len(command)
        for flag in optional:
            if flag_listed(flag[0], text):
                command += [a.replace(JSON, json_path) for a in flag]
            else:
                notes.append(f"takes no {flag[0]} (yet): run without it")
        for arg in command[2:]:
            if arg.startswith("--") and not flag_listed(arg.split("=")[0], text):
                planned.problem = f"{step.script} does not take {arg}"
                return planned
        if probe_help and len(command) > given:  # the optional flags' values too
            ok, text = script_help(step.script, command[2:])
            if not ok:
                planned.problem = f"{step.script} refuses its arguments: {(text.strip().splitlines() or ['?'])[-1]}"
    return planned


def probe_cuda() -> Dict[str, Any]:
    code = ("import json, torch; c = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
            "'cuda': c, 'device': torch.cuda.get_device_name() if c else None}))")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except Exception as e:  # no torch, a broken CUDA install: said in the report, never hidden
        return {"torch": None, "cuda": False, "device": None, "error": f"{type(e).__name__}: {e}"}


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + (" (with uncommitted changes)" if dirty else "")) if head else "unknown"


def _stop(proc: subprocess.Popen) -> None:
    """End the step's process group (its DataLoader workers and pytest's children too): SIGTERM,
    then SIGKILL after the grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(p: Planned, cuda: bool, out: Path) -> Dict[str, Any]:
    from ssl_rs.files import write_text

    step = p.step
    row: Dict[str, Any] = {"step": step.name, "what": step.what, "budget_s": round(p.budget_s, 1),
                           "command": " ".join(p.command), "notes": p.notes}
    if p.skip or p.problem:
        row.update(status="skipped" if p.skip else "failed", seconds=0.0, summary=p.skip or p.problem, target="")
        return row
    json_path = out / f"{step.name}.json"
    start = time.perf_counter()
    proc = subprocess.Popen(p.command, cwd=REPO, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=p.budget_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(proc)
        output, _ = proc.communicate()
    except BaseException:  # Ctrl-C: the step goes down with the check
        _stop(proc)
        raise
    seconds = time.perf_counter() - start
    log = out / f"{step.name}.log"
    write_text(log, f"$ {row['command']}\n{output}", announce=False)
    data = None
    if json_path.is_file():
        try:
            data = json.loads(json_path.read_text())
        except ValueError:
            data = None
    status, summary, target = (step.summarize or (lambda *a: (None, "", "")))(output, data, cuda)
    if p.smoke and step.measured_target and target:  # ">= 90%: missed" of a toy run would read as a result
        target = f"{target.split(':')[0]}: not graded in a smoke run"
    if timed_out:
        so_far = f" ({summary} by then)" if step.script is None and summary else ""  # pytest's lines so far
        status, summary = "timeout", f"stopped after its budget of {p.budget_s:.0f} s{so_far}"
    elif proc.returncode != 0 and status is None:  # a summary that found the failure keeps its words
        last = (output.strip().splitlines() or [""])[-1][:200]
        status, summary = "failed", f"exit status {proc.returncode}: {last}"
    row.update(status=status or "ok", seconds=round(seconds, 1), summary=summary, target=target, log=log.name,
               exit_status=proc.returncode, tables=markdown_tables(output))
    if data is not None:
        row["result"] = data
    return row


def table(rows: List[Dict[str, Any]]) -> str:
    from ssl_rs.text import markdown_table

    shown = [{"step": r["step"], "status": r["status"], "seconds / budget": f"{r['seconds']:.0f} / {r['budget_s']:.0f}",
              "result": r["summary"], "target": r.get("target", "")} for r in rows]
    return markdown_table(shown, ["step", "status", "seconds / budget", "result", "target"])


# ----------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="results folder (default bench_out/gpu_check/<UTC time>)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and check every script and flag; run nothing, write nothing")
    parser.add_argument("--smoke", action="store_true",
                        help="run every step at toy size on the CPU (checks this driver; measures nothing)")
    parser.add_argument("--only", help="comma-separated steps to run: " + ", ".join(s.name for s in STEPS))
    parser.add_argument("--skip", help="comma-separated steps not to run")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every step's time budget")
    args = parser.parse_args(argv)
    names = {s.name for s in STEPS}
    for option in ("only", "skip"):
        unknown = sorted(set(filter(None, (getattr(args, option) or "").split(","))) - names)
        if unknown:
            parser.error(f"--{option}: unknown step {unknown[0]!r} (steps: {', '.join(s.name for s in STEPS)})")
    if args.budget_scale <= 0:
        parser.error("--budget-scale must be positive")
    return args


def selected_steps(args: argparse.Namespace) -> List[Step]:
    only = set(filter(None, (args.only or "").split(",")))
    skip = set(filter(None, (args.skip or "").split(",")))
    return [s for s in STEPS if (not only or s.name in only) and s.name not in skip]


def dry_run(args: argparse.Namespace, out: Path) -> int:
    steps = selected_steps(args)
    env = probe_cuda()
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:  # each --help imports torch: in parallel
        plans = list(pool.map(lambda s: plan(s, args.smoke, args.budget_scale, out, probe_help=True), steps))
        collected = pool.submit(_collect_cuda_tests, next((p for p in plans if p.step.script is None), None))
        tests = collected.result()
    total = sum(p.budget_s for p in plans)
    print(f"GPU check plan ({'smoke, CPU' if args.smoke else 'GPU'}), dry run: nothing is run. "
          f"torch {env.get('torch')}, "
          f"CUDA here: {env.get('device') or 'none'}; results would go to {out}")
    print()
    rows = []
    for p in plans:
        check = p.problem or p.skip or "; ".join(["script and flags ok"] + p.notes)
        if p.step.script is None:
            check = p.problem or (f"{len(tests)} CUDA tests collected (below)" if tests else "no CUDA test collected")
        status = "PROBLEM" if p.problem else ("skip" if p.skip else "ready")
        command = " ".join(["python" if c == sys.executable else c for c in p.command])
        rows.append({"step": p.step.name, "budget s": f"{p.budget_s:.0f}", "plan": status, "command": command,
                     "check": check})
    from ssl_rs.text import markdown_table

    print(markdown_table(rows, ["step", "budget s", "plan", "command", "check"]))
    if tests:
        print()
        print("CUDA tests: " + " ".join(tests))
    print()
    print(f"total budget {total:.0f} s of {LIMIT_S} s")
    problems = [f"{p.step.name}: {p.problem}" for p in plans if p.problem]
    if any(p.step.script is None and not p.problem for p in plans) and not tests:
        problems.append("cuda-tests: no CUDA test collected")
    if total > LIMIT_S:
        problems.append(f"the budgets add up to {total:.0f} s, more than {LIMIT_S} s")
    for problem in problems:
        print(f"problem: {problem}")
    return 1 if problems else 0


def _collect_cuda_tests(p: Optional[Planned]) -> List[str]:
    if p is None or p.problem:
        return []
    command = p.command[:3] + ["--collect-only", "-q"] + p.command[4:]
    proc = subprocess.run(command, cwd=REPO, env=p.env, capture_output=True, text=True, timeout=300)
    return [line.strip() for line in proc.stdout.splitlines() if "::" in line]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))  # ssl_rs, also when it is not installed
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "bench_out" / "gpu_check" / stamp
    if args.dry_run:
        return dry_run(args, out)
    from ssl_rs.files import write_text

    env = probe_cuda()
    if not env.get("cuda") and not args.smoke:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False"
              + (f"; {env['error']}" if env.get("error") else "")
              + "): --dry-run shows the plan, --smoke runs it at toy size on the CPU", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    steps = selected_steps(args)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(f"GPU check{' (smoke, CPU)' if args.smoke else ''}: {len(steps)} step{'s' if len(steps) != 1 else ''}, "
          f"torch {env.get('torch')}, "
          f"device {env.get('device') or 'cpu'}; results in {out}", flush=True)
    rows = []
    t0 = time.perf_counter()
    for i, step in enumerate(steps, 1):
        p = plan(step, args.smoke, args.budget_scale, out, probe_help=False)
        print(f"[{i}/{len(steps)}] {step.name} (budget {p.budget_s:.0f} s) ...", end=" ", flush=True)
        row = run_step(p, bool(env.get("cuda")), out)
        rows.append(row)
        print(f"{row['status']} in {row['seconds']:.0f} s: {row['summary']}", flush=True)
    total = time.perf_counter() - t0
    summary = table(rows)
    head = (f"GPU check{' (smoke run on the CPU: toy sizes, not measurements)' if args.smoke else ''}, "
            f"{started}, commit {git_commit()}, {env.get('device') or 'cpu'}, torch {env.get('torch')}, "
            f"{platform.node()}; {total:.0f} s in all")
    result = {"started": started, "seconds": round(total, 1), "commit": git_commit(), "host": platform.node(),
              "torch": env.get("torch"), "device": env.get("device"), "smoke": args.smoke, "steps": rows}
    write_text(out / "results.json", json.dumps(result, indent=2) + "\n", announce=False)
    write_text(out / "results.md", f"# GPU check\n\n{head}\n\n{summary}\n\nCommands and logs: results.json, "
               "<step>.log\n", announce=False)
    print()
    print(head)
    print()
    print(summary)
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.md'}, <step>.log")
    return 1 if any(r["status"] in ("failed", "timeout") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
