"""Running a conversion: into one HDF5 file, or into a folder of shards by several processes.

A converter describes its work as a :class:`ConversionPlan`: the input items in order (files,
folders, grid cells), a top-level ``read(item, context)`` that yields ``(image, columns)`` for the
samples of one item, and the :class:`~ssl_rs.data.writer.H5Writer` arguments. The plan is then
written by :func:`write_file` (one file, in this process) or :func:`write_shards` (a sharded
dataset, :mod:`ssl_rs.data.shards`).

Sharding: consecutive items are grouped into tasks of at most ``shard_size`` samples (by the
plan's per-item sample counts; an item is never split), each task is one shard, written by one
process with its own :class:`H5Writer` (atomic, its statistics from its own reservoir, seeded by
the shard number). Which shard holds which sample therefore depends on the inputs and
``shard_size`` only, never on ``workers``; so do the shards' contents and the index. Memory per
process is bounded by one shard (its per-sample columns and the writer's bounded pixel reservoir)
whatever the input size; the main process keeps the list of inputs and a bounded pixel sample for
the index's percentiles (:class:`~ssl_rs.data.shards.StatsMerger`).

Workers are ``spawn`` ed processes (no inherited HDF5 or GDAL state), each taking the next shard
from a queue; they ignore Ctrl-C, which the main process handles: on an error (a worker's
:class:`~ssl_rs.errors.DataError` is raised in the main process as it was raised there), a
worker's death or an interruption, it stops the workers and removes the part folder, so nothing
is left at the output. A single progress bar counts the samples of all workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import ConfigError, DataError
from ...progress import Progress
from ..columns import COLUMNS, SPLIT_CODES
from ..shards import ShardedOutput, ShardIndex, StatsMerger, shard_name
from ..writer import H5Writer

REPORT_EVERY_S = 0.2  # how often a worker sends its progress to the main process
#: a shard writer's pixel reservoir per band (its own percentiles, and its share of the index's):
#: spread over all the shard's samples, and small enough that finishing a shard stays cheap
SHARD_RESERVOIR_PIXELS = 262_144


@dataclass(frozen=True)
class ConversionPlan:
    """What a converter will write (see the module docstring).

    ``read(item, context)`` must be a module-level function (workers receive it by name) and
    yield ``(image, columns)``: ``image`` (C, H, W) in the writer's band order, ``columns`` the
    keywords of :meth:`H5Writer.append` (``lat``, ``lon``, ``label`` ...). ``samples[i]`` is the
    most samples item ``i`` yields (default 1 each); shards and the progress total use it."""

    name: str
    items: Sequence[Any]
    read: Callable[[Any, Dict[str, Any]], Iterable[Tuple[np.ndarray, Dict[str, Any]]]]
    writer: Dict[str, Any]
    context: Dict[str, Any] = field(default_factory=dict)
    samples: Optional[Sequence[int]] = None
    unit: str = "sample"

    def counts(self) -> np.ndarray:
        if self.samples is None:
            return np.ones(len(self.items), np.int64)
        return np.asarray(self.samples, np.int64)


def write_file(plan: ConversionPlan, out: str | os.PathLike, *, progress: bool = True) -> Path:
    """Write the whole plan into one HDF5 file, atomically, in this process."""
    counts = plan.counts()
    with H5Writer(out, **plan.writer) as writer, \
            Progress(int(counts.sum()), plan.name, plan.unit, enabled=progress) as bar:
        for item, count in zip(plan.items, counts.tolist()):
            for image, columns in plan.read(item, plan.context):
                writer.append(image, **columns)
            bar.update(count)
    return Path(out)


def shard_tasks(counts: Sequence[int], shard_size: int) -> List[Tuple[int, int]]:
    """``[start, stop)`` item ranges of the shards: consecutive items, at most ``shard_size``
    samples each (an item holding more is a shard of its own)."""
    tasks, start, total = [], 0, 0
    for i, count in enumerate(counts):
        if i > start and total + count > shard_size:
            tasks.append((start, i))
            start, total = i, 0
        total += count
    if start < len(counts):
        tasks.append((start, len(counts)))
    return tasks


@dataclass
class _Task:
    number: int
    path: Path
    items: Sequence[Any]
    counts: List[int]
    read: Callable
    writer: Dict[str, Any]
    context: Dict[str, Any]


@dataclass
class _ShardResult:
    number: int
    name: str
    n: int
    columns: List[str]
    splits: Dict[str, Dict[str, int]]
    stats: Tuple[np.ndarray, np.ndarray, int, np.ndarray]


class _Empty(Exception):
    """A shard whose items yielded no sample (e.g. every patch too cloudy): no file."""


_progress_queue: Any = None  # the worker's end of the progress queue (set by _worker)


def _write_shard(task: _Task, report: Optional[Callable[[int], None]] = None) -> Optional[_ShardResult]:
    """Write one shard; ``report(n)`` (or the progress queue) hears of the samples done."""
    send = report or _queue_report
    pending, last = 0, time.monotonic()
    per_sample = max(16, SHARD_RESERVOIR_PIXELS // max(1, sum(task.counts)))
    writer = H5Writer(task.path, seed=task.number, stats_pixels=SHARD_RESERVOIR_PIXELS,
                      stats_sample_pixels=per_sample, **task.writer)
    try:
        with writer:
            for item, count in zip(task.items, task.counts):
                for image, columns in task.read(item, task.context):
                    writer.append(image, **columns)
                pending += count
                if time.monotonic() - last >= REPORT_EVERY_S or report is not None:
                    send(pending)
                    pending, last = 0, time.monotonic()
            if writer.n == 0:
                raise _Empty
    except _Empty:
        send(pending)
        return None
    send(pending)
    import h5py

    with h5py.File(task.path, "r") as f:
        columns = [c.key for c in COLUMNS if c.key in f]  # in the table's order
        splits = {scheme: {name: int((ds[()] == i).sum()) for i, name in enumerate(SPLIT_CODES)}
                  for scheme, ds in f.get("splits", {}).items()}
    return _ShardResult(task.number, task.path.name, writer.n, columns, splits, writer.stats_sample())


def _queue_report(n: int) -> None:
    if n and _progress_queue is not None:
        _progress_queue.put(n)


def write_shards(plan: ConversionPlan, folder: str | os.PathLike, *, shard_size: int, workers: int = 1,
                 progress: bool = True) -> Path:
    """Write the plan as a sharded dataset at ``folder`` (atomically: see
    :class:`~ssl_rs.data.shards.ShardedOutput`) with ``workers`` processes."""
    shard_size, workers = check_sharding(shard_size, workers)
    folder = Path(folder)
    counts = plan.counts()
    ranges = shard_tasks(counts.tolist(), shard_size)
    channels = len(plan.writer["bands"])
    merger = StatsMerger(channels)
    results: Dict[int, _ShardResult] = {}
    with ShardedOutput(folder) as output, \
            Progress(int(counts.sum()), plan.name, plan.unit, enabled=progress) as bar:
        tasks = (_Task(number, output.part / shard_name(number), plan.items[start:stop], counts[start:stop].tolist(),
                       plan.read, plan.writer, plan.context) for number, (start, stop) in enumerate(ranges))

        def collect(result: Optional[_ShardResult]) -> None:
            if result is not None:
                merger.add(result.number, *result.stats)
                result.stats = None  # the pixels are merged: do not keep them
                results[result.number] = result

        if workers == 1 or len(ranges) == 1:
            for task in tasks:
                collect(_write_shard(task, report=bar.update))
        else:
            _run_pool(tasks, min(workers, len(ranges)), bar, collect)
        index = _index(folder, plan, [results[k] for k in sorted(results)], merger)
        output.commit(index)
    return folder


def _worker(tasks, results, progress_queue) -> None:
    """A worker process: write the shards of the tasks it takes, until a None."""
    global _progress_queue
    _progress_queue = progress_queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and stops us
    while True:
        task = tasks.get()
        if task is None:
            return
        try:
            results.put(("done", _write_shard(task)))
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the main process
            results.put(("error", _portable(e)))
            return


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (DataError does), else a DataError with its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001
        return DataError(f"{type(error).__name__}: {error}".splitlines()[0])


def _run_pool(tasks: Iterable[_Task], workers: int, bar: Progress, collect: Callable) -> None:
    """Run the tasks on ``workers`` spawned processes (a clean interpreter each: no HDF5 or GDAL
    state crosses a fork). A worker that fails or dies stops the others at once."""
    ctx = mp.get_context("spawn")
    task_queue, results, progress_queue = ctx.Queue(), ctx.Queue(), ctx.Queue()
    tasks = list(tasks)
    for task in tasks:
        task_queue.put(task)
    for _ in range(workers):
        task_queue.put(None)
    processes = [ctx.Process(target=_worker, args=(task_queue, results, progress_queue), daemon=True)
                 for _ in range(workers)]
    try:
        for process in processes:
            process.start()
        waiting = len(tasks)
        while waiting:
            _drain(progress_queue, bar)
            try:
                kind, payload = results.get(timeout=0.1)
            except queue_module.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise DataError(
                        f"a conversion worker process exited with code {dead[0].exitcode} before finishing its shards "
                        "(when converting from a Python script, guard its code with `if __name__ == '__main__':`; "
                        "workers are spawned and import the script)")
                continue
            if kind == "error":
                raise payload
            collect(payload)
            waiting -= 1
        _drain(progress_queue, bar)
        for process in processes:
            process.join()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # after an error or an interruption: the workers stop now
        for process in processes:
            if process.pid is not None:
                process.join()
        for q in (task_queue, results, progress_queue):
            q.cancel_join_thread()  # nothing left in them is needed
            q.close()


def _drain(progress_queue, bar: Progress) -> None:
    while True:
        try:
            bar.update(progress_queue.get_nowait())
        except queue_module.Empty:
            return


def _index(folder: Path, plan: ConversionPlan, results: List[_ShardResult], merger: StatsMerger) -> ShardIndex:
    if not results:
        raise DataError(f"{folder}: images: no samples were written")
    first = results[0]
    for result in results[1:]:
        if result.columns != first.columns:
            odd = sorted(set(result.columns).symmetric_difference(first.columns))[0]
            raise DataError(f"{folder / result.name}: {odd}: present in only some shards "
                            f"({first.name} {'has' if odd in first.columns else 'lacks'} it)")
    splits: Dict[str, Dict[str, int]] = {}
    for result in results:
        for scheme, counts in result.splits.items():
            total = splits.setdefault(scheme, dict.fromkeys(SPLIT_CODES, 0))
            for name, count in counts.items():
                total[name] += count
    writer = plan.writer
    return ShardIndex(
        folder=folder,
        shards=[(r.name, r.n) for r in results],
        bands=list(writer["bands"]),
        size=(int(writer["size"][0]), int(writer["size"][1])),
        gsd=float(writer["gsd"]),
        source=writer.get("source"),
        class_names=list(writer.get("class_names") or []),
        columns=list(first.columns),
        stats=merger.result(),
        splits=splits,
        default_split=sorted(splits)[0] if len(splits) == 1 else None,
        attrs=_json_ready(writer.get("attrs") or {}),
    )


def _json_ready(attrs: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        out[key] = value
    return out


def check_sharding(shard_size: Any, workers: Any) -> Tuple[int, int]:
    """``(shard_size, workers)`` as positive integers, else a one-line ConfigError."""
    checked = []
    for flag, value in (("--shard-size", shard_size), ("--workers", workers)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{flag}: must be a whole number >= 1, got {value!r}")
        checked.append(int(value))
    return checked[0], checked[1]
