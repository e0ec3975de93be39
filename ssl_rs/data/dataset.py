"""``GeoDataset``: lazy, worker-safe, batched reads of an ssl-rs HDF5 file or sharded folder.

Each item is a dict: ``image`` (C, H, W) uint16 tensor, ``index`` (position in the file, or in
the logical dataset of a sharded folder), plus ``lat``, ``lon`` (float64, degrees; absent in a
file without locations, evaluation-only data: :attr:`GeoDataset.has_location`), ``label``
(int64) or ``labels`` (float32 multi-hot), ``mask`` ((H, W) uint8 class indices into
:attr:`GeoDataset.mask_classes`), ``group`` (int64) and ``time`` (ISO string) when the file has
them: every column of :data:`ssl_rs.data.columns.COLUMNS` with a ``sample_key``, converted by
its ``to_sample``. The raw uint16 image (and uint8 mask) is kept on purpose: augmentation and
normalisation run later, batch-wise, on the device.

Batches: a DataLoader with a batch size calls :meth:`GeoDataset.__getitems__` once per batch
(torch does when the dataset defines it). The batch is read in one pass: file rows sorted (HDF5
reads forward; a row asked for twice is read once), one handle lookup per shard, each image read
straight into one (B, C, H, W) array (its chunk, bypassing h5py's selection machinery, when the
file stores one uncompressed chunk per sample as ssl-rs writes it), then put back in the order
asked for; masks, stored the same way, are read the same way into one (B, H, W) array. The per-sample columns held in memory are gathered with one numpy index per column.
What ``__getitems__`` returns is a list of B light row views of that batch; the default collate
recognises them (:data:`torch.utils.data._utils.collate.default_collate_fn_map`, extended here as
torch documents) and returns the batch itself, so no per-sample tensors are made and stacked.
Any other collate function sees B read-only mappings with the same keys and values as
``dataset[i]``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import collate, default_collate_fn_map

from ..errors import ConfigError, DataError
from .bands import band_indices
from .columns import COLUMNS, IMAGES, MASK, SPLIT_CODES, as_text, mask_attrs
from .reader import attr_list, check_open, open_h5, read_split

#: the columns that items carry besides the image, in the table's order
ITEM_COLUMNS = tuple(c for c in COLUMNS if c.sample_key is not None and c is not IMAGES)
#: the optional ones, the keys an item has only when the file has the column
PER_SAMPLE_KEYS = tuple(c.sample_key for c in ITEM_COLUMNS if not c.required)
#: ``sample_keys=`` conventions: item key -> the key it is given under. torchgeo's classification
#: datasets name the target ``label`` whether it is a class index or a multi-hot vector.
SAMPLE_KEY_MAPS: Dict[str, Dict[str, str]] = {"ssl-rs": {}, "torchgeo": {"labels": "label"}}
#: shard files a worker keeps open at once (each handle holds HDF5's chunk cache)
MAX_OPEN_SHARDS = 32

# batched values of the in-memory columns: numpy array of the rows -> batch tensor
_BATCH_CONVERTERS: Dict[str, Callable[[np.ndarray], torch.Tensor]] = {
    "float64": lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float64)),
    "int64": lambda a: torch.from_numpy(np.ascontiguousarray(a, np.int64)),
    "uint8": lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32)),  # multi-hot labels
}


class GeoDataset(Dataset):
    """Samples of one split of an ssl-rs HDF5 file, or of a sharded dataset folder
    (:mod:`ssl_rs.data.shards`), which reads as one logical dataset.

    Args:
        path: the HDF5 file, or the folder of a sharded dataset.
        split: "train", "val", "test", or None for every sample.
        scheme: which split scheme in ``splits/`` (default: the file's ``default_split``).
        bands: optional subset of band names, in the order the model expects.
        indices: optional explicit sample indices (applied after the split).
        transforms: optional callable applied to each item dict, returning the item (torchgeo's
            convention); a DataLoader batch is still read in one pass, then transformed item by
            item and collated by the DataLoader's collate function.
        sample_keys: ``"ssl-rs"`` (default) or ``"torchgeo"`` (the multi-hot ``labels`` is given
            as ``label``, the key torchgeo's classification datasets use for either target).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: Optional[str] = None,
        scheme: Optional[str] = None,
        bands: Optional[Sequence[str]] = None,
        indices: Optional[Sequence[int]] = None,
        transforms: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
        sample_keys: str = "ssl-rs",
    ):
        self.path = Path(path)
        if split is not None and split not in SPLIT_CODES:
            raise DataError(f"{self.path}: split: unknown split {split!r} (use one of {SPLIT_CODES})")
        if sample_keys not in SAMPLE_KEY_MAPS:
            raise ConfigError(f"sample_keys: unknown convention {sample_keys!r} (use one of {sorted(SAMPLE_KEY_MAPS)})")
        if transforms is not None and not callable(transforms):
            raise ConfigError(f"transforms: expected a callable taking and returning an item dict, got {transforms!r}")
        self.transforms = transforms
        self.sample_keys = sample_keys
        self._rename = SAMPLE_KEY_MAPS[sample_keys]
        if self.path.is_dir():
            self._open_sharded(split, scheme)
        else:
            self._open_file(split, scheme)
        n = int(self._offsets[-1])
        selected = np.arange(n) if self._codes is None else np.flatnonzero(self._codes == SPLIT_CODES.index(split))
        if split is not None and len(selected) == 0:
            raise DataError(f"{self.path}: splits/{self.split_scheme}: no samples in split {split!r}")
        del self._codes
        # None in a file without locations (evaluation-only data): see require_location
        self.lat_all: Optional[np.ndarray] = self._in_memory.get("lat")
        self.lon_all: Optional[np.ndarray] = self._in_memory.get("lon")
        self.present = [c.sample_key for c in self._columns if not c.required]
        self.group_all = self._in_memory.get("group")
        self._labels_all = self._in_memory.get("label", self._in_memory.get("labels"))
        if indices is not None:
            selected = selected[np.asarray(indices, dtype=np.int64)]
        self.indices = selected
        if bands is not None:
            try:
                self.band_index = band_indices(self.file_bands, bands)
            except (KeyError, ValueError) as e:
                raise DataError(f"{self.path}: bands: {e}") from None
            self.bands = [self.file_bands[i] for i in self.band_index]
        else:
            self.band_index = None
            self.bands = list(self.file_bands)
        sel = slice(None) if self.band_index is None else self.band_index
        self.band_mean = self._mean[sel].tolist()
        self.band_std = self._std[sel].tolist()
        self._handles: "OrderedDict[int, h5py.File]" = OrderedDict()
        self._pid: Optional[int] = None
        self._direct: Dict[int, bool] = {}

    # -- opening ------------------------------------------------------------------------
    def _open_file(self, split: Optional[str], scheme: Optional[str]) -> None:
        with open_h5(self.path) as f:
            check_open(f, self.path)
            self.file_bands: List[str] = attr_list(f, "bands") or []
            self.class_names: List[str] = attr_list(f, "class_names") or []
            n, _, h, w = f[IMAGES.name].shape
            self.size = (int(h), int(w))
            self.gsd = float(f.attrs["gsd"]) if "gsd" in f.attrs else None
            self._mean = np.asarray(f.attrs.get("band_mean", np.zeros(len(self.file_bands))), np.float64)
            self._std = np.asarray(f.attrs.get("band_std", np.ones(len(self.file_bands))), np.float64)
            self._columns = [c for c in ITEM_COLUMNS if c.name in f]
            self._mask = mask_attrs(f.attrs, self.path) if MASK.name in f else None
            # numbers are held in memory (small, and read for every item); strings are read per
            # batch, so that workers do not each hold a copy of a large object array; streamed
            # columns (mask) are read per batch like images
            self._in_memory = {c.name: f[c.name][:] for c in self._columns if not (c.is_string or c.streamed)}
            self.split_scheme = None
            self._codes = None
            if split is not None:
                self._codes = read_split(f, scheme)
                self.split_scheme = scheme or _default_scheme(f)
        self._parts = [self.path]
        self._offsets = np.array([0, n], np.int64)

    def _open_sharded(self, split: Optional[str], scheme: Optional[str]) -> None:
        from .shards import INDEX_NAME, read_index

        index = read_index(self.path)
        self.file_bands = list(index.bands)
        self.class_names = list(index.class_names)
        self.size = tuple(index.size)
        self.gsd = index.gsd
        channels = len(self.file_bands)
        self._mean = np.asarray(index.stats.get("band_mean", np.zeros(channels)), np.float64)
        self._std = np.asarray(index.stats.get("band_std", np.ones(channels)), np.float64)
        self.split_scheme = None
        if split is not None:
            self.split_scheme = _index_scheme(index, scheme)
        columns = None
        values: Dict[str, List[np.ndarray]] = {}
        codes: List[np.ndarray] = []
        self._mask = None
        for path, (_, count) in zip(index.paths, index.shards):
            if not path.is_file():
                raise DataError(f"{path}: file not found (listed in {self.path / INDEX_NAME})")
            with open_h5(path) as f:
                check_open(f, path)
                shape = f[IMAGES.name].shape
                if shape[0] != count or tuple(shape[2:]) != self.size or attr_list(f, "bands") != self.file_bands:
                    raise DataError(f"{path}: images: {shape[0]} samples of {shape[1]} bands x {shape[2]}x{shape[3]} "
                                    f"px, but {INDEX_NAME} lists {count} of {channels} bands "
                                    f"({', '.join(self.file_bands)}) x {self.size[0]}x{self.size[1]} px")
                here = [c for c in ITEM_COLUMNS if c.name in f]
                if columns is None:
                    columns = here
                elif here != columns:
                    first = {c.name for c in columns}
                    odd = sorted(first.symmetric_difference(c.name for c in here))[0]
                    raise DataError(f"{path}: {odd}: present in only some shards of {self.path}")
                if MASK.name in f:
                    mask = mask_attrs(f.attrs, path)
                    if self._mask is None:
                        self._mask = mask
                    elif mask != self._mask:
                        key = "mask_classes" if mask[0] != self._mask[0] else "mask_nodata"
                        raise DataError(f"{path}: {key}: {mask[0] if key == 'mask_classes' else mask[1]} differs "
                                        f"from the first shard's {self._mask[0] if key == 'mask_classes' else self._mask[1]} "
                                        f"(shards of {self.path} must agree)")
                for c in columns:
                    if not (c.is_string or c.streamed):
                        values.setdefault(c.name, []).append(f[c.name][:])
                if split is not None:
                    if "splits" not in f or self.split_scheme not in f["splits"]:
                        raise DataError(f"{path}: splits/{self.split_scheme}: missing in this shard although "
                                        f"{INDEX_NAME} lists it (an interrupted `ssl-rs data split`? run it again)")
                    codes.append(read_split(f, self.split_scheme))
        self._columns = columns or []
        self._in_memory = {name: np.concatenate(parts) for name, parts in values.items()}
        self._codes = np.concatenate(codes) if codes else None
        self._parts = index.paths
        self._offsets = index.offsets

    # Each DataLoader worker opens its own handles: h5py handles must not cross fork().
    def _handle(self, part: int = 0) -> h5py.File:
        if self._pid != os.getpid():
            self._handles = OrderedDict()  # the parent's handles are not ours to close
            self._pid = os.getpid()
        f = self._handles.get(part)
        if f is None:
            if len(self._handles) >= MAX_OPEN_SHARDS:
                _, oldest = self._handles.popitem(last=False)
                oldest.close()
            f = self._handles[part] = h5py.File(self._parts[part], "r")
        else:
            self._handles.move_to_end(part)
        return f

    def close(self) -> None:
        """Close this process's open file handles (reads reopen them); a file that is to be
        modified in this process (``ssl-rs data split``) must not be held open for reading."""
        if self._pid == os.getpid():
            for f in self._handles.values():
                f.close()
        self._handles = OrderedDict()

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        state["_pid"] = None
        return state

    def __len__(self) -> int:
        return len(self.indices)

    # -- reading ------------------------------------------------------------------------
    def read_images(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """(len(positions), C, H, W) uint16 images of dataset positions, in the order given, in
        the dataset's bands; one sorted pass over the file rows, each row read once."""
        return self._images(positions).numpy()

    def read_masks(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """(len(positions), H, W) uint8 masks of dataset positions, in the order given (read as
        :meth:`read_images` reads images); a DataError when the file has no masks."""
        self._require_mask()
        return self._rows(MASK.name, positions, tuple(self.size), np.uint8).numpy()

    def _images(self, positions: Sequence[int] | np.ndarray, shared: bool = False,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`read_images` as a tensor: rows are read in increasing order, each straight into
        its place in the batch (no reordering copy). ``shared``: in a DataLoader worker, make the
        batch in shared memory, as torch's own collate does, so that sending it to the main process
        copies nothing. ``out``: a contiguous (B, C, H, W) uint16 tensor to read into instead (a
        slot of :class:`ssl_rs.data.loader.BatchRing`), returned."""
        channels = len(self.file_bands)
        full = self.band_index is None
        tensor = self._rows(IMAGES.name, positions, (channels,) + tuple(self.size), np.uint16, shared=shared and full,
                            out=out if full else None)
        if not full:
            selected = out if out is not None else _empty((len(tensor), len(self.band_index)) + tuple(self.size),
                                                          shared=shared)
            torch.index_select(tensor, 1, torch.as_tensor(self.band_index), out=selected)
            tensor = selected
        return tensor

    def _rows(self, name: str, positions: Sequence[int] | np.ndarray, tail: tuple, dtype, shared: bool = False,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rows of the stored dataset ``name`` (images, mask: one chunk per sample) for dataset
        ``positions``, as one (B, *tail) tensor of ``dtype``; rows are read in increasing order,
        each once, straight into its place (``out``: that tensor, given)."""
        rows = self.indices[np.asarray(positions, np.int64).reshape(-1)]
        if out is not None and (tuple(out.shape) != (len(rows),) + tail or out.dtype != torch.from_numpy(
                np.empty(0, dtype)).dtype or not out.is_contiguous()):
            raise ValueError(f"out: expected a contiguous {(len(rows),) + tail} {np.dtype(dtype)} tensor, "
                             f"got {tuple(out.shape)} {out.dtype}")
        tensor = _empty((len(rows),) + tail, shared=shared, dtype=dtype) if out is None else out
        out = tensor.numpy()
        order = np.argsort(rows, kind="stable")
        ranked = rows[order]
        first = np.ones(len(rows), bool)
        first[1:] = ranked[1:] != ranked[:-1]  # a row asked for twice is read once
        unique, targets = ranked[first], order[first]
        for part, start, stop in self._runs(unique):
            local = unique[start:stop] - self._offsets[part]
            if name == IMAGES.name:
                self._read_part(part, local, out, targets[start:stop])
            else:
                self._read_rows_of_part(part, local, out, targets[start:stop], name)
        if not first.all():
            source = order[np.flatnonzero(first)[np.cumsum(first) - 1]]  # the first copy of each row
            repeats = ~first
            out[order[repeats]] = out[source[repeats]]
        return tensor

    def _runs(self, rows: np.ndarray) -> Iterator[tuple]:
        """(part, start, stop) of the runs of sorted ``rows`` that fall in one part."""
        if len(self._parts) == 1:
            yield 0, 0, len(rows)
            return
        part_of = np.searchsorted(self._offsets, rows, side="right") - 1
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(part_of)) + 1, [len(rows)]])
        for start, stop in zip(bounds[:-1], bounds[1:]):
            yield int(part_of[start]), int(start), int(stop)

    def _read_part(self, part: int, local: np.ndarray, out: np.ndarray, targets: np.ndarray) -> None:
        """Read increasing rows ``local`` of one part's images into rows ``targets`` of ``out``."""
        self._read_rows_of_part(part, local, out, targets, IMAGES.name)

    def _read_rows_of_part(self, part: int, local: np.ndarray, out: np.ndarray, targets: np.ndarray,
                           name: str) -> None:
        """Read increasing rows ``local`` of one part's dataset ``name`` into rows ``targets`` of ``out``."""
        ds = self._handle(part)[name]
        key = (part, name)
        if self._direct.get(key) is None:
            self._direct[key] = _one_raw_chunk_per_sample(ds, out.dtype)
        if self._direct[key]:
            # the chunk of a sample is its row, byte for byte: read it into place
            flat = out.reshape(len(out), -1).view(np.uint8)
            read = ds.id.read_direct_chunk
            origin = (0,) * (ds.ndim - 1)
            try:
                for row, target in zip(local.tolist(), targets.tolist()):
                    read((row,) + origin, out=flat[target])
                return
            except TypeError:  # an h5py older than read_direct_chunk(out=): read through HDF5
                self._direct[key] = False
        for row, target in zip(local.tolist(), targets.tolist()):
            ds.read_direct(out, np.s_[row], np.s_[target])

    def _strings(self, column, rows: np.ndarray) -> List[str]:
        """A string column's values for file ``rows`` (any order), read per part in row order."""
        unique, inverse = np.unique(rows, return_inverse=True)
        values: List[str] = []
        for part, start, stop in self._runs(unique):
            local = unique[start:stop] - self._offsets[part]
            ds = self._handle(part)[column.name]
            if local[-1] - local[0] + 1 == len(local):
                raw = ds[int(local[0]):int(local[-1]) + 1]
            else:
                raw = [ds[int(r)] for r in local.tolist()]
            values.extend(as_text(v) for v in raw)
        return [values[i] for i in inverse.reshape(-1).tolist()]

    def column_values(self, name: str) -> np.ndarray:
        """Every value of one column over the whole file (or every shard, in order), e.g. ``time``."""
        if name in self._in_memory:
            return self._in_memory[name]
        parts = []
        for path in self._parts:
            with h5py.File(path, "r") as f:
                if name not in f:
                    raise DataError(f"{path}: {name}: the file has no such column")
                parts.append(f[name][:])
        return np.concatenate(parts)

    def batch(self, positions: Sequence[int] | np.ndarray, images: Optional[torch.Tensor] = None,
              shared: bool = True) -> Dict[str, Any]:
        """The batch of dataset ``positions``: what the default collate makes of their items,
        read in one pass (``images``: already read, (B, C, H, W); ``shared``: see :meth:`_images`)."""
        positions = np.asarray(positions, np.int64)
        rows = self.indices[positions]
        if images is None:
            images = self._images(positions, shared=shared)
        out: Dict[str, Any] = {IMAGES.sample_key: images if torch.is_tensor(images) else torch.from_numpy(images)}
        for column in self._columns:
            if column.streamed:
                out[column.sample_key] = self._rows(column.name, positions, tuple(self.size), np.dtype(column.dtype),
                                                    shared=shared)
                continue
            values = self._in_memory.get(column.name)
            if values is None:
                out[column.sample_key] = self._strings(column, rows)
            else:
                out[column.sample_key] = _BATCH_CONVERTERS[column.dtype](values[rows])
        out["index"] = torch.from_numpy(rows.astype(np.int64))
        return self._renamed(out)

    def _renamed(self, item: Dict[str, Any]) -> Dict[str, Any]:
        if not self._rename:
            return item
        return {self._rename.get(k, k): v for k, v in item.items()}

    def __getitem__(self, i: int) -> Dict[str, Any]:
        index = int(self.indices[i])
        item: Dict[str, Any] = {IMAGES.sample_key: self._images([i])[0]}
        for column in self._columns:
            if column.streamed:
                item[column.sample_key] = self._rows(column.name, [i], tuple(self.size), np.dtype(column.dtype))[0]
                continue
            values = self._in_memory.get(column.name)
            row = values[index] if values is not None else self._strings(column, np.array([index]))[0]
            item[column.sample_key] = column.to_sample(row)
        item["index"] = torch.tensor(index, dtype=torch.int64)
        item = self._renamed(item)
        return item if self.transforms is None else self.transforms(item)

    def __getitems__(self, positions: Sequence[int]) -> List[Mapping]:
        """The items of ``positions`` for one DataLoader batch (see the module docstring)."""
        if self.transforms is not None:  # read as one batch, transform item by item
            rows = batch_rows(self.batch(positions, shared=False))
            return [self.transforms(dict(row)) for row in rows]
        return batch_rows(self.batch(positions))

    # -- metadata used by models, regularizers and samplers -----------------------------
    @property
    def keys(self) -> set:
        """Batch keys this dataset provides (checked against a regularizer's ``needs``)."""
        keys = {IMAGES.sample_key, "index", *(c.sample_key for c in self._columns)}
        return {self._rename.get(k, k) for k in keys}

    @property
    def shards(self) -> List[Path]:
        """The files the samples are read from: the file itself, or the shards of a folder."""
        return list(self._parts)

    @property
    def in_chans(self) -> int:
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def multi_label(self) -> bool:
        return "labels" in self.present

    @property
    def target_key(self) -> Optional[str]:
        key = "labels" if "labels" in self.present else ("label" if "label" in self.present else None)
        return self._rename.get(key, key) if key else None

    @property
    def has_location(self) -> bool:
        """Whether the samples have lat/lon (a file without them is evaluation-only data)."""
        return self.lat_all is not None

    def require_location(self, purpose: str) -> None:
        """A one-line DataError naming the file when it has no lat/lon; ``purpose`` says what
        needs them (e.g. ``"geo.name: georank"``)."""
        if not self.has_location:
            raise DataError(f"{self.path}: lat/lon: the file has no locations (evaluation-only data); "
                            f"{purpose} needs them")

    @property
    def lat(self) -> np.ndarray:
        """Latitudes (degrees) of the dataset's samples; a DataError without locations."""
        self.require_location("GeoDataset.lat")
        return self.lat_all[self.indices]

    @property
    def lon(self) -> np.ndarray:
        """Longitudes (degrees) of the dataset's samples; a DataError without locations."""
        self.require_location("GeoDataset.lon")
        return self.lon_all[self.indices]

    @property
    def has_mask(self) -> bool:
        """Whether the samples have per-pixel masks (item key ``mask``)."""
        return self._mask is not None

    @property
    def mask_classes(self) -> Optional[List[str]]:
        """The class names of the mask values (the ``mask_classes`` attribute); None without masks."""
        return None if self._mask is None else list(self._mask[0])

    @property
    def mask_nodata(self) -> Optional[int]:
        """The mask value of pixels without a label (``mask_nodata``); None without masks."""
        return None if self._mask is None else self._mask[1]

    def _require_mask(self) -> None:
        if self._mask is None:
            raise DataError(f"{self.path}: {MASK.name}: the file has no masks (per-pixel labels)")

    @property
    def targets(self) -> Optional[np.ndarray]:
        return None if self._labels_all is None else self._labels_all[self.indices]

    def check_bands(self, in_chans: int, what: str = "the model") -> None:
        """Raise a clear error when ``what`` expects another number of bands."""
        if in_chans != self.in_chans:
            raise DataError(
                f"{self.path}: bands: the data has {self.in_chans} bands ({', '.join(self.bands)}) "
                f"but {what} expects {in_chans}"
            )


# ----------------------------------------------------------------------------- batch rows
class BatchRow(Mapping):
    """Row ``j`` of a batch dict, as a read-only mapping: ``row[key]`` is ``batch[key][j]``. The
    default collate turns the rows of one whole batch, in order, back into the batch itself."""

    __slots__ = ("batch", "j", "size")

    def __init__(self, batch: Dict[str, Any], j: int, size: int):
        self.batch, self.j, self.size = batch, j, size

    def __getitem__(self, key: str) -> Any:
        return self.batch[key][self.j]

    def __iter__(self) -> Iterator[str]:
        return iter(self.batch)

    def __len__(self) -> int:
        return len(self.batch)

    def __repr__(self) -> str:
        return f"BatchRow({self.j} of {self.size}: {', '.join(self.batch)})"


def batch_rows(batch: Dict[str, Any]) -> List[BatchRow]:
    """The rows of a batch dict (see :class:`BatchRow`)."""
    size = len(batch[IMAGES.sample_key])
    return [BatchRow(batch, j, size) for j in range(size)]


def collate_batch_rows(rows: Sequence[BatchRow], *, collate_fn_map=None) -> Dict[str, Any]:
    """Collate :class:`BatchRow` s: all rows of one batch, in order, are that batch (no copy);
    anything else (rows of several batches, reordered, a subset) is collated key by key."""
    first = rows[0].batch
    whole = len(rows) == rows[0].size and all(r.batch is first and r.j == j for j, r in enumerate(rows))
    if whole:
        return first.copy()  # a plain dict's copy is dict(first); a subclass may keep what it carries
    return {key: collate([r[key] for r in rows], collate_fn_map=collate_fn_map) for key in first}


# torch documents extending the default collate this way; rows of other types are untouched
default_collate_fn_map[BatchRow] = collate_batch_rows


def _empty(shape: tuple, shared: bool, dtype=np.uint16) -> torch.Tensor:
    """An uninitialised tensor (uint16 unless ``dtype``); in a DataLoader worker (and ``shared``),
    in shared memory."""
    if shared and torch.utils.data.get_worker_info() is not None:
        try:  # what torch's collate_tensor_fn does for the batches it stacks in a worker
            like = torch.from_numpy(np.empty(0, dtype))
            storage = like._typed_storage()._new_shared(int(np.prod(shape)))
            return like.new(storage).view(shape)
        except (AttributeError, RuntimeError):  # pragma: no cover - another torch: a plain tensor
            pass
    # numpy's allocation, not torch.empty: glibc then reuses the freed memory of the previous
    # batch, while torch's aligned allocation of a large block maps fresh pages every time and
    # pays a page fault per 4 KiB (measured: 6x slower for a batch of 256 x 12 x 120 x 120)
    return torch.from_numpy(np.empty(shape, dtype))


def _one_raw_chunk_per_sample(ds: h5py.Dataset, dtype=np.uint16) -> bool:
    """Whether each sample of ``ds`` is one uncompressed chunk of ``dtype`` in this machine's byte
    order, so a chunk can be read as the row it is (ssl-rs writes images and masks so)."""
    try:
        filters = ds.id.get_create_plist().get_nfilters()
    except Exception:  # pragma: no cover - an unusual HDF5 build
        return False
    return (ds.chunks == (1,) + tuple(ds.shape[1:]) and filters == 0 and ds.dtype.isnative
            and ds.dtype == np.dtype(dtype) and not ds.is_virtual)


def _default_scheme(f: h5py.File) -> Optional[str]:
    value = f.attrs.get("default_split")
    if value is None and "splits" in f and len(f["splits"]) == 1:
        return next(iter(f["splits"].keys()))
    return value.decode() if isinstance(value, bytes) else value


def _index_scheme(index, scheme: Optional[str]) -> str:
    """The split scheme of a sharded dataset: ``scheme``, else the index's default (or its only one)."""
    from .shards import INDEX_NAME

    schemes = sorted(index.splits)
    where = index.folder / INDEX_NAME
    if scheme is None:
        scheme = index.default_split or (schemes[0] if len(schemes) == 1 else None)
        if scheme is None:
            raise DataError(f"{where}: splits: no split scheme chosen; "
                            + (f"pick one of {schemes}" if schemes else "run `ssl-rs data split` first"))
    if scheme not in index.splits:
        raise DataError(f"{where}: splits/{scheme}: split scheme not found"
                        + (f" (have {schemes})" if schemes else "; run `ssl-rs data split` first"))
    return scheme
