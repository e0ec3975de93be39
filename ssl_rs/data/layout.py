"""The one HDF5 layout of ssl-rs (documented in ``docs/data_format.md``).

Writing goes through :class:`H5Writer`, which streams samples into a temporary file,
computes per-band statistics on the way and renames the file into place only when
everything succeeded, so a failed conversion never leaves a partial output.
Reading goes through :func:`open_h5` / :func:`check_file`, which validate the file and
raise :class:`~ssl_rs.errors.DataError` with one line naming the file and the field.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import h5py
import numpy as np

from ..errors import DataError
from ..files import AtomicOutput

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLIT_CODES = ("train", "val", "test")  # stored as uint8 0, 1, 2 in splits/<scheme>
SPLIT_UNUSED = 255  # a sample left out of a scheme (e.g. a buffer zone between blocks)
STATS_SAMPLE_PIXELS = 4096  # pixels per sample kept for percentile estimates
STATS_MAX_PIXELS = 2_000_000  # bound on the pixel reservoir per band


def _str_dtype():
    return h5py.string_dtype(encoding="utf-8")


class H5Writer:
    """Stream samples into an ssl-rs HDF5 file, atomically.

    >>> with H5Writer("out.h5", bands=["B02", "B03"], size=(64, 64), gsd=10.0, source="x") as w:
    ...     w.append(image, lat=48.1, lon=11.5, label=3)

    The file is written as ``.out.h5.part`` beside the output and moved into place when the
    ``with`` block ends cleanly (:mod:`ssl_rs.files`: stale part files are removed, the mode
    follows the umask, replacing an existing file is logged, and a full disk ends with one
    line, ``out.h5: no space left on device``). ``before_commit(f, path)``, if given, runs on
    the complete, still open file just before it is closed (e.g. to add split schemes), so
    what it adds is part of the atomic write.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        bands: Sequence[str],
        size: Sequence[int],
        gsd: float,
        source: str,
        class_names: Optional[Sequence[str]] = None,
        multi_label: bool = False,
        attrs: Optional[Mapping[str, Any]] = None,
        seed: int = 0,
        before_commit: Optional[Callable[[h5py.File, Path], None]] = None,
    ):
        self.path = Path(path)
        self.bands = [str(b) for b in bands]
        self.size = (int(size[0]), int(size[1]))
        self.gsd = float(gsd)
        self.source = source
        self.class_names = list(class_names) if class_names is not None else None
        self.multi_label = multi_label
        self.extra_attrs = dict(attrs or {})
        self._rng = np.random.default_rng(seed)
        self._n = 0
        self._sum = np.zeros(len(self.bands), np.float64)
        self._sumsq = np.zeros(len(self.bands), np.float64)
        self._pixels = 0
        self._reservoir: List[np.ndarray] = []
        self._reservoir_size = 0
        self._columns: Dict[str, list] = {"lat": [], "lon": []}
        self._seen_optional: Dict[str, bool] = {}
        self._file: Optional[h5py.File] = None
        self._out: Optional[AtomicOutput] = None
        self._images: Optional[h5py.Dataset] = None
        self._before_commit = before_commit

    # -- context manager ---------------------------------------------------------------
    def __enter__(self) -> "H5Writer":
        out = AtomicOutput(self.path).__enter__()
        self._out = out
        try:
            # h5py writes through the part file's object: a failed write (a full disk) is
            # recorded there and reported by ``out.check()`` as one line, instead of failing
            # inside HDF5, which prints pages of errors and can crash when the file is closed
            self._file = h5py.File(out.file, "w")
            c, (h, w) = len(self.bands), self.size
            self._images = self._file.create_dataset(
                "images", shape=(0, c, h, w), maxshape=(None, c, h, w), dtype=np.uint16, chunks=(1, c, h, w)
            )
            out.check()
        except BaseException as e:
            self._abort(e)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as e:
                self._abort(e)
                raise
        else:
            self._abort(exc)

    def _abort(self, exc: Optional[BaseException] = None) -> None:
        """Close and remove the part file; a failed write (ENOSPC) is reported as the cause."""
        out, self._out = self._out, None
        if out is None:
            return
        if out.file is not None:
            out.file.discarding = True  # closing writes nothing more: it cannot fail
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # pragma: no cover - the file is being thrown away
                pass
            self._file = None
        out.__exit__(type(exc) if exc is not None else RuntimeError, exc, None)

    # -- writing -----------------------------------------------------------------------
    def append(
        self,
        image: np.ndarray,
        *,
        lat: float,
        lon: float,
        label: Optional[int] = None,
        labels: Optional[Sequence[int]] = None,
        time: Optional[str] = None,
        group: Optional[int] = None,
        name: Optional[str] = None,
        split: Optional[str] = None,
    ) -> None:
        """Add one sample: ``image`` is (C, H, W) in the writer's band order."""
        assert self._file is not None, "use H5Writer as a context manager"
        image = np.asarray(image)
        expected = (len(self.bands),) + self.size
        if image.shape != expected:
            raise DataError(f"{self.path}: images: sample {self._n} has shape {image.shape}, expected {expected}")
        if image.dtype != np.uint16:
            if image.size and (image.min() < 0 or image.max() > np.iinfo(np.uint16).max):
                raise DataError(f"{self.path}: images: sample {self._n} has values outside uint16")
            image = image.astype(np.uint16)
        _check_coordinate(self.path, "lat", lat, 90.0, self._n)
        _check_coordinate(self.path, "lon", lon, 180.0, self._n)
        ds = self._images
        ds.resize(self._n + 1, axis=0)
        ds[self._n] = image
        self._out.check()
        self._update_stats(image)
        self._columns["lat"].append(float(lat))
        self._columns["lon"].append(float(lon))
        optional = {"label": label, "labels": labels, "time": time, "group": group, "name": name, "split": split}
        for key, value in optional.items():
            present = value is not None
            seen = self._seen_optional.setdefault(key, present)
            if seen != present:
                raise DataError(f"{self.path}: {key}: given for some samples but not for sample {self._n}")
            if present:
                self._columns.setdefault(key, []).append(value)
        self._n += 1

    def _update_stats(self, image: np.ndarray) -> None:
        flat = image.reshape(image.shape[0], -1).astype(np.float64)
        self._sum += flat.sum(axis=1)
        self._sumsq += (flat * flat).sum(axis=1)
        self._pixels += flat.shape[1]
        if self._reservoir_size < STATS_MAX_PIXELS:
            take = min(STATS_SAMPLE_PIXELS, flat.shape[1])
            idx = self._rng.choice(flat.shape[1], size=take, replace=False)
            self._reservoir.append(flat[:, idx].astype(np.float32))
            self._reservoir_size += take

    def _finish(self) -> None:
        f = self._file
        assert f is not None
        if self._n == 0:
            raise DataError(f"{self.path}: images: no samples were written")
        n = self._n
        f.create_dataset("lat", data=np.asarray(self._columns["lat"], np.float64))
        f.create_dataset("lon", data=np.asarray(self._columns["lon"], np.float64))
        if "label" in self._columns:
            if self.multi_label:
                raise DataError(f"{self.path}: label: single labels given to a multi-label writer")
            f.create_dataset("label", data=np.asarray(self._columns["label"], np.int64))
        if "labels" in self._columns:
            k = len(self.class_names or [])
            hot = np.zeros((n, k), np.uint8)
            for i, idx in enumerate(self._columns["labels"]):
                hot[i, list(idx)] = 1
            f.create_dataset("labels", data=hot)
        if "time" in self._columns:
            f.create_dataset("time", data=np.asarray(self._columns["time"], dtype=object), dtype=_str_dtype())
        if "group" in self._columns:
            f.create_dataset("group", data=np.asarray(self._columns["group"], np.int64))
        if "name" in self._columns:
            f.create_dataset("name", data=np.asarray(self._columns["name"], dtype=object), dtype=_str_dtype())
        if "split" in self._columns:
            write_split(f, "official", np.asarray(self._columns["split"]))
            f.attrs["default_split"] = "official"
        mean = self._sum / self._pixels
        std = np.sqrt(np.maximum(self._sumsq / self._pixels - mean**2, 0.0))
        pixels = np.concatenate(self._reservoir, axis=1)
        f.attrs.update(
            {
                "format_version": FORMAT_VERSION,
                "gsd": self.gsd,
                "source": self.source,
                "band_mean": mean,
                "band_std": np.maximum(std, 1e-6),
                "band_p01": np.percentile(pixels, 1, axis=1),
                "band_p99": np.percentile(pixels, 99, axis=1),
            }
        )
        f.attrs["bands"] = self.bands
        if self.class_names is not None:
            f.attrs["class_names"] = self.class_names
        for key, value in self.extra_attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, dict) else value
        if self._before_commit is not None:
            self._before_commit(f, self.path)
        self._out.check()
        self._images = None
        f.close()
        self._file = None
        out, self._out = self._out, None
        try:
            out.commit()  # checks the writes, fsyncs and moves the file into place
        except BaseException:
            self._out = out
            raise


