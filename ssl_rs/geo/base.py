"""The geo-regularizer contract.

A regularizer sees the embeddings the method exposes (``z``, shape (B, D)) and the batch
dict (``lat``, ``lon`` in degrees, ``group``, cluster ids, ...) and returns a scalar loss.
It declares what it reads in ``needs``; :meth:`check_needs` is called before the first
training step so that a dataset without coordinates fails at once with a clear message.
The total loss is ``(1 - alpha) * L_ssl + alpha * L_geo`` (applied by the method base class).
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class GeoRegularizer(nn.Module):
    #: batch keys this regularizer reads
    needs: FrozenSet[str] = frozenset({"lat", "lon"})

    def __init__(self) -> None:
        super().__init__()
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
