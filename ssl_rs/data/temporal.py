"""Temporal positives (Ayush et al., ICCV 2021): the second view shows the same place on
another date.

:class:`TemporalPositives` wraps a :class:`~ssl_rs.data.dataset.GeoDataset` whose file has
``group`` (a place id shared by the dates of one place) and adds to every item:

* ``image_positive``: the raw uint16 image (C, H, W) of another sample of the same ``group``
  with a different ``time`` (any other sample of the group when the file has no ``time``),
  chosen at random; the item's own image when its place has no other date in this dataset;
* ``has_temporal_positive``: bool tensor, False where ``image_positive`` is the item's own image;
* ``index_positive``: int64 file index of the positive (equal to ``index`` when there is none).

Contract with the method base class: it makes view 1 from ``image`` and view 2 from
``image_positive`` with the same augmentation pipeline
(:meth:`ssl_rs.methods.base.BaseMethod.make_views`); the geo regularizer keeps reading
``lat``/``lon`` of the item. Positives are taken only from the wrapped dataset (its split),
so training never sees a validation or test image.

The choice is a function of (seed, epoch, position). The epoch lives in shared memory, so a
:meth:`set_epoch` between epochs reaches DataLoader workers, persistent ones included; call it
at the start of every epoch, before the epoch's iterator is created. The shared machinery is
:class:`~ssl_rs.data.pairs.PairedSamples`.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from ..errors import DataError
from .dataset import GeoDataset
from .pairs import PairedSamples


class TemporalPositives(PairedSamples):
    """Adds ``image_positive`` (another date of the same place) to each item of ``dataset``."""

    added_keys = frozenset({"image_positive", "has_temporal_positive", "index_positive"})

    def __init__(self, dataset: GeoDataset, seed: int = 0):
        if dataset.group_all is None:
            raise DataError(
                f"{dataset.path}: group: temporal positives need a 'group' dataset "
                "(a place id shared by the dates of one place); this file has none"
            )
        super().__init__(dataset, seed)
        file_index = np.asarray(dataset.indices, np.int64)
        group = np.asarray(dataset.group_all)[file_index]
        if "time" in dataset.present:
            times = dataset.column_values("time")[file_index]  # of the file, or of every shard
            self._date = np.unique(times, return_inverse=True)[1].astype(np.int64).reshape(-1)
        else:
            self._date = np.arange(len(file_index), dtype=np.int64)  # every sample its own date
        # CSR of the dataset positions of each group: positions sorted by group, and for each
        # position the [start, end) of its group in that order
        self._order = np.argsort(group, kind="stable").astype(np.int64)
        sorted_groups = group[self._order]
        starts = np.searchsorted(sorted_groups, group, side="left")
        ends = np.searchsorted(sorted_groups, group, side="right")
        self._span = np.stack([starts, ends], axis=1).astype(np.int64)

    def candidates(self, position: int) -> np.ndarray:
        """Dataset positions of the other dates of this position's place."""
        start, end = self._span[position]
        members = self._order[start:end]
        return members[self._date[members] != self._date[position]]

    def positive_position(self, position: int) -> int:
        """The position whose image is the positive of ``position`` this epoch (itself if none)."""
        return self.partner_position(position)

    def add_partner(self, item: Dict[str, Any], position: int, partner: int) -> None:
        item["image_positive"] = self.partner_image(item, position, partner)
        item["has_temporal_positive"] = torch.tensor(partner != position)
        item["index_positive"] = torch.tensor(int(self.dataset.indices[partner]), dtype=torch.int64)

    def add_partners(self, batch: Dict[str, Any], positions: np.ndarray, partners: np.ndarray,
                     images: torch.Tensor) -> None:
        batch["image_positive"] = images
        batch["has_temporal_positive"] = torch.from_numpy(partners != positions)
        batch["index_positive"] = torch.from_numpy(self.dataset.indices[partners].astype(np.int64))
