"""So2Sat LCZ42 (Zhu et al., 2020): 32x32 px Sentinel-1/2 patches of 42+10 cities, 17 local
climate zones (LCZ), distributed as HDF5 files.

Each file holds ``sen1`` (N, 32, 32, 8), ``sen2`` (N, 32, 32, 10) float reflectance and ``label``
(N, 17) one-hot, in the same row order. The converter keeps ``sen2`` (Sentinel-1 is not
stored), its 10 bands named in the file's order B02, B03, B04, B05, B06, B07, B08, B8A, B11, B12
(the authors' description of ``sen2``; also canonical order), ``label`` = the index of the hot
column over :data:`LCZ_CLASSES`, and ``name`` = ``<file stem>_<row>`` (e.g. ``testing_17``:
row 17 of ``testing.h5``).

**Scaling.** ``sen2`` is decimal reflectance: the authors divided the Sentinel-2 digital numbers
by 10,000. The converter stores ``round(value * 10000)`` as uint16 (the L1C/L2A DN scale, so
statistics and normalisations match the other converters; rounding, not truncation, so
0.0123 -> 123). A value that does not fit (negative, above 6.5535, NaN or infinite) is a
:class:`~ssl_rs.errors.DataError` naming the file, row and band; with
``out_of_range="clip"`` (``--out-of-range clip``) values are clipped to 0..65535 instead and each
read block with clipped values logs a warning with their count (NaN is still an error).

**Releases and splits** (``release=``, ``--release``; SRC is the folder holding the files):

* ``v2`` (default; mediaTUM 1483140): ``SRC/training.h5`` (42 cities), ``SRC/validation.h5``
  (western halves of 10 other cities), ``SRC/testing.h5`` (their eastern halves) -> one file,
  ``splits/official`` = train / val / test.
* ``v3`` (mediaTUM 1613658, the "3 splits version"): ``SRC/random/``, ``SRC/block/`` and
  ``SRC/culture_10/``, each with ``training.h5`` and ``testing.h5``: random 80/20 per city
  (the So2Sat-rand of the literature), a geospatial-block 80/20 per city (So2Sat-block), and 10
  cities held out (``culture_10/training.h5`` is the v2 ``training.h5``, byte for byte: torchgeo
  records one MD5 for both). ``split=`` (``--split random|block|culture_10``) chooses the folder;
  it is required for v3 and refused for v2. The output's split scheme is named after the folder
  (``splits/random`` train / test, the file's default scheme).

**Why one output per v3 folder, not one file with three split schemes.** A split scheme is a
column over the rows of one file, so three schemes in one file need the three folders to hold
the same samples and a way to know which row of ``random/`` is which row of ``block/``. Neither
holds: each folder re-partitions the patches into its own ``training.h5`` / ``testing.h5`` in
its own order (the files differ, by MD5, except ``culture_10/training.h5`` = v2), and the files
carry no sample id or coordinate to match rows on (matching 400,000 patches by pixel content is
guesswork: duplicates and identical-looking composites exist). The authors do the same:
GeoRank's ``lmdb/write_so2sat.py`` writes one database per folder (``lmdb_random``,
``lmdb_block``, ``lmdb_culture10``), each from that folder's training.h5 then testing.h5.
Convert each folder you need into its own file (``--release v3 --split block -o
so2sat-block.h5``).

**No coordinates.** The v2/v3 files have no per-patch location, so the output has no ``lat`` /
``lon``: an evaluation-only file (``GeoDataset.has_location`` is False; geo pretraining methods
refuse it).

**Memory.** The real ``training.h5`` is about 50 GB. Each file is read in blocks of
:data:`READ_ROWS` consecutive rows (one plan item each), so memory stays at one block (~21 MB of
float64) plus the writer's bounded state; ``--shard-size``/``--workers`` shard by blocks.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ...errors import ConfigError, DataError
from .base import CONVERTERS, Converter, Option
from .parallel import ConversionPlan, write_file

log = logging.getLogger(__name__)

#: the Sentinel-2 bands of ``sen2``, in the file's (last-axis) order
SO2SAT_BANDS: List[str] = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
#: the 17 local climate zones, in the order of ``label``'s columns: LCZ 1-10 (built types) then A-G
#: (land cover), named as in Stewart & Oke (2012), the scheme the So2Sat LCZ42 paper labels with
LCZ_CLASSES: List[str] = [
    "Compact high-rise",
    "Compact midrise",
    "Compact low-rise",
    "Open high-rise",
    "Open midrise",
    "Open low-rise",
    "Lightweight low-rise",
    "Large low-rise",
    "Sparsely built",
    "Heavy industry",
    "Dense trees",
    "Scattered trees",
    "Bush, scrub",
    "Low plants",
    "Bare rock or paved",
    "Bare soil or sand",
    "Water",
]
PATCH_SIZE = 32
GSD = 10.0
SCALE = 10000  # sen2 holds DN / 10000: stored as round(value * SCALE)
READ_ROWS = 256  # rows read at once: 256 x 32 x 32 x 10 float64 = 21 MB
UINT16_MAX = int(np.iinfo(np.uint16).max)

RELEASES = ("v2", "v3")
V3_SPLITS = ("random", "block", "culture_10")
OUT_OF_RANGE = ("error", "clip")
#: file -> split, per release (in the order they are written)
V2_FILES: Tuple[Tuple[str, str], ...] = (("training.h5", "train"), ("validation.h5", "val"), ("testing.h5", "test"))
V3_FILES: Tuple[Tuple[str, str], ...] = (("training.h5", "train"), ("testing.h5", "test"))


def find_so2sat_files(src: Path, release: str, split: Optional[str]) -> Tuple[Path, List[Tuple[Path, str]]]:
    """``(folder, [(file, split name)])`` of a release; a missing file is a DataError naming them all."""
    if release == "v2":
        if split is not None:
            raise ConfigError(f"so2sat: --split {split} is for --release v3 (v2 has one split: training, "
                              "validation and testing.h5)")
        folder, names = src, V2_FILES
    else:
        if split is None:
            found = [s for s in V3_SPLITS if (src / s).is_dir()]
            raise ConfigError(f"so2sat: --release v3 needs --split {'|'.join(V3_SPLITS)} (the folder of {src} "
                              f"to convert; found: {', '.join(found) or 'none of them'})")
        folder, names = src / split, V3_FILES
        if not folder.is_dir():
            flat = (src / "training.h5").exists()  # SRC given as one folder of the release
            hint = " (SRC is the folder holding random/, block/ and culture_10/)" if flat else ""
            raise DataError(f"{folder}: source: directory not found{hint}")
    files = [(folder / name, split_name) for name, split_name in names]
    missing = [f.name for f, _ in files if not f.is_file()]
    if missing:
        expected = ", ".join(name for name, _ in names)
        raise DataError(f"{folder}: files: no {', '.join(missing)} (So2Sat LCZ42 {release} has {expected})")
    return folder, files


def check_so2sat_file(path: Path) -> int:
    """The number of samples of one So2Sat HDF5 file, after checking its ``sen2`` and ``label``."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        for key in ("sen2", "label"):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                found = ", ".join(sorted(f)) or "nothing"
                raise DataError(f"{path}: {key}: dataset missing (So2Sat files hold sen1, sen2 and label; "
                                f"found {found})")
        sen2, label = f["sen2"], f["label"]
        expected = (PATCH_SIZE, PATCH_SIZE, len(SO2SAT_BANDS))
        if sen2.ndim != 4 or sen2.shape[1:] != expected:
            raise DataError(f"{path}: sen2: shape {sen2.shape}, expected (N, {', '.join(map(str, expected))})")
        if sen2.dtype.kind != "f":
            raise DataError(f"{path}: sen2: dtype {sen2.dtype}, expected float reflectance (DN / {SCALE})")
        if label.ndim != 2 or label.shape[1] != len(LCZ_CLASSES):
            raise DataError(f"{path}: label: shape {label.shape}, expected (N, {len(LCZ_CLASSES)}) one-hot")
        if label.shape[0] != sen2.shape[0]:
            raise DataError(f"{path}: label: {label.shape[0]} rows but sen2 has {sen2.shape[0]} "
                            "(they must be the same samples)")
        if sen2.shape[0] == 0:
            raise DataError(f"{path}: sen2: no samples")
        return int(sen2.shape[0])


