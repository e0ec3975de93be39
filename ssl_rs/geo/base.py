"""The geo-regularizer contract.

A regularizer sees the embeddings the method exposes (``z``, shape (B, D)) and the batch
dict (``lat``, ``lon`` in degrees, ``group``, cluster ids, ...) and returns a scalar loss.
It declares what it reads in ``needs``; :meth:`check_needs` is called before the first
training step so that a dataset without coordinates fails at once with a clear message.
The total loss is ``(1 - alpha) * L_ssl + alpha * L_geo`` (applied by the method base class).

Under DDP a regularizer sees its own device's samples only. With ``gather=True`` (``geo.gather``),
the pairwise ones (GeoRank, GeoBasic, Tile2Vec) compare each of their rows with the samples of
every device instead (:func:`batch_columns`), and scale their loss so that the average over the
devices, and the gradient DDP averages, are those of one device holding the global batch.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, Mapping, NamedTuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class BatchColumns(NamedTuple):
    """What the rows of a pairwise loss (this device's samples) are compared with."""

    #: (B, ...) the columns' embeddings: the rows themselves, or every device's rows in rank order
    #: (gathered differentiably, so the gradient of a column reaches the device that owns it)
    z: Tensor
    #: (B,) the columns' coordinates
    lat: Tensor
    lon: Tensor
    #: row i's own sample is column ``offset + i``
    offset: int
    #: how many devices' rows the columns hold (1 without gathering)
    world: int


def batch_columns(z: Tensor, lat: Tensor, lon: Tensor, gather: bool) -> BatchColumns:
    """The rows themselves, or, with ``gather`` under torch.distributed, the embeddings (with
    gradient) and coordinates of every process's rows. Every process must hold the same number
    of rows (``drop_last``, as training uses), as ``all_gather`` needs."""
    from lightly.utils import dist

    if not gather or dist.world_size() == 1:
        return BatchColumns(z, lat, lon, 0, 1)
    coordinates = torch.cat(dist.gather(torch.stack([lat, lon.to(lat.dtype)], dim=1).detach()))
    return BatchColumns(torch.cat(dist.gather(z)), coordinates[:, 0], coordinates[:, 1],
                        dist.rank() * z.shape[0], dist.world_size())


def global_sum(x: Tensor, columns: BatchColumns) -> Tensor:
    """``x`` summed over the processes whose rows the columns hold (no gradient): the count of
    pairs or triplets a gathered loss is averaged over. An all-reduce, which does not make a
    GPU wait for the host."""
    if columns.world == 1:
        return x
    total = x.detach().clone()
    torch.distributed.all_reduce(total)
    return total


def drop_self(m: Tensor, offset: int = 0) -> Tensor:
    """(b, B) -> (b, B - 1): row i without column ``offset + i`` (its own sample), the other
    entries in order. Square with offset 0: a view-and-slice; otherwise one ``gather`` with
    indices fixed by the shapes. Neither waits for the GPU."""
    b, n = m.shape[0], m.shape[1]
    if offset == 0 and b == n:
        return m.reshape(-1)[1:].view(b - 1, b + 1)[:, :-1].reshape(b, b - 1)
    col = torch.arange(n - 1, device=m.device)
    own = torch.arange(b, device=m.device).unsqueeze(1) + offset
    return m.gather(1, (col + (col >= own)).expand(b, n - 1))


class GeoRegularizer(nn.Module):
    #: batch keys this regularizer reads
    needs: FrozenSet[str] = frozenset({"lat", "lon"})

    def __init__(self, gather: bool = False) -> None:
        super().__init__()
        #: under DDP, compare this device's samples with every device's (``geo.gather``)
        self.gather = bool(gather)
        #: scalars worth logging from the last forward (e.g. the fraction of anchors with a triplet)
        self.metrics: Dict[str, Tensor] = {}

    def check_needs(self, available: Iterable[str], source: str = "the dataset") -> None:
        missing = sorted(self.needs - set(available))
        if missing:
            raise ConfigError(
                f"{source}: regularizer {type(self).__name__} needs {', '.join(missing)}, "
                f"which {source} does not provide"
            )

    def setup(self, dataset, embed_dim: int) -> None:
        """Called once before training with the training dataset (a ``GeoDataset``: ``.lat``,
        ``.lon``, ``.path``, ``.keys``) and the dimension of ``z``; builds heads, fits clusters."""

    @staticmethod
    def loss_dtype(z: Tensor) -> torch.dtype:
        """The loss's dtype: at least float32, whatever precision ``z`` comes in."""
        return torch.promote_types(z.dtype, torch.float32)

    def no_pair_loss(self, z: Tensor) -> Tensor:
        """The loss of a batch with no pair to compare (one sample): zero, with ``z`` still in the
        graph, so the backward reaches every parameter that made ``z`` (as DDP expects)."""
        self.metrics = {}
        return (z.sum() * 0).to(self.loss_dtype(z))

    def forward(self, z: Tensor, batch: Mapping[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
