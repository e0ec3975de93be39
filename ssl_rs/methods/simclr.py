"""SimCLR (Chen et al., 2020): NT-Xent over in-batch negatives."""

from __future__ import annotations

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from ..registry import METHODS
from .base import BaseMethod
from .recipe import OptimRecipe


@METHODS.register("simclr", summary="SimCLR: NT-Xent with in-batch negatives (gathered across devices)")
class SimCLR(BaseMethod):
    """SimCLR. The regularizer sees the projection of the first view. Under DDP the
    negatives of every device are gathered (lightly's ``gather_distributed``)."""

    # SimCLR paper (appendix B.1): LARS lr 0.3 x batch/256, wd 1e-6, 10 warm-up epochs, cosine
    recipe = OptimRecipe(name="lars", lr=0.3, weight_decay=1e-6, momentum=0.9, warmup_epochs=10)

    def __init__(self, backbone, *, proj_hidden_dim: int = 2048, proj_output_dim: int = 128,
                 temperature: float = 0.1, **kwargs):
        super().__init__(backbone, **kwargs)
        self.projector = SimCLRProjectionHead(backbone.num_features, proj_hidden_dim, proj_output_dim)
        self.criterion = NTXentLoss(temperature, gather_distributed=True)
        self.embed_dim = proj_output_dim

    def ssl_loss(self, views, batch):
        z = [self.projector(self.backbone(v)) for v in views[:2]]
        return self.criterion(z[0], z[1]), self.geo_input(projection=z[0]), {}
