"""Sharded datasets: a folder of ssl-rs HDF5 files with one index, read as one logical dataset.

One HDF5 file written by one process does not carry SSL4EO-sized data (a million places x 4
seasons x 13 bands x 264 px), so a dataset may also be a folder (``docs/data_format.md``,
"Sharded datasets")::

    FOLDER/index.json          what makes the folder one dataset; written last
    FOLDER/shard-00000.h5      each a complete, valid ssl-rs HDF5 file
    FOLDER/shard-00001.h5 ...

Sample ``i`` of the logical dataset is row ``i - offset[s]`` of the shard ``s`` whose rows cover
it, shards in the order the index lists them. The index holds what readers need without opening
every shard: the shards and their sample counts, bands, size, gsd, classes, the per-band
statistics over all shards, and the split schemes with their counts (the codes live in each
shard's ``splits/<scheme>``, so each shard stays a valid file on its own).

A sharded dataset is written into a hidden ``.FOLDER.part/`` beside the target
(:class:`ShardedOutput`) and renamed into place only after every shard and then the index are
complete, so a failed or interrupted conversion leaves nothing at ``FOLDER``; a folder without
``index.json`` is refused with one line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import DataError
from ..files import write_text

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
INDEX_FORMAT = "ssl-rs sharded dataset"
INDEX_VERSION = 1
SHARD_NAME = "shard-{:05d}.h5"
LOCK_NAME = ".lock"
#: pixels per band kept, over all shards, for the index's percentile estimates: enough for
#: percentiles to ~0.1% whatever the dataset's size, and a constant bound on the merge's memory
INDEX_STATS_PIXELS = 262_144


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a folder (a sharded dataset, complete or not) rather than a file."""
    return Path(path).is_dir()


@dataclass
class ShardIndex:
    """The parsed ``index.json`` of a sharded dataset (see the module docstring)."""

    folder: Path
    shards: List[Tuple[str, int]]  # (file name in the folder, samples)
    bands: List[str]
    size: Tuple[int, int]
    gsd: Optional[float]
    source: Optional[str]
    class_names: List[str]
    columns: List[str]  # top-level names of the columns every shard has (``splits`` for the group)
    stats: Dict[str, List[float]]  # band_mean, band_std, band_p01, band_p99
    splits: Dict[str, Dict[str, int]] = field(default_factory=dict)  # scheme -> counts per split
    default_split: Optional[str] = None
    attrs: Dict[str, Any] = field(default_factory=dict)  # converter-specific file attributes

    @property
    def n(self) -> int:
        return int(sum(n for _, n in self.shards))

    @property
    def paths(self) -> List[Path]:
        return [self.folder / name for name, _ in self.shards]

    @property
    def offsets(self) -> np.ndarray:
        """(S + 1,) first logical sample of each shard, then the total."""
        return np.concatenate([[0], np.cumsum([n for _, n in self.shards])]).astype(np.int64)

    def to_json(self) -> Dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "format_version": INDEX_VERSION,
            "n": self.n,
            "shards": [{"file": name, "n": int(n)} for name, n in self.shards],
            "bands": list(self.bands),
            "size": [int(s) for s in self.size],
            "gsd": self.gsd,
            "source": self.source,
            "class_names": list(self.class_names),
            "columns": list(self.columns),
            **{key: [float(v) for v in values] for key, values in self.stats.items()},
            "splits": self.splits,
            "default_split": self.default_split,
            "attrs": self.attrs,
        }

    def write(self) -> Path:
        """Write ``index.json`` atomically (the last step of every change to the folder)."""
        # one line per key and one per shard: readable, and diffable when a split is added
        lines = []
        for key, value in self.to_json().items():
            if key == "shards":
                rows = ",\n".join(f"  {json.dumps(entry)}" for entry in value)
                lines.append(f' "shards": [\n{rows}\n ]')
            else:
                lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
        return write_text(self.folder / INDEX_NAME, "{\n" + ",\n".join(lines) + "\n}\n", announce=False)


def _where(folder: Path, key: str) -> str:
    return f"{folder / INDEX_NAME}: {key}"


