"""BYOL (Grill et al., 2020): predictor on the online branch, EMA target, no negatives."""

from __future__ import annotations

import copy

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

from ..registry import METHODS
from .base import BaseMomentumMethod


@METHODS.register("byol", summary="BYOL: online predictor regresses an EMA target (negative cosine)")
class BYOL(BaseMomentumMethod):
    """BYOL. The regularizer sees the online projection of the first view. The target branch
    runs under ``no_grad`` and its parameters are frozen: only the EMA moves it. The loss is
    lightly's negative cosine similarity (BYOL's ``2 - 2 cos`` up to an affine map)."""

    def __init__(self, backbone, *, proj_hidden_dim: int = 4096, proj_output_dim: int = 256,
                 pred_hidden_dim: int = 4096, base_tau: float = 0.99, **kwargs):
        super().__init__(backbone, base_tau=base_tau, **kwargs)
        self.projector = BYOLProjectionHead(backbone.num_features, proj_hidden_dim, proj_output_dim)
        self.predictor = BYOLPredictionHead(proj_output_dim, pred_hidden_dim, proj_output_dim)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        self.criterion = NegativeCosineSimilarity()
        self.embed_dim = proj_output_dim
        self.init_targets()

    def momentum_pairs(self):
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def ssl_loss(self, views, batch):
        z = [self.projector(self.backbone(v)) for v in views[:2]]
        p = [self.predictor(zi) for zi in z]
        with torch.no_grad():
            t = [self.momentum_projector(self.momentum_backbone(v)) for v in views[:2]]
        loss = 0.5 * (self.criterion(p[0], t[1]) + self.criterion(p[1], t[0]))
        return loss, z[0], {}
