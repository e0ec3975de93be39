"""BYOL (Grill et al., 2020): predictor on the online branch, EMA target, no negatives."""

from __future__ import annotations

import copy

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

from ..registry import METHODS
from .base import BaseMomentumMethod
from .recipe import OptimRecipe


@METHODS.register("byol", summary="BYOL: online predictor regresses an EMA target (negative cosine)")
class BYOL(BaseMomentumMethod):
    """BYOL. The regularizer sees the online prediction of the first view (the GeoRank authors'
    choice; ``geo.embedding: projection`` gives the projection). The target branch runs under
    ``no_grad`` and its parameters are frozen: only the EMA moves it. The loss is lightly's
    negative cosine similarity (BYOL's ``2 - 2 cos`` up to an affine map)."""

    # BYOL paper (appendix C): LARS lr 0.2 x batch/256, wd 1.5e-6, 10 warm-up epochs, cosine;
    # biases and BatchNorm excluded from decay and LARS adaptation; tau 0.996 -> 1 per step
    recipe = OptimRecipe(name="lars", lr=0.2, weight_decay=1.5e-6, momentum=0.9, warmup_epochs=10)
    geo_embeddings = ("prediction", "projection")

    def __init__(self, backbone, *, proj_hidden_dim: int = 4096, proj_output_dim: int = 256,
                 pred_hidden_dim: int = 4096, base_tau: float = 0.996, **kwargs):
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
        return loss, self.geo_input(prediction=p[0], projection=z[0]), {}
