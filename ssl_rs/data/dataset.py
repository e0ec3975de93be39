"""``GeoDataset``: lazy, worker-safe reads of an ssl-rs HDF5 file.

Each item is a dict: ``image`` (C, H, W) uint16 tensor, ``lat``, ``lon`` (float64, degrees),
``index`` (position in the file), plus ``label`` (int64) or ``labels`` (float32 multi-hot),
``group`` (int64) and ``time`` (ISO string) when the file has them: every column of
:data:`ssl_rs.data.columns.COLUMNS` with a ``sample_key``, converted by its ``to_sample``. The
raw uint16 image is kept on purpose: augmentation and normalisation run later, batch-wise, on
the device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .bands import band_indices
from .columns import COLUMNS, IMAGES, SPLIT_CODES
from .reader import attr_list, check_open, open_h5, read_split

#: the columns that items carry besides the image, in the table's order
ITEM_COLUMNS = tuple(c for c in COLUMNS if c.sample_key is not None and c is not IMAGES)
#: the optional ones, the keys an item has only when the file has the column
PER_SAMPLE_KEYS = tuple(c.sample_key for c in ITEM_COLUMNS if not c.required)


class GeoDataset(Dataset):
    """Samples of one split of an ssl-rs HDF5 file.

    Args:
        path: the HDF5 file.
        split: "train", "val", "test", or None for every sample.
        scheme: which split scheme in ``splits/`` (default: the file's ``default_split``).
        bands: optional subset of band names, in the order the model expects.
        indices: optional explicit sample indices (applied after the split).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: Optional[str] = None,
        scheme: Optional[str] = None,
        bands: Optional[Sequence[str]] = None,
        indices: Optional[Sequence[int]] = None,
    ):
        self.path = Path(path)
        with open_h5(self.path) as f:
            check_open(f, self.path)
            self.file_bands: List[str] = attr_list(f, "bands") or []
            self.class_names: List[str] = attr_list(f, "class_names") or []
            n, _, h, w = f["images"].shape
            self.size = (int(h), int(w))
            self.gsd = float(f.attrs["gsd"]) if "gsd" in f.attrs else None
            mean = np.asarray(f.attrs.get("band_mean", np.zeros(len(self.file_bands))), np.float64)
            std = np.asarray(f.attrs.get("band_std", np.ones(len(self.file_bands))), np.float64)
            self._columns = [c for c in ITEM_COLUMNS if c.name in f]
            # numbers are held in memory (small, and read for every item); strings are read per
            # item, so that workers do not each hold a copy of a large object array
            self._in_memory = {c.name: f[c.name][:] for c in self._columns if not c.is_string}
            self.lat_all = self._in_memory["lat"]
            self.lon_all = self._in_memory["lon"]
            self.present = [c.sample_key for c in self._columns if not c.required]
            self.group_all = self._in_memory.get("group")
            self.split_scheme = None
            selected = np.arange(n)
            if split is not None:
                if split not in SPLIT_CODES:
                    raise DataError(f"{self.path}: split: unknown split {split!r} (use one of {SPLIT_CODES})")
                codes = read_split(f, scheme)
                self.split_scheme = scheme or _default_scheme(f)
                selected = np.flatnonzero(codes == SPLIT_CODES.index(split))
                if len(selected) == 0:
                    raise DataError(f"{self.path}: splits/{self.split_scheme}: no samples in split {split!r}")
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
        self.band_mean = mean[sel].tolist()
        self.band_std = std[sel].tolist()
        self._file: Optional[h5py.File] = None
        self._pid: Optional[int] = None

    # Each DataLoader worker opens its own handle: h5py handles must not cross fork().
    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        index = int(self.indices[i])
        f = self._handle()
        image = f[IMAGES.name][index]
        if self.band_index is not None:
            image = image[self.band_index]
        item: Dict[str, Any] = {IMAGES.sample_key: IMAGES.to_sample(image)}
        for column in self._columns:
            values = self._in_memory.get(column.name)
            row = values[index] if values is not None else f[column.name][index]
            item[column.sample_key] = column.to_sample(row)
        item["index"] = torch.tensor(index, dtype=torch.int64)
        return item

    # -- metadata used by models, regularizers and samplers -----------------------------
    @property
    def keys(self) -> set:
        """Batch keys this dataset provides (checked against a regularizer's ``needs``)."""
        return {IMAGES.sample_key, "index", *(c.sample_key for c in self._columns)}

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
        return "labels" if "labels" in self.present else ("label" if "label" in self.present else None)

    @property
    def lat(self) -> np.ndarray:
        return self.lat_all[self.indices]

    @property
    def lon(self) -> np.ndarray:
        return self.lon_all[self.indices]

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


def _default_scheme(f: h5py.File) -> Optional[str]:
    value = f.attrs.get("default_split")
    if value is None and "splits" in f and len(f["splits"]) == 1:
        return next(iter(f["splits"].keys()))
    return value.decode() if isinstance(value, bytes) else value
