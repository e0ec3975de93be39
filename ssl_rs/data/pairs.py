"""Datasets whose items come in pairs: each sample plus one partner drawn from the same dataset.

:class:`PairedSamples` is what temporal positives (:mod:`ssl_rs.data.temporal`) and neighbour
pairs (:mod:`ssl_rs.data.neighbors`) share. A subclass says which dataset positions may partner
a position (:meth:`PairedSamples.candidates`) and how the partner goes into the item
(:meth:`PairedSamples.add_partner`); this class picks one candidate per (seed, epoch,
position), falls back to the position itself when there is no candidate, and passes through
what trainers and regularizers read from the training dataset.

Partners are taken only from the wrapped dataset (its split), so training never sees a
validation or test image. A DataLoader batch is read in one pass (:meth:`PairedSamples.__getitems__`):
the items' and the partners' images together, each file row once, when the subclass adds its
keys batch-wise (:meth:`PairedSamples.add_partners`); otherwise item by item. The epoch lives in shared memory, so a :meth:`~PairedSamples.set_epoch`
between epochs reaches DataLoader workers, persistent ones included; call it at the start of
every epoch, before the epoch's iterator is created.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .dataset import GeoDataset, batch_rows


class PairedSamples(Dataset):
    """Each item of ``dataset`` plus a partner chosen at random among :meth:`candidates`."""

    #: item keys a subclass adds to the wrapped dataset's
    added_keys: FrozenSet[str] = frozenset()

    def __init__(self, dataset: GeoDataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def candidates(self, position: int) -> np.ndarray:
        """Dataset positions that may partner ``position`` (never ``position`` itself)."""
        raise NotImplementedError

    def add_partner(self, item: Dict[str, Any], position: int, partner: int) -> None:
        """Write the partner's keys into ``item``; ``partner == position`` means none."""
        raise NotImplementedError

    def partner_position(self, position: int) -> int:
        """This epoch's partner of ``position``: a function of (seed, epoch, position) only,
        so every worker and a resumed run agree; ``position`` itself when there is none."""
        candidates = self.candidates(position)
        if len(candidates) == 0:
            return position
        rng = np.random.default_rng([self.seed, self.epoch, position])
        return int(candidates[rng.integers(len(candidates))])

    def partner_image(self, item: Dict[str, Any], position: int, partner: int) -> torch.Tensor:
        """The partner's raw image, without a second read when the partner is the item."""
        return item["image"] if partner == position else self.dataset[partner]["image"]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        position = int(i)
        item = self.dataset[position]
        self.add_partner(item, position, self.partner_position(position))
        return item

    def add_partners(self, batch: Dict[str, Any], positions: np.ndarray, partners: np.ndarray,
                     images: torch.Tensor) -> None:
        """Batch-wise :meth:`add_partner`: write the partners' keys into the batch dict of
        ``positions`` (``images``: the partners' raw images, a (B, C, H, W) uint16 tensor). A subclass that does
        not define it is read item by item."""
        raise NotImplementedError

    def __getitems__(self, positions: Sequence[int]) -> List[Mapping]:
        """One DataLoader batch: the items' and the partners' images in one read (see
        :meth:`GeoDataset.__getitems__`), each row once even when an item is its own partner."""
        if type(self).add_partners is PairedSamples.add_partners or self.dataset.transforms is not None:
            return [self[int(p)] for p in positions]
        positions = np.asarray(positions, np.int64)
        partners = np.array([self.partner_position(int(p)) for p in positions.tolist()], np.int64)
        images = self.dataset._images(np.concatenate([positions, partners]), shared=True)
        batch = self.dataset.batch(positions, images=images[:len(positions)])
        self.add_partners(batch, positions, partners, images[len(positions):])
        return batch_rows(batch)

    # -- what trainers and regularizers read from the training dataset ------------------
    @property
    def keys(self) -> set:
        return self.dataset.keys | set(self.added_keys)

    @property
    def path(self):
        return self.dataset.path

    @property
    def indices(self) -> np.ndarray:
        return self.dataset.indices

    @property
    def lat(self) -> np.ndarray:
        return self.dataset.lat

    @property
    def lon(self) -> np.ndarray:
        return self.dataset.lon

    @property
    def group_all(self) -> np.ndarray:
        return self.dataset.group_all