def _rename_split(scheme: str, f, path) -> None:
    """H5Writer ``before_commit``: store the official split under the v3 folder's name."""
    from ..columns import OFFICIAL_SPLIT

    if "splits" in f and OFFICIAL_SPLIT in f["splits"]:
        f["splits"].move(OFFICIAL_SPLIT, scheme)
        f.attrs["default_split"] = scheme


def plan_so2sat(src: Path, *, release: str = "v2", split: Optional[str] = None,
                out_of_range: str = "error") -> ConversionPlan:
    """What :func:`convert_so2sat` writes: the release's files in order (training, [validation,]
    testing), each in blocks of :data:`READ_ROWS` rows (one item per block)."""
    folder, files = find_so2sat_files(src, release, split)
    items, samples = [], []
    for path, split_name in files:
        n = check_so2sat_file(path)
        for start in range(0, n, READ_ROWS):
            stop = min(n, start + READ_ROWS)
            items.append((str(path), split_name, start, stop))
            samples.append(stop - start)
    variant = "v2" if release == "v2" else f"v3 {split}"
    writer: Dict[str, Any] = dict(
        bands=SO2SAT_BANDS,
        size=(PATCH_SIZE, PATCH_SIZE),
        gsd=GSD,
        source=f"So2Sat LCZ42 {variant} (Zhu et al., 2020), sen2 x {SCALE}, converted from {folder}",
        class_names=LCZ_CLASSES,
        attrs={"product": "L1C", "release": release, "so2sat_split": split or "official",
               "scale": f"sen2 reflectance x {SCALE}, rounded"},
    )
    if release == "v3":
        writer["before_commit"] = functools.partial(_rename_split, split)
    return ConversionPlan(
        name=f"so2sat {variant}",
        items=items,
        read=read_so2sat,
        writer=writer,
        context={"out_of_range": out_of_range},
        samples=samples,
    )