def read_index(folder: str | os.PathLike) -> ShardIndex:
    """Parse and check ``FOLDER/index.json``; every problem is a one-line :class:`DataError`."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: file not found")
    path = folder / INDEX_NAME
    if not path.is_file():
        shards = sorted(p.name for p in folder.glob("shard-*.h5"))
        if shards or (folder / LOCK_NAME).exists():
            raise DataError(f"{folder}: {INDEX_NAME}: missing, so this is not a complete sharded dataset "
                            f"({len(shards)} shard files but no index: a conversion that did not finish?); "
                            "convert it again")
        raise DataError(f"{folder}: is a directory without {INDEX_NAME}, expected an HDF5 file or an ssl-rs "
                        "sharded dataset")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
        raise DataError(f"{_where(folder, 'format')}: expected {INDEX_FORMAT!r}, found {_shown(raw, 'format')}")
    if raw.get("format_version") != INDEX_VERSION:
        raise DataError(f"{_where(folder, 'format_version')}: expected {INDEX_VERSION}, found "
                        f"{_shown(raw, 'format_version')} (written by another version of ssl-rs?)")
    shards = raw.get("shards")
    if not isinstance(shards, list) or not shards:
        raise DataError(f"{_where(folder, 'shards')}: expected a non-empty list of {{file, n}}")
    parsed = []
    for i, entry in enumerate(shards):
        ok = (isinstance(entry, dict) and isinstance(entry.get("file"), str) and "/" not in entry["file"]
              and isinstance(entry.get("n"), int) and entry["n"] > 0)
        if not ok:
            raise DataError(f"{_where(folder, f'shards[{i}]')}: expected {{file: NAME in the folder, n: samples > 0}}, "
                            f"found {json.dumps(entry)[:80]}")
        parsed.append((entry["file"], int(entry["n"])))
    if raw.get("n") != sum(n for _, n in parsed):
        total = sum(n for _, n in parsed)
        raise DataError(f"{_where(folder, 'n')}: {raw.get('n')} but the shards hold {total} samples")
    bands, size = raw.get("bands"), raw.get("size")
    if not isinstance(bands, list) or not bands or not all(isinstance(b, str) for b in bands):
        raise DataError(f"{_where(folder, 'bands')}: expected a list of band names")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise DataError(f"{_where(folder, 'size')}: expected [height, width] in pixels, found {size!r}")
    stats = {}
    for key in ("band_mean", "band_std", "band_p01", "band_p99"):
        values = raw.get(key)
        if values is None:
            continue
        if not (isinstance(values, list) and len(values) == len(bands)
                and all(isinstance(v, (int, float)) for v in values)):
            raise DataError(f"{_where(folder, key)}: expected {len(bands)} numbers, one per band")
        stats[key] = [float(v) for v in values]
    splits = raw.get("splits") or {}
    if not isinstance(splits, dict):
        raise DataError(f"{_where(folder, 'splits')}: expected an object of split schemes")
    default = raw.get("default_split")
    if default is not None and default not in splits:
        raise DataError(f"{_where(folder, 'default_split')}: {default!r} is not one of its splits {sorted(splits)}")
    return ShardIndex(
        folder=folder, shards=parsed, bands=list(bands), size=(size[0], size[1]),
        gsd=None if raw.get("gsd") is None else float(raw["gsd"]), source=raw.get("source"),
        class_names=list(raw.get("class_names") or []), columns=list(raw.get("columns") or []),
        stats=stats, splits=splits, default_split=default, attrs=dict(raw.get("attrs") or {}),
    )


def _shown(raw: Any, key: str) -> str:
    return repr(raw.get(key)) if isinstance(raw, dict) else f"a JSON {type(raw).__name__}"


def shard_paths(folder: str | os.PathLike) -> List[Path]:
    """The shard files of a sharded dataset, in index order (each checked to exist)."""
    index = read_index(folder)
    for path in index.paths:
        if not path.is_file():
            raise DataError(f"{path}: file not found (listed in {index.folder / INDEX_NAME})")
    return index.paths


# ----------------------------------------------------------------------------- checking, summary
def check_sharded(folder: str | os.PathLike, *, coordinates: bool = True) -> Dict[str, Any]:
    """:func:`~ssl_rs.data.reader.check_file` of a folder: every shard is validated like a file
    and checked against the index (bands, size, samples, columns, split schemes); the summary
    covers all shards (``n``, ranges, class counts, places, splits) and adds ``shards``, the
    number of shard files."""
    from .columns import COLUMNS, IMAGES
    from .reader import attr_list, check_open, describe, open_h5, warn_contents

    index = read_index(folder)
    where = index.folder / INDEX_NAME
    summaries, groups = [], []
    for path in shard_paths(folder):
        count = dict(index.shards)[path.name]
        with open_h5(path) as f:
            check_open(f, path, coordinates=coordinates)
            warn_contents(f, path)
            shape = f[IMAGES.name].shape
            if shape[0] != count:
                raise DataError(f"{path}: images: {shape[0]} samples, but {where} lists {count}")
            if tuple(shape[2:]) != tuple(index.size) or attr_list(f, "bands") != index.bands:
                raise DataError(f"{path}: bands: {shape[1]} bands x {shape[2]}x{shape[3]} px "
                                f"({', '.join(attr_list(f, 'bands') or [])}) differ from the index's "
                                f"{len(index.bands)} x {index.size[0]}x{index.size[1]} px ({', '.join(index.bands)})")
            present = [c.key for c in COLUMNS if c.key in f]
            if index.columns and set(present) != set(index.columns):
                odd = sorted(set(present).symmetric_difference(index.columns))[0]
                state = "present in this shard but not" if odd in present else "missing, but"
                raise DataError(f"{path}: {odd}: {state} listed in {where}")
            missing = sorted(set(index.splits) - set(f.get("splits", {}).keys()))
            if missing:
                raise DataError(f"{path}: splits/{missing[0]}: missing in this shard although {where} lists it "
                                "(an interrupted `ssl-rs data split`? run it again)")
            summaries.append(describe(f))
            for key in ("mask_classes", "mask_nodata"):  # the shards of one dataset share their mask classes
                if summaries[-1].get(key) != summaries[0].get(key):
                    raise DataError(f"{path}: {key}: {summaries[-1].get(key)} differs from the first shard's "
                                    f"{summaries[0].get(key)} (listed in {where})")
            if "group" in f:
                groups.append(np.unique(f["group"][()]))
    return _combined(index, summaries, groups)


def _combined(index: ShardIndex, summaries: List[Dict[str, Any]], groups: List[np.ndarray]) -> Dict[str, Any]:
    """One :func:`~ssl_rs.data.reader.describe` summary from those of the shards."""
    first = summaries[0]
    out: Dict[str, Any] = {
        "file": str(index.folder),
        "n": index.n,
        "shards": len(summaries),
        "bands": list(index.bands),
        "size": [int(s) for s in index.size],
        "gsd": index.gsd,
        "source": index.source,
        "format_version": first["format_version"],
        "classes": list(index.class_names),
    }
    for key in first:
        if key.endswith("_range"):
            lows = [s[key][0] for s in summaries]
            out[key] = [min(lows), max(s[key][1] for s in summaries)]
    if "task" in first:
        out["task"] = first["task"]
    if "class_counts" in first:
        counts: Dict[str, int] = {}
        for summary in summaries:
            for name, count in summary["class_counts"].items():
                counts[name] = counts.get(name, 0) + int(count)
        out["class_counts"] = counts
    if "mask_classes" in first:
        out["mask_classes"], out["mask_nodata"] = first["mask_classes"], first["mask_nodata"]
        pixels: Dict[str, int] = {}
        for summary in summaries:
            for name, count in summary["mask_pixel_counts"].items():
                pixels[name] = pixels.get(name, 0) + int(count)
        out["mask_pixel_counts"] = pixels
        counted = [s["mask_pixels_sampled"] or [s["n"], s["n"]] for s in summaries]
        sampled = any(s["mask_pixels_sampled"] for s in summaries)
        out["mask_pixels_sampled"] = [sum(c for c, _ in counted), sum(t for _, t in counted)] if sampled else None
    out["locations"] = first.get("locations")
    if groups:
        out["groups"] = int(len(np.unique(np.concatenate(groups))))
    splits: Dict[str, Dict[str, int]] = {}
    for scheme in index.splits:  # schemes the index lists: a half-written one is not shown
        splits[scheme] = {}
        for summary in summaries:
            for name, count in summary["splits"][scheme].items():
                splits[scheme][name] = splits[scheme].get(name, 0) + count
    out["splits"] = splits
    out["default_split"] = index.default_split
    out["columns"] = {name: {"dtype": column["dtype"], "shape": [index.n] + column["shape"][1:]}
                      for name, column in first["columns"].items() if name.split("/")[0] != "splits"}
    for scheme in index.splits:
        dtype = first["columns"][f"splits/{scheme}"]["dtype"]
        out["columns"][f"splits/{scheme}"] = {"dtype": dtype, "shape": [index.n]}
    return out


# ----------------------------------------------------------------------------- statistics
class StatsMerger:
    """Per-band mean, std and percentiles over all shards, from what each shard's writer kept.

    Means and standard deviations are exact (pooled sums, added in shard order). Percentiles come
    from a weighted random sample of at most :data:`INDEX_STATS_PIXELS` pixels per band: each
    shard's pixel sample stands for the shard's pixel count (weighted reservoir sampling,
    Efraimidis & Spirakis 2006, with keys drawn from (seed, shard), so the result does not depend
    on the order the shards finish in, nor on the number of workers)."""

    def __init__(self, channels: int, seed: int = 0, budget: int = INDEX_STATS_PIXELS):
        self.channels, self.seed, self.budget = channels, seed, budget
        self._sums: Dict[int, Tuple[np.ndarray, np.ndarray, int]] = {}
        self._keys = np.zeros(0, np.float64)
        self._pixels = np.zeros((channels, 0), np.float32)

    def add(self, shard: int, total: np.ndarray, total_sq: np.ndarray, pixels: int, sample: np.ndarray) -> None:
        self._sums[shard] = (np.asarray(total, np.float64), np.asarray(total_sq, np.float64), int(pixels))
        if sample.shape[1] == 0:
            return
        rng = np.random.default_rng([self.seed, shard])
        weight = pixels / sample.shape[1]
        keys = np.log(rng.random(sample.shape[1])) / weight  # log(u ** (1 / w)): larger keys win
        keys = np.concatenate([self._keys, keys])
        pixels_all = np.concatenate([self._pixels, sample.astype(np.float32)], axis=1)
        if len(keys) > self.budget:
            keep = np.sort(np.argpartition(-keys, self.budget)[:self.budget])
            keys, pixels_all = keys[keep], pixels_all[:, keep]
        self._keys, self._pixels = keys, pixels_all

    def result(self) -> Dict[str, List[float]]:
        order = sorted(self._sums)
        total = sum(self._sums[s][0] for s in order)
        total_sq = sum(self._sums[s][1] for s in order)
        pixels = sum(self._sums[s][2] for s in order)
        mean = total / pixels
        std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 0.0))
        out = {"band_mean": mean.tolist(), "band_std": np.maximum(std, 1e-6).tolist()}
        if self._pixels.shape[1]:
            out["band_p01"] = np.percentile(self._pixels, 1, axis=1).tolist()
            out["band_p99"] = np.percentile(self._pixels, 99, axis=1).tolist()
        return out


# ----------------------------------------------------------------------------- writing
class ShardedOutput:
    """Write a sharded dataset atomically: shards go into ``.FOLDER.part/`` beside ``FOLDER``;
    :meth:`commit` writes the index there, last, and renames the folder into place (an existing
    sharded dataset at ``FOLDER`` is replaced, and the log says so). Leaving the ``with`` block
    with an exception removes the part folder. A part folder left by a killed run is removed
    when ``FOLDER`` is next written; while a writer runs it holds a lock in its part folder, so a
    second writer of the same output is refused."""

    def __init__(self, folder: str | os.PathLike, *, announce: bool = True):
        self.folder = Path(folder)
        self.part = self.folder.with_name(f".{self.folder.name}.part")
        self.announce = announce
        self._lock_fd: Optional[int] = None

    def __enter__(self) -> "ShardedOutput":
        check_output_folder(self.folder)
        from ..files import os_error

        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            self._take_part_folder()
        except OSError as e:
            raise os_error(self.folder, e) from None
        return self

    def _take_part_folder(self) -> None:
        import fcntl

        lock = self.part / LOCK_NAME
        if self.part.exists():
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:
                fd = None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise DataError(f"{self.folder}: another process is writing this dataset "
                                    f"(its {self.part.name} is locked)") from None
                finally:
                    os.close(fd)
            shutil.rmtree(self.part)  # a killed run's leftover
        self.part.mkdir()
        self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()

    def commit(self, index: ShardIndex) -> Path:
        """Write the index into the part folder, then move the folder into place."""
        from ..files import os_error, raise_pending_signal

        index.folder = self.part
        try:
            index.write()
            raise_pending_signal()  # never move an interrupted output into place
            os.unlink(self.part / LOCK_NAME)
            old = self.folder.with_name(f".{self.folder.name}.old")
            replaced = self.folder.exists()
            if replaced:
                shutil.rmtree(old, ignore_errors=True)
                os.rename(self.folder, old)
            os.rename(self.part, self.folder)
            if replaced:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            self.discard()
            raise os_error(self.folder, e) from None
        finally:
            self._release()
        index.folder = self.folder
        if replaced and self.announce:
            log.info("replaced %s", self.folder)
        return self.folder

    def discard(self) -> None:
        self._release()
        shutil.rmtree(self.part, ignore_errors=True)

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def check_output_folder(folder: Path) -> None:
    """Refuse, up front, an output folder that is a file or a folder of something else."""
    if folder.is_file():
        raise DataError(f"{folder}: output: is a file; --shard-size writes a folder of shards")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / INDEX_NAME).is_file():
        raise DataError(f"{folder}: output: is a folder that is not an ssl-rs sharded dataset (no {INDEX_NAME}); "
                        "refusing to replace it")


def shard_name(i: int) -> str:
    return SHARD_NAME.format(i)


__all__ = ["INDEX_NAME", "ShardIndex", "ShardedOutput", "StatsMerger", "is_sharded", "read_index", "shard_name",
           "shard_paths"]