def _check_coordinate(path, field: str, value: float, limit: float, index: int) -> None:
    if value is None or not np.isfinite(value):
        raise DataError(f"{path}: {field}: sample {index} is not a finite number ({value})")
    if abs(value) > limit:
        raise DataError(f"{path}: {field}: sample {index} = {value} is outside [-{limit:g}, {limit:g}]")


def write_split(f: h5py.File, scheme: str, split: np.ndarray) -> None:
    """Store a split scheme as ``splits/<scheme>`` (uint8 codes; strings are mapped)."""
    split = np.asarray(split)
    if split.dtype.kind in "USO":
        lookup = {name: i for i, name in enumerate(SPLIT_CODES)}
        codes = np.empty(len(split), np.uint8)
        for i, s in enumerate(split):
            s = s.decode() if isinstance(s, bytes) else str(s)
            if s not in lookup:
                raise DataError(f"{f.filename}: splits/{scheme}: unknown split name {s!r} (use {SPLIT_CODES})")
            codes[i] = lookup[s]
    else:
        codes = split.astype(np.uint8)
    group = f.require_group("splits")
    if scheme in group:
        del group[scheme]
    ds = group.create_dataset(scheme, data=codes)
    ds.attrs["codes"] = list(SPLIT_CODES)


def write_dataset(path, images: Iterable[np.ndarray], lat, lon, **kwargs) -> Path:
    """Write a whole dataset at once. Per-sample keyword columns (``label``, ``labels``,
    ``time``, ``group``, ``name``, ``split``) are sequences; the rest go to :class:`H5Writer`."""
    columns = {k: kwargs.pop(k) for k in ("label", "labels", "time", "group", "name", "split") if k in kwargs}
    columns = {k: v for k, v in columns.items() if v is not None}
    with H5Writer(path, **kwargs) as writer:
        for i, image in enumerate(images):
            writer.append(image, lat=float(lat[i]), lon=float(lon[i]), **{k: _item(v[i]) for k, v in columns.items()})
    return Path(path)


