"""A method's optimisation recipe: what its paper and authors' code train it with.

Every method class declares ``recipe = OptimRecipe(...)``. A config (``optimizer.*``) or the
Python API (``optim={...}``) overrides only the keys it sets; everything else comes from the
method. The resolved recipe is what the run uses, is written into the run's ``config.yaml`` and
is logged, so "which optimiser did this run get" is never a guess.

A recipe is plain data; :class:`~ssl_rs.methods.base.BaseMethod` turns it into the optimiser,
the learning-rate and weight-decay schedules and the gradient clipping.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import ConfigError

OPTIMIZERS = ("sgd", "lars", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")
LR_SCHEDULES = ("cosine", "constant")
CLIP_MODES = ("global", "per_parameter")
DECAY_EXCLUSIONS = ("bias_norm", "none")


@dataclass(frozen=True)
class OptimRecipe:
    """Optimiser, learning rate and weight decay schedules, gradient clipping.

    Attributes:
        name: ``sgd`` (momentum), ``lars`` (lightly's LARS) or ``adamw``.
        lr: base learning rate, for a global batch of 256 when ``lr_scaling`` is not ``none``.
        lr_scaling: ``linear`` (lr x batch/256, Goyal et al.; MoCo, SimCLR, DINO, MAE),
            ``sqrt`` (lr x sqrt(batch/256)) or ``none`` (the value as is).
        schedule: ``cosine`` (linear warm-up, then cosine to ``min_lr``, every step) or
            ``constant`` (linear warm-up, then constant).
        warmup_epochs: linear warm-up length; ``min_lr`` the cosine's floor (absolute).
        weight_decay: decay at the first step; ``weight_decay_end`` (optional) the value a
            cosine schedule reaches at the last step (DINO: 0.04 -> 0.4).
        momentum: SGD / LARS momentum. ``betas``: AdamW betas (MAE uses (0.9, 0.95)).
        exclude_from_decay: ``bias_norm`` (biases and normalisation parameters get no weight
            decay and no LARS adaptation, as solo-learn, DINO and MAE do) or ``none`` (every
            parameter, as ``torch.optim.X(model.parameters())`` does in the GeoRank authors' code).
        grad_clip: clip gradients to this norm (None: no clipping); ``grad_clip_mode`` ``global``
            (one norm over all parameters, ``torch.nn.utils.clip_grad_norm_``) or
            ``per_parameter`` (each parameter tensor on its own, DINO's ``clip_gradients``).
    """

    name: str = "sgd"
    lr: float = 0.03
    lr_scaling: str = "linear"
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    weight_decay: float = 1e-4
    weight_decay_end: Optional[float] = None
    momentum: float = 0.9
    betas: Tuple[float, float] = (0.9, 0.999)
    exclude_from_decay: str = "bias_norm"
    grad_clip: Optional[float] = None
    grad_clip_mode: str = "global"

    def override(self, changes: Optional[Mapping[str, Any]]) -> "OptimRecipe":
        """This recipe with the keys of ``changes`` that are not None replaced, validated."""
        changes = {k: v for k, v in (changes or {}).items() if v is not None}
        known = {f.name for f in fields(self)}
        for key in changes:
            if key not in known:
                raise ConfigError(f"optimizer.{key}: unknown optimiser setting (known: {', '.join(sorted(known))})")
        if changes.get("grad_clip") == 0:  # 0 turns a recipe's clipping off
            changes["grad_clip"] = None
        if "betas" in changes:
            changes["betas"] = tuple(float(b) for b in changes["betas"])
        out = replace(self, **changes)
        out.validate()
        return out

    def validate(self) -> None:
        for key, value, allowed in (("name", self.name, OPTIMIZERS), ("lr_scaling", self.lr_scaling, LR_SCALINGS),
                                    ("schedule", self.schedule, LR_SCHEDULES),
                                    ("grad_clip_mode", self.grad_clip_mode, CLIP_MODES),
                                    ("exclude_from_decay", self.exclude_from_decay, DECAY_EXCLUSIONS)):
            if value not in allowed:
                raise ConfigError(f"optimizer.{key}: must be one of {', '.join(allowed)}, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"optimizer.lr: must be positive, got {self.lr}")
        for key in ("weight_decay", "weight_decay_end", "min_lr", "warmup_epochs", "momentum"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"optimizer.{key}: must be >= 0, got {value}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"optimizer.grad_clip: must be positive (or null for none), got {self.grad_clip}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optimizer.betas: must be two numbers in [0, 1), got {list(self.betas)}")

    def scaled_lr(self, global_batch: int) -> float:
        """The peak learning rate for this global batch size."""
        factor = global_batch / 256
        return self.lr * {"linear": factor, "sqrt": math.sqrt(factor), "none": 1.0}[self.lr_scaling]

    def as_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.0, schedule: str = "cosine") -> float:
    """LR multiplier: linear warm-up from 0 over ``warmup`` steps (``step / warmup``, as BYOL,
    SimCLR and MAE do), then cosine from 1 to ``floor`` (``schedule="cosine"``) or 1
    (``"constant"``)."""
    if step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_value(step: int, total: int, start: float, end: float) -> float:
    """Cosine from ``start`` at step 0 to ``end`` at step ``total`` (the EMA momentum and
    DINO's weight decay follow it)."""
    progress = min(1.0, step / max(1, total))
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


#: MAE (He et al.; facebookresearch/mae ``main_pretrain.py``): AdamW blr 1.5e-4 x batch/256,
#: betas (0.9, 0.95), weight decay 0.05 (not on biases and norms), 40 warm-up epochs, cosine.
#: Cross-Scale MAE and NeighborMAE pretrain with it; SatMAE and ScaleMAE declare their variants.
MAE_RECIPE = OptimRecipe(name="adamw", lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, warmup_epochs=40)
