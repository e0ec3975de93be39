"""The checkpoint zoo: verified pretrained weights, safe loading, band adaptation, run export.

    from ssl_rs.zoo import load_backbone
    backbone = load_backbone("resnet50_ssl4eo_s12_moco", bands=S2_BANDS_L2A)   # B10 filter dropped

Torch is imported only by the functions that need it, so ``ssl-rs`` starts fast.
"""

from __future__ import annotations

from . import entries  # noqa: F401  (fills ZOO)
from .cache import UnverifiedWeightsError, cache_dir, cached_path, download
from .weights import ZOO, WeightsEntry

_LAZY = {
    "load_backbone": "loading",
    "adapt_first_conv": "loading",
    "match_input_normalization": "loading",
    "read_weights_file": "loading",
    "to_backbone_keys": "loading",
    "UnsafeCheckpointError": "loading",
    "export_run": "export",
}

__all__ = ["ZOO", "WeightsEntry", "UnverifiedWeightsError", "cache_dir", "cached_path", "download", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