def _item(value):
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------- reading

REQUIRED = {"images": (4, "u2"), "lat": (1, "f"), "lon": (1, "f")}
OPTIONAL = {"label": (1, "i"), "labels": (2, "u"), "group": (1, "i")}


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """Open an ssl-rs HDF5 file; missing or non-HDF5 files raise :class:`DataError`."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected an HDF5 file")
    if not h5py.is_hdf5(p):
        raise DataError(f"{p}: not an HDF5 file")
    try:
        return h5py.File(p, mode)
    except OSError as e:  # pragma: no cover - corrupt file after a valid signature
        raise DataError(f"{p}: cannot be opened as HDF5 ({e})") from None


def check_file(path: str | os.PathLike, *, coordinates: bool = True) -> Dict[str, Any]:
    """Validate the layout and return :func:`describe`'s summary.

    Checks required datasets, their dtype and rank, that per-sample arrays have N rows,
    coordinates are finite and within range, and the band attribute matches the images.
    """
    with open_h5(path) as f:
        _check_open(f, Path(path), coordinates=coordinates)
        _warn_contents(f, Path(path))
        return describe(f)


def _check_open(f: h5py.File, path: Path, coordinates: bool = True) -> None:
    for key, (rank, kind) in REQUIRED.items():
        if key not in f:
            raise DataError(f"{path}: {key}: required dataset is missing")
        _check_array(f, path, key, rank, kind)
    for key, (rank, kind) in OPTIONAL.items():
        if key in f:
            _check_array(f, path, key, rank, kind)
    n = f["images"].shape[0]
    if n == 0:
        raise DataError(f"{path}: images: the file has no samples")
    for key in ("lat", "lon", "label", "labels", "group", "time", "name"):
        if key in f and not isinstance(f[key], h5py.Dataset):
            raise DataError(f"{path}: {key}: expected a dataset, found a group")
        if key in f and f[key].shape[:1] != (n,):
            raise DataError(f"{path}: {key}: has {f[key].shape[0] if f[key].shape else 0} rows but images has {n}")
    if "splits" in f and not isinstance(f["splits"], h5py.Group):
        raise DataError(f"{path}: splits: expected a group of split schemes (splits/<scheme>), found a dataset")
    for scheme, ds in f.get("splits", {}).items():
        if not isinstance(ds, h5py.Dataset):
            raise DataError(f"{path}: splits/{scheme}: expected a dataset of split codes, found a group")
        if ds.shape != (n,):
            raise DataError(f"{path}: splits/{scheme}: has shape {ds.shape}, expected ({n},)")
        if ds.dtype.kind not in "ui":
            raise DataError(f"{path}: splits/{scheme}: has dtype {ds.dtype}, expected uint8 split codes")
    if "label" in f:
        labels = f["label"][:]
        if labels.size and labels.min() < 0:
            i = int(np.argmax(labels < 0))
            raise DataError(f"{path}: label: sample {i} = {int(labels[i])} is negative (class indices start at 0)")
    for key in ("gsd", "format_version"):
        _check_number_attr(f, path, key)
    bands = attr_list(f, "bands")
    if bands is None:
        raise DataError(f"{path}: bands: required attribute is missing")
    if len(bands) != f["images"].shape[1]:
        raise DataError(f"{path}: bands: {len(bands)} names for {f['images'].shape[1]} image bands")
    if coordinates:
        for key, limit in (("lat", 90.0), ("lon", 180.0)):
            values = f[key][:]
            bad = ~np.isfinite(values)
            if bad.any():
                raise DataError(f"{path}: {key}: sample {int(np.argmax(bad))} is NaN or infinite")
            out = np.abs(values) > limit
            if out.any():
                i = int(np.argmax(out))
                raise DataError(f"{path}: {key}: sample {i} = {values[i]} is outside [-{limit:g}, {limit:g}]")


def _check_number_attr(f: h5py.File, path: Path, key: str) -> None:
    """``gsd`` (metres, > 0) and ``format_version`` (integer), when present, must be numbers."""
    if key not in f.attrs:
        return
    value = f.attrs[key]
    try:
        number = float(np.asarray(value).item())
    except (TypeError, ValueError):
        number = None
    if key == "gsd":
        if number is None or not np.isfinite(number) or number <= 0:
            raise DataError(f"{path}: gsd: attribute is {_shown(value)}, expected a positive number of metres")
    elif number is None or not float(number).is_integer():
        raise DataError(f"{path}: {key}: attribute is {_shown(value)}, expected an integer")


def _shown(value) -> str:
    value = value.decode(errors="replace") if isinstance(value, bytes) else value
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _warn_contents(f: h5py.File, path: Path) -> None:
    """Log (warning) what is valid HDF5 but probably a mistake: labels beyond the class names,
    split codes other than 0, 1, 2 (train, val, test) and 255 (in no split)."""
    classes = attr_list(f, "class_names")
    if classes is not None:
        if "label" in f:
            labels = f["label"][:]
            beyond = labels >= len(classes)
            if beyond.any():
                i = int(np.argmax(beyond))
                log.warning("%s: label: %d samples have a class index beyond the %d class_names (sample %d = %d)",
                            path, int(beyond.sum()), len(classes), i, int(labels[i]))
        elif "labels" in f and f["labels"].shape[1] != len(classes):
            log.warning("%s: labels: %d columns but %d class_names", path, f["labels"].shape[1], len(classes))
    known = list(range(len(SPLIT_CODES))) + [SPLIT_UNUSED]
    for scheme, ds in f.get("splits", {}).items():
        codes = ds[:]
        unknown = ~np.isin(codes, known)
        if unknown.any():
            i = int(np.argmax(unknown))
            log.warning("%s: splits/%s: %d samples have an unknown split code (sample %d = %d; known: 0 train, "
                        "1 val, 2 test, %d none)", path, scheme, int(unknown.sum()), i, int(codes[i]), SPLIT_UNUSED)


def _check_array(f: h5py.File, path: Path, key: str, rank: int, kind: str) -> None:
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{path}: {key}: expected a dataset, found a group")
    if ds.ndim != rank:
        raise DataError(f"{path}: {key}: has rank {ds.ndim} {ds.shape}, expected rank {rank}")
    dt = ds.dtype
    ok = dt.kind == kind if len(kind) == 1 else dt == np.dtype(kind)
    if kind == "u" and dt.kind in "ib":
        ok = True  # multi-hot may be stored as bool or signed ints
    if not ok:
        raise DataError(f"{path}: {key}: has dtype {dt}, expected {np.dtype(kind) if len(kind) > 1 else kind_name(kind)}")


def kind_name(kind: str) -> str:
    return {"f": "a float type", "i": "an integer type", "u": "an unsigned integer type"}[kind]


def attr_list(f: h5py.File, key: str) -> Optional[List[str]]:
    if key not in f.attrs:
        return None
    value = f.attrs[key]
    if isinstance(value, (str, bytes)):
        value = json.loads(value) if str(value).startswith("[") else [value]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in value]


def read_split(f: h5py.File, scheme: Optional[str] = None) -> np.ndarray:
    """Split codes (uint8, see ``SPLIT_CODES``) of ``scheme`` or of the file's default scheme."""
    schemes = list(f.get("splits", {}).keys())
    if scheme is None:
        scheme = f.attrs.get("default_split")
        if isinstance(scheme, bytes):
            scheme = scheme.decode()
        if scheme is None:
            if len(schemes) == 1:
                scheme = schemes[0]
            else:
                raise DataError(
                    f"{f.filename}: splits: no split scheme chosen; "
                    + (f"pick one of {schemes}" if schemes else "run `ssl-rs data split` first")
                )
    if scheme not in schemes:
        raise DataError(
            f"{f.filename}: splits/{scheme}: split scheme not found"
            + (f" (have {schemes})" if schemes else "; run `ssl-rs data split` first")
        )
    return f["splits"][scheme][:]


