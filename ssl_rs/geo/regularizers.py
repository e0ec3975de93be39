"""Importing this module registers every geo regularizer in ``REGULARIZERS``."""

from . import ayush, geobasic, georank, tile2vec  # noqa: F401

__all__ = ["ayush", "geobasic", "georank", "tile2vec"]
