"""Writing the ssl-rs HDF5 layout: :class:`H5Writer` and what writes through it.

The per-sample columns a writer accepts, and how each is stored, come from
:data:`ssl_rs.data.columns.COLUMNS`. :class:`H5Writer` streams samples into a temporary file,
computes per-band statistics on the way and renames the file into place only when everything
succeeded, so a failed conversion never leaves a partial output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import h5py
import numpy as np

from ..errors import DataError
from ..files import AtomicOutput
from .columns import (APPEND_ARGS, FORMAT_VERSION, IMAGES, MASK_NODATA, OFFICIAL_SPLIT, SPLIT_CODES,
                      check_mask_classes, check_mask_nodata, split_codes)

STATS_SAMPLE_PIXELS = 4096  # pixels per sample kept for percentile estimates
STATS_MAX_PIXELS = 2_000_000  # bound on the pixel reservoir per band
SHARD_STATS_PIXELS = 65_536  # pixels per band a shard passes on for the percentiles of its dataset


class H5Writer:
    """Stream samples into an ssl-rs HDF5 file, atomically.

    >>> with H5Writer("out.h5", bands=["B02", "B03"], size=(64, 64), gsd=10.0, source="x") as w:
    ...     w.append(image, lat=48.1, lon=11.5, label=3)

    ``lat``/``lon`` may be left out for every sample (evaluation-only data, e.g. So2Sat LCZ42):
    the file then has no locations. Per-pixel masks (semantic segmentation) need the writer's
    ``mask_classes`` (stored as the attribute of that name, like ``class_names``) and optionally
    ``mask_nodata`` (default 255, the value of unlabelled pixels): ``append(image, mask=(H, W))``.

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
        stats_pixels: int = STATS_MAX_PIXELS,
        stats_sample_pixels: int = STATS_SAMPLE_PIXELS,
        before_commit: Optional[Callable[[h5py.File, Path], None]] = None,
        mask_classes: Optional[Sequence[str]] = None,
        mask_nodata: Optional[int] = None,
    ):
        self.path = Path(path)
        if mask_classes is None and mask_nodata is not None:
            raise DataError(f"{self.path}: mask_nodata: given without mask_classes (the class names of the masks)")
        self.mask_classes = None if mask_classes is None else check_mask_classes(mask_classes, str(self.path))
        self.mask_nodata = None if mask_classes is None else check_mask_nodata(
            MASK_NODATA if mask_nodata is None else mask_nodata, self.mask_classes, str(self.path))
        self.bands = [str(b) for b in bands]
        self.size = (int(size[0]), int(size[1]))
        self.gsd = float(gsd)
        self.source = source
        self.class_names = list(class_names) if class_names is not None else None
        self.multi_label = multi_label
        self.extra_attrs = dict(attrs or {})
        self._rng = np.random.default_rng(seed)
        # the pixel reservoir for percentiles: at most stats_pixels per band, stats_sample_pixels
        # from each sample until it is full (a shard writer keeps a smaller one, spread over
        # all its samples: computing percentiles of 2 million pixels per band costs ~1 s per file)
        self._stats_pixels, self._stats_sample_pixels = int(stats_pixels), int(stats_sample_pixels)
        self._n = 0
        self._sum = np.zeros(len(self.bands), np.float64)
        self._sumsq = np.zeros(len(self.bands), np.float64)
        self._pixels = 0
        self._reservoir: List[np.ndarray] = []
        self._reservoir_size = 0
        # encoded rows of each column given to append, by append keyword (streamed columns, such
        # as mask, go to their dataset as they come: _streamed)
        self._columns: Dict[str, List[np.ndarray]] = {}
        self._given: Optional[frozenset] = None  # the append keywords of the first sample
        self._streamed: Dict[str, h5py.Dataset] = {}
        self._file: Optional[h5py.File] = None
        self._out: Optional[AtomicOutput] = None
        self._images: Optional[h5py.Dataset] = None
        self._before_commit = before_commit

    @property
    def n(self) -> int:
        """Samples appended so far."""
        return self._n

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
                IMAGES.name, shape=(0, c, h, w), maxshape=(None, c, h, w), dtype=IMAGES.h5_dtype, chunks=(1, c, h, w)
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
    def append(self, image: np.ndarray, *, lat: Optional[float] = None, lon: Optional[float] = None,
               **columns: Any) -> None:
        """Add one sample: ``image`` is (C, H, W) in the writer's band order.

        ``lat`` and ``lon`` (degrees) are given together, for every sample or for none (a file
        without locations: evaluation-only data). The other keywords are the optional columns of
        :data:`ssl_rs.data.columns.COLUMNS` (``label``, ``labels`` (class indices), ``mask``
        ((H, W) class indices into ``mask_classes``), ``time``, ``group``, ``name``, ``split``);
        one given (not None) for some samples must be given for all.
        """
        assert self._file is not None, "use H5Writer as a context manager"
        unknown = sorted(set(columns) - set(APPEND_ARGS))
        if unknown:
            raise TypeError(f"H5Writer.append() got an unexpected keyword argument {unknown[0]!r}")
        image = np.asarray(image)
        expected = (len(self.bands),) + self.size
        if image.shape != expected:
            raise DataError(f"{self.path}: images: sample {self._n} has shape {image.shape}, expected {expected}")
        if image.dtype != IMAGES.h5_dtype:
            if image.size and (image.min() < 0 or image.max() > np.iinfo(np.uint16).max):
                raise DataError(f"{self.path}: images: sample {self._n} has values outside uint16")
            image = image.astype(IMAGES.h5_dtype)
        if (lat is None) != (lon is None):
            has, lacks = ("lat", "lon") if lon is None else ("lon", "lat")
            raise DataError(f"{self.path}: lat/lon: sample {self._n} has {has} but no {lacks} (give both, or "
                            "neither for a file without locations)")
        # a column is encoded when given (not None)
        given = {k: v for k, v in {"lat": lat, "lon": lon, **columns}.items() if v is not None}
        if self._given is not None and given.keys() != self._given:
            arg = next(a for a in APPEND_ARGS if (a in given) != (a in self._given))
            name = "lat/lon" if arg in ("lat", "lon") else APPEND_ARGS[arg].display_name()
            state = (f"given for some samples but not for sample {self._n}" if arg in self._given
                     else f"given for sample {self._n} but not for the samples before it")
            raise DataError(f"{self.path}: {name}: {state}"
                            + (" (a file has locations for every sample or for none)" if name == "lat/lon" else ""))
        # encode and check every column before anything of this sample is written
        rows = {}
        for arg, value in given.items():
            column = APPEND_ARGS[arg]
            rows[arg] = row = column.encode_values([value], self)
            column.check_values(row, f"{self.path}: {column.display_name()}", self._n)
        ds = self._images
        ds.resize(self._n + 1, axis=0)
        ds[self._n] = image
        for arg, row in rows.items():
            if APPEND_ARGS[arg].streamed:
                self._write_streamed(arg, row)
        self._out.check()
        self._update_stats(image)
        for arg, row in rows.items():
            if not APPEND_ARGS[arg].streamed:
                self._columns.setdefault(arg, []).append(row)
        self._given = frozenset(given)
        self._n += 1

    def _write_streamed(self, arg: str, row: np.ndarray) -> None:
        """Row ``self._n`` of a streamed column (mask): its dataset, one chunk per sample, is made
        when the first sample gives it."""
        column = APPEND_ARGS[arg]
        ds = self._streamed.get(arg)
        if ds is None:
            tail = row.shape[1:]
            ds = self._streamed[arg] = self._file.create_dataset(
                column.name, shape=(0,) + tail, maxshape=(None,) + tail, dtype=column.h5_dtype, chunks=(1,) + tail)
        ds.resize(self._n + 1, axis=0)
        ds[self._n] = row[0]

    def _update_stats(self, image: np.ndarray) -> None:
        flat = image.reshape(image.shape[0], -1).astype(np.float64)
        self._sum += flat.sum(axis=1)
        self._sumsq += (flat * flat).sum(axis=1)
        self._pixels += flat.shape[1]
        if self._reservoir_size < self._stats_pixels:
            take = min(self._stats_sample_pixels, flat.shape[1])
            idx = self._rng.choice(flat.shape[1], size=take, replace=False)
            self._reservoir.append(flat[:, idx].astype(np.float32))
            self._reservoir_size += take

    def stats_sample(self, pixels: int = SHARD_STATS_PIXELS):
        """``(sum, sum of squares, pixel count, sample)`` per band of what was appended: the exact
        sums, and a uniform random sample (C, <= ``pixels``) of the pixel reservoir, so the
        statistics of several files (the shards of one dataset) can be combined."""
        kept = (np.concatenate(self._reservoir, axis=1) if self._reservoir
                else np.zeros((len(self.bands), 0), np.float32))
        if kept.shape[1] > pixels:
            kept = kept[:, np.sort(self._rng.choice(kept.shape[1], size=pixels, replace=False))]
        return self._sum.copy(), self._sumsq.copy(), int(self._pixels), kept

    def _finish(self) -> None:
        f = self._file
        assert f is not None
        if self._n == 0:
            raise DataError(f"{self.path}: images: no samples were written")
        if self.mask_classes is not None and "mask" not in self._streamed:
            raise DataError(f"{self.path}: mask: the writer has mask_classes but no sample was given a mask")
        # in the table's order, which is the order the datasets were always created in
        for arg, column in APPEND_ARGS.items():
            if arg not in self._columns:
                continue
            values = np.concatenate(self._columns[arg])
            if column.per_scheme:
                write_split(f, OFFICIAL_SPLIT, values)
                f.attrs["default_split"] = OFFICIAL_SPLIT
            else:
                f.create_dataset(column.name, data=values, dtype=column.h5_dtype)
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
        if self.mask_classes is not None:
            f.attrs["mask_classes"] = self.mask_classes
            f.attrs["mask_nodata"] = self.mask_nodata
        for key, value in self.extra_attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, dict) else value
        if self._before_commit is not None:
            self._before_commit(f, self.path)
        self._out.check()
        self._images = None
        self._streamed = {}
        f.close()
        self._file = None
        out, self._out = self._out, None
        try:
            out.commit()  # checks the writes, fsyncs and moves the file into place
        except BaseException:
            self._out = out
            raise


