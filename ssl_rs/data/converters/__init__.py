"""Converters from real Sentinel-2 dataset distributions to the ssl-rs HDF5 layout.

``convert("eurosat-ms", "EuroSAT_MS/", "eurosat.h5")`` or ``ssl-rs data convert eurosat-ms SRC -o OUT.h5``.
Every converter writes through :class:`~ssl_rs.data.layout.H5Writer` (atomic: a failed
conversion leaves neither the output nor a temporary file), stores bands in canonical
Sentinel-2 order by name, and takes lat/lon from the GeoTIFF georeferencing (patch centre).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from ...errors import ConfigError, DataError
from ...files import check_output
from .bigearthnet import convert_bigearthnet
from .eurosat import convert_eurosat
from .major_tom import convert_major_tom
from .ssl4eo import convert_ssl4eo


@dataclass(frozen=True)
class Option:
    """One keyword option of a converter, described for the CLI (``--patch-size`` for ``patch_size``)."""

    name: str
    type: Callable[[Any], Any]
    default: Any
    help: str
    choices: Optional[Tuple[Any, ...]] = None

    def parse(self, converter: str, value: Any) -> Any:
        try:
            if self.type is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)  # int(1.5) would silently truncate
            parsed = self.type(value)
        except (TypeError, ValueError):
            kind = self.type.__name__
            raise ConfigError(f"{converter}: option {self.name}={value!r} is not a valid {kind}") from None
        if self.choices is not None and parsed not in self.choices:
            raise ConfigError(f"{converter}: option {self.name}={value!r} must be one of {list(self.choices)}")
        return parsed


@dataclass(frozen=True)
class Converter:
    """A named converter: ``convert(src, out, **options) -> Path`` of the written file."""

    name: str
    summary: str
    function: Callable[..., Path]
    options: Tuple[Option, ...] = ()

    def convert(self, src: str | os.PathLike, out: str | os.PathLike, *, progress: bool = True, **options: Any) -> Path:
        known = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            accepted = ", ".join(known) or "none"
            raise ConfigError(f"{self.name}: unknown option(s) {', '.join(unknown)} (accepted: {accepted})")
        values = {
            name: option.parse(self.name, options[name]) if options.get(name) is not None else option.default
            for name, option in known.items()
        }
        src_dir = check_source(src)
        out_path = check_output(out)  # a directory, or a parent that is a file, is refused up front
        return self.function(src_dir, out_path, progress=progress, **values)


def check_source(src: str | os.PathLike) -> Path:
    """The source folder as a Path; missing, non-directory or empty sources raise DataError."""
    path = Path(src)
    if not path.exists():
        raise DataError(f"{path}: source: directory not found")
    if not path.is_dir():
        raise DataError(f"{path}: source: not a directory")
    if not any(path.iterdir()):
        raise DataError(f"{path}: source: directory is empty")
    return path


CONVERTERS: Dict[str, Converter] = {
    c.name: c
    for c in (
        Converter(
            "eurosat-ms",
            "EuroSAT-MS: 13-band 64x64 L1C patches, 10 classes, split from train/test folders",
            convert_eurosat,
        ),
        Converter(
            "bigearthnet",
            "BigEarthNet-S2 v1.0: 12-band 120x120 L2A patches, multi-label CORINE (43 or 19 classes)",
            convert_bigearthnet,
            (Option("labels", str, "43", "CORINE nomenclature: 43 original classes or 19 classes", ("43", "19")),),
        ),
        Converter(
            "ssl4eo-s12",
            "SSL4EO-S12: 264x264 patches, several dates per location (group), L1C or L2A",
            convert_ssl4eo,
            (
                Option("product", str, "L1C", "L1C (s2c, 13 bands) or L2A (s2a, 12 bands)", ("L1C", "L2A")),
                Option("size", int, None, "centre crop to this many pixels (e.g. 256); default: full 264"),
            ),
        ),
        Converter(
            "major-tom",
            "Major-TOM Core-S2L2A: 1068x1068 grid cells cut into patches, 12 L2A bands",
            convert_major_tom,
            (
                Option("patch_size", int, 128, "side of the patches cut from each cell (px)"),
                Option("max_cloud", float, 1.0, "skip patches with a larger cloud fraction (0..1; 1 keeps all)"),
                Option("stride", int, None, "px between patch corners: < patch_size overlaps; default patch_size"),
            ),
        ),
    )
}


def get_converter(fmt: str) -> Converter:
    """The converter named ``fmt``; an unknown name raises ConfigError with the closest match."""
    if fmt in CONVERTERS:
        return CONVERTERS[fmt]
    close = difflib.get_close_matches(fmt, list(CONVERTERS), n=1, cutoff=0.4)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown dataset format {fmt!r}{hint} (known: {', '.join(sorted(CONVERTERS))})")


def convert(fmt: str, src: str | os.PathLike, out: str | os.PathLike, **options: Any) -> Path:
    """Convert the dataset folder ``src`` in format ``fmt`` to the HDF5 file ``out``; returns ``out``.

    ``options`` are the converter's (see ``CONVERTERS[fmt].options``) plus ``progress`` (bool).
    """
    return get_converter(fmt).convert(src, out, **options)


__all__ = ["CONVERTERS", "Converter", "Option", "check_source", "convert", "get_converter"]
