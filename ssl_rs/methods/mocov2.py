"""MoCo v2 (Chen et al., 2020): MLP projection, EMA key encoder and a queue of negatives."""

from __future__ import annotations

import copy

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead

from ..registry import METHODS
from .base import BaseMomentumMethod


@METHODS.register("mocov2", summary="MoCo v2: EMA key encoder, queue of negatives (InfoNCE)")
class MoCoV2(BaseMomentumMethod):
    """MoCo v2. The regularizer sees the online (query) projection of the first view.

    The loss is symmetrised over the two views (as in solo-learn and lightly's examples);
    keys of both views enter the queue. Under DDP, keys are gathered from every device before
    they enter the queue (lightly's ``gather_distributed``). Shuffle-BN is not used: with
    per-device BatchNorm it only matters across devices, and it is documented as a difference.
    """

    def __init__(
        self,
        backbone,
        *,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        temperature: float = 0.2,
        queue_size: int = 65536,
        base_tau: float = 0.99,
        **kwargs,
    ):
        super().__init__(backbone, base_tau=base_tau, **kwargs)
        self.projector = MoCoProjectionHead(backbone.num_features, proj_hidden_dim, proj_output_dim)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        self.criterion = NTXentLoss(temperature, memory_bank_size=(queue_size, proj_output_dim), gather_distributed=True)
        self.embed_dim = proj_output_dim
        self.init_targets()

    def momentum_pairs(self):
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    # lightly keeps the queue in non-persistent buffers; store it explicitly so a resumed run
    # continues with the same negatives.
    def on_save_checkpoint(self, checkpoint) -> None:
        super().on_save_checkpoint(checkpoint)
        bank = self.criterion.memory_bank
        checkpoint["moco_queue"] = {"bank": bank.bank.detach().cpu(), "ptr": bank.bank_ptr.detach().cpu()}

    def on_load_checkpoint(self, checkpoint) -> None:
        queue = checkpoint.get("moco_queue")
        if queue is not None:
            bank = self.criterion.memory_bank
            bank.bank.copy_(queue["bank"])
            bank.bank_ptr.copy_(queue["ptr"])

    def ssl_loss(self, views, batch):
        q = [self.projector(self.backbone(v)) for v in views[:2]]
        with torch.no_grad():
            k = [self.momentum_projector(self.momentum_backbone(v)) for v in views[:2]]
        loss = 0.5 * (self.criterion(q[0], k[1]) + self.criterion(q[1], k[0]))
        return loss, q[0], {}
