"""Methods: one file per method, registered by name in ``ssl_rs.registry.METHODS``.

No module is imported here to register it: ``METHODS`` imports every module of this package the
first time it is asked for a name, so a new method is one file here plus its YAML config.
"""

from .base import BaseMethod, BaseMomentumMethod, momentum_schedule
from .recipe import OptimRecipe, warmup_cosine

__all__ = ["BaseMethod", "BaseMomentumMethod", "OptimRecipe", "momentum_schedule", "warmup_cosine"]
