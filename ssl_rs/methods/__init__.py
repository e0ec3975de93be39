"""Method registry: one file per method, registered by name in ``ssl_rs.registry.METHODS``."""

from . import byol, dino, mocov2, simclr, simsiam  # noqa: F401  (registration)
from . import mae  # noqa: F401  (MIM baseline)
from . import csp  # noqa: F401  (location contrastive)
from . import scalemae  # noqa: F401  (MIM baseline)
from . import satmae  # noqa: F401  (MIM baseline)
from . import crossscalemae  # noqa: F401  (MIM baseline)
from . import neighbormae  # noqa: F401  (MIM on neighbouring pairs)
from .base import BaseMethod, BaseMomentumMethod, momentum_schedule
from .recipe import OptimRecipe, warmup_cosine

__all__ = ["BaseMethod", "BaseMomentumMethod", "OptimRecipe", "momentum_schedule", "warmup_cosine"]
