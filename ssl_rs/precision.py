"""The precisions of forward passes, as Lightning names them, without importing torch: the config
checks a value's name (``eval.precision``) before anything is built; the evaluation code then
checks it against its device (:func:`ssl_rs.evaluation.features.check_precision`)."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

#: evaluation precisions, as Lightning names them
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
#: float32: a protocol's numbers then do not depend on the machine or on the pretraining's precision
DEFAULT_PRECISION = "32-true"
#: Lightning's short names, accepted and recorded under the full one
PRECISION_ALIASES = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


def precision_name(precision: Any, option: str = "precision") -> str:
    """``precision`` as one of :data:`PRECISIONS` (``None``: :data:`DEFAULT_PRECISION`; ``32``,
    ``bf16`` and ``16`` as Lightning reads them); a one-line ConfigError naming ``option`` otherwise."""
    if precision is None:
        return DEFAULT_PRECISION
    name = str(precision) if isinstance(precision, int) and not isinstance(precision, bool) else precision
    name = PRECISION_ALIASES.get(name, name) if isinstance(name, str) else None
    if name not in PRECISIONS:
        raise ConfigError(f"{option}: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return name
