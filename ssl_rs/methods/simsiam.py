"""SimSiam (Chen & He, 2021): predictor and a stop-gradient on the target branch."""

from __future__ import annotations

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

from ..registry import METHODS
from .base import BaseMethod
from .recipe import OptimRecipe


@METHODS.register("simsiam", summary="SimSiam: predictor + stop-gradient, no negatives, no EMA")
class SimSiam(BaseMethod):
    """SimSiam. The regularizer sees the projection of the first view (with gradient); the
    targets of the symmetric negative-cosine loss are the *detached* projections."""

    # SimSiam paper / facebookresearch/simsiam: SGD lr 0.05 x batch/256, wd 1e-4 on every
    # parameter, momentum 0.9, cosine; the predictor's lr stays fixed (``fix_predictor_lr``)
    recipe = OptimRecipe(name="sgd", lr=0.05, weight_decay=1e-4, momentum=0.9, exclude_from_decay="none")
    # GeoRank authors: the projection of view 1; the prediction is the other choice
    geo_embeddings = ("projection", "prediction")

    def __init__(self, backbone, *, proj_hidden_dim: int = 2048, proj_output_dim: int = 2048,
                 pred_hidden_dim: int = 512, fix_predictor_lr: bool = True, **kwargs):
        super().__init__(backbone, **kwargs)
        self.fix_predictor_lr = fix_predictor_lr
        self.projector = SimSiamProjectionHead(backbone.num_features, proj_hidden_dim, proj_output_dim)
        self.predictor = SimSiamPredictionHead(proj_output_dim, pred_hidden_dim, proj_output_dim)
        self.criterion = NegativeCosineSimilarity()
        self.embed_dim = proj_output_dim

    def fixed_lr_prefixes(self):
        # facebookresearch/simsiam --fix-pred-lr, the setting of its reported results
        return ("predictor.",) if self.fix_predictor_lr else ()

    def ssl_loss(self, views, batch):
        z = [self.projector(self.backbone(v)) for v in views[:2]]
        p = [self.predictor(zi) for zi in z]
        loss = 0.5 * (self.criterion(p[0], z[1].detach()) + self.criterion(p[1], z[0].detach()))
        return loss, self.geo_input(projection=z[0], prediction=p[0]), {}
