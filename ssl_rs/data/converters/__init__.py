"""Converters from real Sentinel-2 dataset distributions to the ssl-rs HDF5 layout.

``convert("eurosat-ms", "EuroSAT_MS/", "eurosat.h5")`` or ``ssl-rs data convert eurosat-ms SRC -o OUT.h5``.
Every converter writes through :class:`~ssl_rs.data.layout.H5Writer` (atomic: a failed
conversion leaves neither the output nor a temporary file), stores bands in canonical
Sentinel-2 order by name, and takes lat/lon from the GeoTIFF georeferencing (patch centre).
Each format is one module here that declares its :class:`Converter` (see ``base.py``) and its
:class:`~ssl_rs.data.converters.parallel.ConversionPlan` (what it reads, item by item), which
``parallel.py`` writes into one file or, with ``shard_size``, into a folder of shards with
several processes (``convert(..., shard_size=10_000, workers=8)``, ``ssl-rs data convert ...
--shard-size N --workers W``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import CONVERTERS, Converter, Converters, Option, check_source


def get_converter(fmt: str) -> Converter:
    """The converter named ``fmt``; an unknown name raises ConfigError with the closest match."""
    return CONVERTERS.get(fmt)


def convert(fmt: str, src: str | os.PathLike, out: str | os.PathLike, **options: Any) -> Path:
    """Convert the dataset folder ``src`` in format ``fmt`` to the HDF5 file ``out``; returns ``out``.

    ``options`` are the converter's (see ``CONVERTERS.get(fmt).options``) plus ``progress`` (bool),
    ``shard_size`` (write a folder of shards of at most that many samples) and ``workers``
    (processes writing shards).
    """
    return get_converter(fmt).convert(src, out, **options)


__all__ = ["CONVERTERS", "Converter", "Converters", "Option", "check_source", "convert", "get_converter"]
