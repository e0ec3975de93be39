"""Samples per second of GeoDataset + DataLoader against plain h5py reads of the same samples.

    python benchmarks/bench_loader.py                          # 13x64x64 and 12x120x120, synthesised
    python benchmarks/bench_loader.py --workers 1 2 8 --repeats 7
    python benchmarks/bench_loader.py --data eurosat.h5 ssl4eo_shards/   # real files or sharded folders, read in place

For each dataset, in one process and interleaved (so that the machine's load hits every reader
alike), each repetition times, on the same random batches of ``--batch-size`` samples:

* ``h5py``: plain h5py, one ``images[i]`` per sample (the baseline: I/O and nothing else);
* ``GeoDataset, item by item``: ``default_collate([ds[i] for i in batch])``, what a DataLoader
  did before batched reads (and still does for a dataset with ``transforms=``);
* ``GeoDataset + DataLoader, in-process``: ``DataLoader(ds, batch_size=B, num_workers=0)``, which
  calls ``ds.__getitems__`` once per batch: the per-process throughput of the loader;
* ``DataLoader, torch's hand-over, W workers``: a standard DataLoader with W worker processes
  (torch moves each batch through a new shared-memory segment), and ``make_loader: batch ring, W
  workers``: :func:`ssl_rs.data.loader.make_loader`, whose workers read into a ring of
  preallocated shared buffers; both after the first batch (worker start-up excluded), total
  samples/s, and "per process" = total / W;
* ``torch's hand-over only``: one worker whose batches read nothing, so the row is what torch's
  shared-memory hand-over of a batch costs alone.

In every DataLoader row the main process (the consumer) reads one value per 4 KiB page of each
image batch (``--no-touch``: nothing), as a copy to the GPU would touch every page; "main CPU
ms/batch" is the main process's CPU time (all its threads, workers excluded) per batch received:
what the loader takes from the process that drives the GPU.

Each row is the median over the repetitions; "vs h5py" is the median of the per-repetition
ratios of the per-process rate to the h5py baseline timed next to it, "spread" their range. Synthesised data is written with H5Writer (random
uint16 images, lat/lon, labels), as one file and, with ``--shard-size``, as a sharded folder too.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import h5py  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler, default_collate  # noqa: E402

from ssl_rs.data.converters.parallel import ConversionPlan, write_file, write_shards  # noqa: E402
from ssl_rs.data.dataset import GeoDataset  # noqa: E402
from ssl_rs.data.loader import RingGeoDataset, make_loader  # noqa: E402

SHAPES = {"13x64x64": (13, 64, 64), "12x120x120": (12, 120, 120)}
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def _synth_items(item, context):
    """``ConversionPlan.read`` of the synthetic data: item = sample number (must be module-level)."""
    rng = np.random.default_rng(item)
    c, h, w = context["shape"]
    image = rng.integers(0, 10_000, (c, h, w), dtype=np.uint16)
    yield image, dict(lat=float(rng.uniform(-60, 60)), lon=float(rng.uniform(-180, 180)), label=int(item % 10))


def synthesise(folder: Path, name: str, shape, n: int, shard_size: int | None) -> List[Path]:
    bands = BANDS[: shape[0]] if shape[0] <= len(BANDS) else [f"B{i}" for i in range(shape[0])]
    plan = ConversionPlan(
        name=f"synth {name}", items=list(range(n)), read=_synth_items,
        writer=dict(bands=bands, size=shape[1:], gsd=10.0, source="bench_loader.py: random uint16",
                    class_names=[f"c{i}" for i in range(10)]),
        context={"shape": shape})
    paths = [write_file(plan, folder / f"{name}.h5", progress=False)]
    if shard_size:
        paths.append(write_shards(plan, folder / f"{name}_shards", shard_size=shard_size, workers=1, progress=False))
    return paths


def _batches(n: int, batch: int, count: int, seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(n, size=batch, replace=False) for _ in range(count)]


def time_h5py(path: Path, batches: Sequence[np.ndarray]) -> float:
    """Plain h5py: one ``images[i]`` per sample, files opened once (a folder's shards all at once)."""
    if path.is_file():
        files = [h5py.File(path, "r")]
    else:
        from ssl_rs.data.shards import read_index

        index = read_index(path)
        files = [h5py.File(p, "r") for p in index.paths]
    try:
        images = [f["images"] for f in files]
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in images])])
        start = time.perf_counter()
        for b in batches:
            for i in b.tolist():
                part = int(np.searchsorted(offsets, i, side="right")) - 1 if len(images) > 1 else 0
                images[part][i - int(offsets[part])]
        return sum(len(b) for b in batches) / (time.perf_counter() - start)
    finally:
        for f in files:
            f.close()


