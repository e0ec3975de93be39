"""SimSiam (Chen & He, 2021): predictor and a stop-gradient on the target branch."""

from __future__ import annotations

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

from ..registry import METHODS
from .base import BaseMethod


@METHODS.register("simsiam", summary="SimSiam: predictor + stop-gradient, no negatives, no EMA")
class SimSiam(BaseMethod):
    """SimSiam. The regularizer sees the projection of the first view (with gradient); the
    targets of the symmetric negative-cosine loss are the *detached* projections."""

    def __init__(self, backbone, *, proj_hidden_dim: int = 2048, proj_output_dim: int = 2048,
                 pred_hidden_dim: int = 512, **kwargs):
        kwargs.setdefault("lr", 0.05)
        super().__init__(backbone, **kwargs)
        self.projector = SimSiamProjectionHead(backbone.num_features, proj_hidden_dim, proj_output_dim)
        self.predictor = SimSiamPredictionHead(proj_output_dim, pred_hidden_dim, proj_output_dim)
        self.criterion = NegativeCosineSimilarity()
        self.embed_dim = proj_output_dim

    def ssl_loss(self, views, batch):
        z = [self.projector(self.backbone(v)) for v in views[:2]]
        p = [self.predictor(zi) for zi in z]
        loss = 0.5 * (self.criterion(p[0], z[1].detach()) + self.criterion(p[1], z[0].detach()))
        return loss, z[0], {}
