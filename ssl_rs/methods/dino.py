"""DINO (Caron et al., 2021): multi-crop self-distillation with centring and teacher
temperature warm-up (lightly's ``DINOLoss`` and ``DINOProjectionHead``)."""

from __future__ import annotations

import copy
from typing import List

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from torch import Tensor
from torch.nn import functional as F

from ..registry import METHODS
from .base import BaseMomentumMethod


@METHODS.register("dino", summary="DINO: multi-crop self-distillation, centring, teacher temperature warm-up")
class DINO(BaseMomentumMethod):
    """DINO. Use it with the ``multicrop`` augmentation (2 global + N local views); the teacher
    sees the global views, the student all views. The regularizer sees the student's
    L2-normalised bottleneck embedding of the first global view (the head's input to its
    weight-normalised prototype layer), not the prototype logits."""

    n_views = -1  # as many as the multi-crop pipeline makes

    def __init__(self, backbone, *, hidden_dim: int = 2048, bottleneck_dim: int = 256, output_dim: int = 4096,
                 teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04, warmup_teacher_temp_epochs: int = 0,
                 student_temp: float = 0.1, center_momentum: float = 0.9, freeze_last_layer: int = 1,
                 base_tau: float = 0.996, **kwargs):
        kwargs.setdefault("optimizer", "adamw")
        kwargs.setdefault("lr", 5e-4)
        kwargs.setdefault("weight_decay", 0.04)
        super().__init__(backbone, base_tau=base_tau, **kwargs)
        def make_head() -> DINOProjectionHead:
            return DINOProjectionHead(backbone.num_features, hidden_dim, bottleneck_dim, output_dim,
                                      freeze_last_layer=freeze_last_layer)

        self.head = make_head()
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_head = make_head()  # weight-normalised layers cannot be deep-copied; init_targets copies
        self.criterion = DINOLoss(output_dim, warmup_teacher_temp=warmup_teacher_temp, teacher_temp=teacher_temp,
                                  warmup_teacher_temp_epochs=warmup_teacher_temp_epochs, student_temp=student_temp,
                                  center_momentum=center_momentum)
        self.embed_dim = bottleneck_dim
        self.init_targets()

    def momentum_pairs(self):
        return [(self.backbone, self.momentum_backbone), (self.head, self.momentum_head)]

    @staticmethod
    def _by_size(views: List[Tensor], fn) -> List[Tensor]:
        """Run ``fn`` once per distinct view size (global crops together, local crops together)."""
        out: List[Tensor] = [None] * len(views)  # type: ignore[list-item]
        sizes = sorted({v.shape[-1] for v in views}, reverse=True)
        for s in sizes:
            idx = [i for i, v in enumerate(views) if v.shape[-1] == s]
            chunks = fn(torch.cat([views[i] for i in idx])).chunk(len(idx))
            for i, c in zip(idx, chunks):
                out[i] = c
        return out

    def ssl_loss(self, views, batch):
        n_global = 2
        bottleneck = self._by_size(views, lambda x: self.head.layers(self.backbone(x)))
        student = [self.head.last_layer(F.normalize(b, dim=-1)) for b in bottleneck]
        with torch.no_grad():
            teacher = self._by_size(views[:n_global], lambda x: self.momentum_head(self.momentum_backbone(x)))
        loss = self.criterion(teacher, student, epoch=self.current_epoch)
        return loss, F.normalize(bottleneck[0], dim=-1), {}

    def on_after_backward(self) -> None:
        self.head.cancel_last_layer_gradients(self.current_epoch)