def time_items(ds: GeoDataset, batches: Sequence[np.ndarray]) -> float:
    start = time.perf_counter()
    for b in batches:
        default_collate([ds[i] for i in b.tolist()])
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


class _Fixed(torch.utils.data.Sampler):
    def __init__(self, batches):
        self.order = np.concatenate(batches).tolist()

    def __iter__(self):
        return iter(self.order)

    def __len__(self):
        return len(self.order)


def _touch(batch) -> None:
    """What the consumer does with a batch here: read one value per 4 KiB page of the image (a copy
    to the GPU reads every page; this pays the page faults of a fresh mapping, not the copy)."""
    batch["image"].view(-1)[::2048].sum()


def time_loader(ds, batches: Sequence[np.ndarray], workers: int, ring: bool = False, prefetch: int = 2,
                touch: bool = True) -> Tuple[float, float]:
    """(samples/s, main-process CPU ms per batch) of a DataLoader; with workers, from the first batch
    on (start-up excluded). ``ring``: :func:`make_loader`'s batch ring, else torch's hand-over."""
    batch = len(batches[0])
    if workers == 0:
        loader = DataLoader(ds, batch_size=batch, sampler=_Fixed(batches), num_workers=0)
        cpu, start = _cpu(), time.perf_counter()
        for b in loader:
            if touch:
                _touch(b)
            del b  # as the worker rows do: a consumer that keeps the last batch makes each read map fresh memory
        return sum(len(b) for b in batches) / (time.perf_counter() - start), 1e3 * (_cpu() - cpu) / len(batches)
    sampler = RandomSampler(ds, replacement=True, num_samples=batch * (4 * workers + 8),
                            generator=torch.Generator().manual_seed(0))
    loader = make_loader(ds, ring=ring, batch_size=batch, sampler=sampler, num_workers=workers,
                         prefetch_factor=prefetch, multiprocessing_context="fork")
    it = iter(loader)
    next(it)  # workers started, first batch in
    cpu, start, n, count = _cpu(), time.perf_counter(), 0, 0
    for b in it:
        n += len(b["image"])
        count += 1
        if touch:
            _touch(b)
        del b
    rate, per_batch = n / (time.perf_counter() - start), 1e3 * (_cpu() - cpu) / count
    overflows = loader.dataset.ring.overflows if isinstance(loader.dataset, RingGeoDataset) else 0
    if overflows:
        raise RuntimeError(f"bench_loader: {overflows} batches overflowed the ring (the benchmark holds none)")
    return rate, per_batch