def to_uint16(sen2: np.ndarray, path: str, start: int, out_of_range: str) -> np.ndarray:
    """(n, 32, 32, 10) reflectance as (n, 10, 32, 32) uint16 DN: ``round(value * 10000)``."""
    scaled = np.rint(np.asarray(sen2, np.float64) * SCALE)
    outside = ~np.isnan(scaled) & ((scaled < 0) | (scaled > UINT16_MAX))  # includes +-inf
    # what is refused: NaN always (it has no clipped value), values outside too unless clipping
    check = np.isnan(scaled) if out_of_range == "clip" else np.isnan(scaled) | outside
    if check.any():
        row, y, x, band = (int(i[0]) for i in np.nonzero(check))
        value = float(sen2[row, y, x, band])
        what = "NaN" if np.isnan(value) else f"{value:g}"
        hint = "" if np.isnan(value) else f" (outside 0..{UINT16_MAX / SCALE:g}; --out-of-range clip clips)"
        raise DataError(f"{path}: sen2: row {start + row} band {SO2SAT_BANDS[band]} pixel ({y}, {x}) is {what}, "
                        f"which x {SCALE} does not fit uint16{hint}")
    if outside.any():  # only reached when clipping
        log.warning("%s: sen2: rows %d-%d: %d values outside 0..%g clipped", path, start,
                    start + len(sen2) - 1, int(outside.sum()), UINT16_MAX / SCALE)
        scaled = np.clip(scaled, 0, UINT16_MAX)
    return scaled.astype(np.uint16).transpose(0, 3, 1, 2)


def one_hot_indices(label: np.ndarray, path: str, start: int) -> np.ndarray:
    """Class index of each one-hot row; a row that is not exactly one 1 and 0s is a DataError."""
    label = np.asarray(label)
    ones, zeros = label == 1, label == 0
    ok = (ones | zeros).all(axis=1) & (ones.sum(axis=1) == 1)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        values = label[row].tolist()
        raise DataError(f"{path}: label: row {start + row} is not one-hot ({_shown(values)}: "
                        "expected one 1 and sixteen 0s)")
    return ones.argmax(axis=1)


def _shown(values: list) -> str:
    nonzero = {i: v for i, v in enumerate(values) if v != 0}
    return f"nonzero columns {nonzero}" if nonzero else "all zeros"


def read_so2sat(item: Tuple[str, str, int, int], context: Dict[str, Any]) -> Iterator[Tuple[np.ndarray, Dict]]:
    """The samples of one block of rows of one file."""
    import h5py

    path, split, start, stop = item
    with h5py.File(path, "r") as f:
        sen2 = f["sen2"][start:stop]
        label = f["label"][start:stop]
    classes = one_hot_indices(label, path, start)
    images = to_uint16(sen2, path, start, context["out_of_range"])
    del sen2
    stem = Path(path).stem
    for i in range(stop - start):
        yield images[i], dict(label=int(classes[i]), name=f"{stem}_{start + i}", split=split)


def convert_so2sat(src: Path, out: Path, *, release: str = "v2", split: Optional[str] = None,
                   out_of_range: str = "error", progress: bool = True) -> Path:
    """Convert So2Sat LCZ42 (``release`` v2, or v3 with ``split`` random|block|culture_10) to the
    ssl-rs layout: 10 bands x 10000 as uint16, 32x32, 17 LCZ classes, split from the files; no
    lat/lon (see the module docstring)."""
    return write_file(plan_so2sat(src, release=release, split=split, out_of_range=out_of_range), out,
                      progress=progress)


CONVERTERS.register(Converter(
    "so2sat",
    "So2Sat LCZ42: 10-band 32x32 patches (reflectance x 10000), 17 LCZ classes, no coordinates; "
    "v2 train/val/test or v3 --split random|block|culture_10",
    convert_so2sat,
    (
        Option("release", str, "v2", "v2 (training/validation/testing.h5) or v3 (random/, block/, "
               "culture_10/ folders; needs --split)", RELEASES),
        Option("split", str, None, "the v3 folder to convert: random, block or culture_10 (one output each)",
               V3_SPLITS),
        Option("out_of_range", str, "error", "sen2 values whose x 10000 is outside uint16: error, or clip "
               "(with a warning)", OUT_OF_RANGE),
    ),
    plan=plan_so2sat,
))
