"""MoCo v2 (Chen et al., 2020): MLP projection, EMA key encoder and a queue of negatives."""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.distributed as dist
from lightly.models.modules import MoCoProjectionHead
from torch import Tensor
from torch.nn import functional as F

from ..errors import ConfigError
from ..registry import METHODS
from .base import BaseMomentumMethod
from .recipe import OptimRecipe


def moco_infonce(query: Tensor, key: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """InfoNCE of each query against its key (the positive) and every row of ``queue`` (the
    negatives): ``CE([q.k, q.queue^T] / T, 0)``, averaged over the batch. ``query`` and ``key``
    are L2-normalised here; ``queue`` (K x D) holds normalised keys."""
    q = F.normalize(query, dim=1)
    k = F.normalize(key, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ queue.t()
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def _gather(x: Tensor) -> Tensor:
    """``x`` of every process, concatenated in rank order (keys only: no gradient needed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    return x


@METHODS.register("mocov2", summary="MoCo v2: EMA key encoder, queue of negatives (InfoNCE)")
class MoCoV2(BaseMomentumMethod):
    """MoCo v2. The regularizer sees the online (query) projection of the first view.

    ``symmetric=True`` (default, solo-learn's MoCo v2+): both directions, ``q0`` against ``k1``
    and ``q1`` against ``k0``, each scored against the queue **as it was before this step**,
    then the keys of both views (gathered from every device under DDP) enter the queue; as in
    solo-learn, each view has its own queue of ``queue_size`` keys (view 2's keys are the
    negatives of view 1's queries and vice versa). ``symmetric=False``: the one-directional loss
    of the MoCo paper and of the GeoRank authors' code (``q0`` against ``k1`` and one queue; only
    ``k1`` is enqueued). Keys are written into the queue circularly, so any batch size works
    with any ``queue_size``.

    Shuffle-BN is not used: with per-device BatchNorm it only matters across devices
    (documented as a difference).
    """

    # MoCo v2 paper / facebookresearch/moco: SGD lr 0.03 at batch 256, wd 1e-4, cosine, 200 epochs
    recipe = OptimRecipe(name="sgd", lr=0.03, weight_decay=1e-4, momentum=0.9)

    def __init__(
        self,
        backbone,
        *,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        temperature: float = 0.2,
        queue_size: int = 65536,
        symmetric: bool = True,
        base_tau: float = 0.999,
        final_tau: float = 0.999,
        **kwargs,
    ):
        super().__init__(backbone, base_tau=base_tau, final_tau=final_tau, **kwargs)
        if queue_size < 1:
            raise ConfigError(f"method.args.queue_size: must be positive, got {queue_size}")
        self.projector = MoCoProjectionHead(backbone.num_features, proj_hidden_dim, proj_output_dim)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        self.temperature = temperature
        self.symmetric = symmetric
        # queue[v] holds normalised keys of view v (one queue when not symmetric); a persistent
        # buffer, so a resumed run continues with the same negatives
        queue = F.normalize(torch.randn(2 if symmetric else 1, queue_size, proj_output_dim), dim=-1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.embed_dim = proj_output_dim
        self.init_targets()

    def momentum_pairs(self):
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (n_queues x n x D, normalised here) at the pointer, wrapping around."""
        keys = F.normalize(keys.to(self.queue.dtype), dim=-1)
        size = self.queue.shape[1]
        n = min(keys.shape[1], size)
        idx = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % size
        self.queue[:, idx] = keys[:, -n:]
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def contrast(self, q: Sequence[Tensor], k: Sequence[Tensor]) -> Tensor:
        """The loss of queries ``q`` and keys ``k`` of the two views against the queue as it was
        before this step; then (in training) this step's keys enter the queue."""
        queue = self.queue.detach().clone()
        if self.symmetric:
            loss = 0.5 * (moco_infonce(q[0], k[1], queue[1], self.temperature)
                          + moco_infonce(q[1], k[0], queue[0], self.temperature))
            new_keys = torch.stack([_gather(k[0]), _gather(k[1])])
        else:
            loss = moco_infonce(q[0], k[1], queue[0], self.temperature)
            new_keys = _gather(k[1])[None]
        if self.training:
            self.enqueue(new_keys)
        return loss

    def ssl_loss(self, views, batch):
        q = [self.projector(self.backbone(v)) for v in views[:2]]
        with torch.no_grad():
            k = [self.momentum_projector(self.momentum_backbone(v)) for v in views[:2]]
        return self.contrast(q, k), self.geo_input(projection=q[0]), {}