def _cpu() -> float:
    """CPU seconds of this process (all its threads: the pin-memory thread too), workers excluded."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _TransportOnly(torch.utils.data.Dataset):
    """Batches of the right shape that read nothing: what moving a batch from a worker to the main
    process costs by itself (torch's shared-memory transport), the ceiling of any worker-based loader."""

    def __init__(self, ds: GeoDataset):
        self.n, self.shape = len(ds), (len(ds.bands),) + tuple(ds.size)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # pragma: no cover - the loader calls __getitems__
        raise NotImplementedError

    def __getitems__(self, positions):
        from ssl_rs.data.dataset import _empty, batch_rows

        return batch_rows({"image": _empty((len(positions),) + self.shape, shared=True)})


def measure(path: Path, batch: int, n_batches: int, repeats: int, workers: Sequence[int], prefetch: int = 2,
            touch: bool = True) -> List[Dict]:
    ds = GeoDataset(path)
    c, (h, w) = len(ds.bands), ds.size
    rows: Dict[str, Dict] = {}

    def add(reader: str, w_: str, rate: float, base: float, per_process: float, cpu: float | None = None) -> None:
        row = rows.setdefault(reader, {"reader": reader, "workers": w_, "rates": [], "ratios": [], "per": [],
                                       "cpu": []})
        row["rates"].append(rate)
        row["ratios"].append(per_process / base)
        row["per"].append(per_process)
        if cpu is not None:
            row["cpu"].append(cpu)

    time_loader(ds, _batches(len(ds), batch, 1, 99), 0)  # warm the page cache and the handle
    for rep in range(repeats):
        batches = _batches(len(ds), batch, n_batches, rep)
        base = time_h5py(path, batches)
        add("h5py, one `images[i]` per sample", "-", base, base, base)
        rate = time_items(ds, batches)
        add("GeoDataset, item by item + default_collate", "0", rate, base, rate)
        rate, cpu = time_loader(ds, batches, 0, touch=touch)
        add("GeoDataset + DataLoader (batched `__getitems__`)", "0 (in-process)", rate, base, rate, cpu)
        for w_ in workers:
            plural = "s" if w_ > 1 else ""
            rate, cpu = time_loader(ds, batches, w_, ring=False, prefetch=prefetch, touch=touch)
            ring_rate, ring_cpu = time_loader(ds, batches, w_, ring=True, prefetch=prefetch, touch=touch)
            base = (base + time_h5py(path, batches)) / 2  # the load may have changed meanwhile
            add(f"DataLoader, torch's hand-over, {w_} worker{plural}", str(w_), rate, base, rate / w_, cpu)
            add(f"`make_loader`: batch ring, {w_} worker{plural}", str(w_), ring_rate, base, ring_rate / w_, ring_cpu)
        rate, cpu = time_loader(_TransportOnly(ds), batches, 1, prefetch=prefetch, touch=touch)
        add("torch's hand-over only (1 worker, batches that read nothing)", "1", rate, base, rate, cpu)
    out = []
    for row in rows.values():
        cpu = row["cpu"]
        out.append({"data": f"{path.name} ({c}x{h}x{w})", "reader": row["reader"], "workers": row["workers"],
                    "samples/s": f"{statistics.median(row['rates']):,.0f}",
                    "per process": f"{statistics.median(row['per']):,.0f}",
                    "vs h5py": f"{statistics.median(row['ratios']):.2f}x",
                    "spread": f"{min(row['ratios']):.2f}-{max(row['ratios']):.2f}x",
                    "main CPU ms/batch": f"{statistics.median(cpu):.1f}" if cpu else "-"})
    return out


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="*", default=[], help="ssl-rs HDF5 files or sharded folders, read in place "
                        "(default: synthesise --shapes)")
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--n", type=int, default=2048, help="samples per synthesised dataset (default 2048)")
    parser.add_argument("--shard-size", type=int, default=512, help="also write the synthesised data as shards of "
                        "this size (0: no sharded copy; default 512)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4, help="batches per timing (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions; medians are reported")
    parser.add_argument("--workers", type=int, nargs="*", default=None,
                        help="DataLoader worker counts (default: 1, 2 and the number of CPUs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--prefetch-factor", type=int, default=2, help="DataLoader prefetch_factor (default 2)")
    parser.add_argument("--sharing-strategy", choices=sorted(torch.multiprocessing.get_all_sharing_strategies()),
                        help="torch.multiprocessing sharing strategy (default: torch's, file_descriptor on Linux)")
    parser.add_argument("--no-touch", action="store_true", help="the main process does not read the image batches")
    parser.add_argument("--keep", help="write the synthesised data to this folder and keep it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.sharing_strategy:
        torch.multiprocessing.set_sharing_strategy(args.sharing_strategy)
    workers = args.workers if args.workers is not None else sorted({1, 2, os.cpu_count() or 1})
    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_loader_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        paths = [Path(p) for p in args.data]
        if not paths:
            for name in args.shapes:
                paths += synthesise(scratch, name, SHAPES[name], args.n, args.shard_size)
        rows = []
        for path in paths:
            rows += measure(path, args.batch_size, args.batches, args.repeats, workers, args.prefetch_factor,
                        not args.no_touch)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    columns = ["data", "reader", "workers", "samples/s", "per process", "vs h5py", "spread", "main CPU ms/batch"]
    print(f"batch {args.batch_size}, {args.batches} batches per timing, median of {args.repeats} interleaved "
          f"repetitions, {os.cpu_count()} CPUs, torch threads {args.threads}, prefetch_factor {args.prefetch_factor}, "
          f"sharing strategy {torch.multiprocessing.get_sharing_strategy()}, "
          f"consumer {'idle' if args.no_touch else 'reads one value per 4 KiB page'}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if c in ("data", "reader") else "---:" for c in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
