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

from ..errors import ConfigError
from ..registry import METHODS
from .base import BaseMomentumMethod
from .recipe import OptimRecipe


@METHODS.register("dino", summary="DINO: multi-crop self-distillation, centring, teacher temperature warm-up")
class DINO(BaseMomentumMethod):
    """DINO. Use it with the ``multicrop`` augmentation (2 global + N local views); the teacher
    sees the global views, the student all views.

    The regularizer sees, by default, what the GeoRank authors feed it: the head outputs
    (prototype logits) of global view 1, once from the teacher and once from the student, the
    two regularizer losses averaged (``geo.embedding: teacher_student_logits``; the teacher term
    carries no gradient). ``student_logits`` uses the student's alone, ``bottleneck`` the
    student's L2-normalised bottleneck embedding (the input of the weight-normalised prototype
    layer).

    The final evaluation, online k-NN and export score the **teacher** backbone, as the paper
    does (``eval_encoder: student`` for the student). The recipe is the reference's
    (facebookresearch/dino ``main_dino.py``): AdamW lr 5e-4 x batch/256, 10 warm-up epochs,
    cosine to 1e-6, weight decay cosine 0.04 -> 0.4, per-parameter gradient clipping at 3.0,
    the last layer frozen during the first epoch, teacher momentum cosine 0.996 -> 1 per step.
    """

    n_views = -1  # as many as the multi-crop pipeline makes
    recipe = OptimRecipe(name="adamw", lr=5e-4, weight_decay=0.04, weight_decay_end=0.4, warmup_epochs=10,
                         min_lr=1e-6, grad_clip=3.0, grad_clip_mode="per_parameter")
    geo_embeddings = ("teacher_student_logits", "student_logits", "bottleneck")

    def __init__(self, backbone, *, hidden_dim: int = 2048, bottleneck_dim: int = 256, output_dim: int = 4096,
                 teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04, warmup_teacher_temp_epochs: int = 0,
                 student_temp: float = 0.1, center_momentum: float = 0.9, freeze_last_layer: int = 1,
                 eval_encoder: str = "teacher", base_tau: float = 0.996, **kwargs):
        super().__init__(backbone, base_tau=base_tau, **kwargs)
        if eval_encoder not in ("teacher", "student"):
            raise ConfigError(f"method.args.eval_encoder: must be 'teacher' or 'student', got {eval_encoder!r}")
        self.eval_encoder = eval_encoder

        def make_head() -> DINOProjectionHead:
            return DINOProjectionHead(backbone.num_features, hidden_dim, bottleneck_dim, output_dim,
                                      freeze_last_layer=freeze_last_layer)

        self.head = make_head()
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_head = make_head()  # weight-normalised layers cannot be deep-copied; init_targets copies
        self.criterion = DINOLoss(output_dim, warmup_teacher_temp=warmup_teacher_temp, teacher_temp=teacher_temp,
                                  warmup_teacher_temp_epochs=warmup_teacher_temp_epochs, student_temp=student_temp,
                                  center_momentum=center_momentum)
        self.embed_dim = bottleneck_dim if self.geo_embedding == "bottleneck" else output_dim
        self.init_targets()

    def momentum_pairs(self):
        return [(self.backbone, self.momentum_backbone), (self.head, self.momentum_head)]

    def evaluated_backbone(self):
        return self.momentum_backbone if self.eval_encoder == "teacher" else self.backbone

    @classmethod
    def checkpoint_backbone_prefix(cls, method_args):
        return "momentum_backbone." if method_args.get("eval_encoder", "teacher") == "teacher" else "backbone."

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
        z = self.geo_input(teacher_student_logits=(teacher[0], student[0]), student_logits=student[0],
                           bottleneck=F.normalize(bottleneck[0], dim=-1))
        return loss, z, {}

    def on_after_backward(self) -> None:
        self.head.cancel_last_layer_gradients(self.current_epoch)