def describe(f: h5py.File) -> Dict[str, Any]:
    """Summary used by ``ssl-rs data info``."""
    n, c, h, w = f["images"].shape
    out: Dict[str, Any] = {
        "file": str(f.filename),
        "n": int(n),
        "bands": attr_list(f, "bands"),
        "size": [int(h), int(w)],
        "gsd": float(f.attrs["gsd"]) if "gsd" in f.attrs else None,
        "source": _as_str(f.attrs.get("source")),
        "format_version": int(float(np.asarray(f.attrs.get("format_version", 0)).item())),
        "classes": attr_list(f, "class_names") or [],
    }
    lat, lon = f["lat"][:], f["lon"][:]
    out["lat_range"] = [float(lat.min()), float(lat.max())]
    out["lon_range"] = [float(lon.min()), float(lon.max())]
    if "label" in f:
        counts = np.bincount(f["label"][:], minlength=len(out["classes"]))
        out["task"] = "single-label"
        out["class_counts"] = {_class_name(out["classes"], i): int(c) for i, c in enumerate(counts)}
    elif "labels" in f:
        counts = f["labels"][:].sum(axis=0)
        out["task"] = "multi-label"
        out["class_counts"] = {_class_name(out["classes"], i): int(c) for i, c in enumerate(counts)}
    else:
        out["task"] = None
    if "group" in f:
        out["groups"] = int(len(np.unique(f["group"][:])))
    if "time" in f:
        times = sorted(t.decode() if isinstance(t, bytes) else t for t in f["time"][:])
        out["time_range"] = [times[0], times[-1]]
    splits = {}
    for scheme, ds in f.get("splits", {}).items():
        codes = ds[:]
        splits[scheme] = {name: int((codes == i).sum()) for i, name in enumerate(SPLIT_CODES)}
    out["splits"] = splits
    out["default_split"] = _as_str(f.attrs.get("default_split"))
    return out


def _class_name(classes: List[str], i: int) -> str:
    return classes[i] if i < len(classes) else str(i)


def _as_str(value) -> Optional[str]:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