def write_split(f: h5py.File, scheme: str, split: np.ndarray) -> None:
    """Store a split scheme as ``splits/<scheme>`` (uint8 codes; strings are mapped)."""
    split = np.asarray(split)
    if split.dtype.kind in "USO":
        codes = split_codes(split, f"{f.filename}: splits/{scheme}")
    else:
        codes = split.astype(np.uint8)
    group = f.require_group("splits")
    if scheme in group:
        del group[scheme]
    ds = group.create_dataset(scheme, data=codes)
    ds.attrs["codes"] = list(SPLIT_CODES)


def write_dataset(path, images: Iterable[np.ndarray], lat=None, lon=None, **kwargs) -> Path:
    """Write a whole dataset at once. Per-sample keyword columns (``label``, ``labels``, ``mask``,
    ``time``, ``group``, ``name``, ``split``: see :data:`ssl_rs.data.columns.COLUMNS`) are
    sequences; the rest go to :class:`H5Writer`. ``lat``/``lon`` None: a file without locations."""
    columns = {k: kwargs.pop(k) for k in APPEND_ARGS if k in kwargs and k not in ("lat", "lon")}
    columns = {k: v for k, v in columns.items() if v is not None}
    with H5Writer(path, **kwargs) as writer:
        for i, image in enumerate(images):
            where = {} if lat is None and lon is None else {
                "lat": None if lat is None else float(lat[i]), "lon": None if lon is None else float(lon[i])}
            writer.append(image, **where, **{k: _item(v[i]) for k, v in columns.items()})
    return Path(path)


def _item(value):
    return value.item() if isinstance(value, np.generic) else value
