"""What a converter declares about itself: its name, summary, function and keyword options.

Each converter module declares its own :class:`Converter` (with its :class:`Option` s) next to its
function and registers it in :data:`CONVERTERS`; ``CONVERTERS`` imports every module of this
package the first time it is asked for a name, so a new format is one file here. The
``ssl-rs data convert`` flags (``--patch-size`` ...) are generated from the declared options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

from ...errors import ConfigError, DataError
from ...files import check_output
from ...registry import NamedCollection


@dataclass(frozen=True)
class Option:
    """One keyword option of a converter, described for the CLI (``--patch-size`` for ``patch_size``)."""

    name: str
    type: Callable[[Any], Any]
    default: Any
    help: str
    choices: Optional[Tuple[Any, ...]] = None

    @property
    def flag(self) -> str:
        """The command-line flag: ``patch_size`` -> ``--patch-size``."""
        return "--" + self.name.replace("_", "-")

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
    """A named converter: ``convert(src, out, **options) -> Path`` of the written file.

    ``plan(src, **options)``, when declared, returns the converter's
    :class:`~ssl_rs.data.converters.parallel.ConversionPlan`, which is what lets it write a
    sharded dataset with several processes (``shard_size``, ``workers``)."""

    name: str
    summary: str
    function: Callable[..., Path]
    options: Tuple[Option, ...] = ()
    plan: Optional[Callable[..., Any]] = None

    def convert(self, src: str | os.PathLike, out: str | os.PathLike, *, progress: bool = True,
                shard_size: Optional[int] = None, workers: int = 1, **options: Any) -> Path:
        """Write ``out``: one HDF5 file, or with ``shard_size`` a folder of shards of at most that
        many samples (:mod:`ssl_rs.data.shards`) written by ``workers`` processes."""
        from .parallel import check_sharding

        if shard_size is None and workers != 1:
            check_sharding(1, workers)
            raise ConfigError("--workers: parallel conversion writes shards, one per task; give --shard-size N too")
        if shard_size is not None:
            check_sharding(shard_size, workers)
            if self.plan is None:
                raise ConfigError(f"--shard-size: {self.name} cannot write shards (it declares no conversion plan)")
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
        if shard_size is not None:
            from ..shards import check_output_folder
            from .parallel import write_shards

            check_output_folder(Path(out))  # a file, or a folder of something else, is refused up front
            return write_shards(self.plan(src_dir, **values), out, shard_size=shard_size, workers=workers,
                                progress=progress)
        out_path = check_output(out)  # a directory, or a parent that is a file, is refused up front
        return self.function(src_dir, out_path, progress=progress, **values)


class Converters(NamedCollection[Converter]):
    """The converters by name (``"eurosat-ms"`` ...), filled by the modules of this package."""

    def register(self, converter: Converter) -> Converter:
        return self._add(converter.name, converter)


#: every converter, by format name; loads the modules of ``ssl_rs.data.converters`` on first use
CONVERTERS = Converters("dataset format", providers="ssl_rs.data.converters")


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
