"""Method registry: one file per method, registered by name in ``ssl_rs.registry.METHODS``."""

from . import byol, dino, mocov2, simclr, simsiam  # noqa: F401  (registration)
from .base import BaseMethod, BaseMomentumMethod, momentum_schedule, warmup_cosine

__all__ = ["BaseMethod", "BaseMomentumMethod", "momentum_schedule", "warmup_cosine"]
