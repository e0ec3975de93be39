"""One registry pattern for every pluggable part (backbones, augmentations, methods,
regularizers), modelled on timm's ``register_model`` / ``create_model``.

An implementation registers a factory next to its definition::

    @BACKBONES.register("resnet18")
    def resnet18(in_chans: int = 3, **kwargs) -> Backbone: ...

and anything else builds it by name: ``BACKBONES.create("resnet18", in_chans=13)``.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List

from .errors import ConfigError


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    summary: str


class Registry:
    """A name -> factory map filled by a decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Entry] = {}

    def register(self, name: str | None = None, summary: str | None = None) -> Callable:
        def decorator(factory: Callable) -> Callable:
            key = name or factory.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            doc = summary or (inspect.getdoc(factory) or "").split("\n")[0]
            self._entries[key] = Entry(key, factory, doc)
            return factory

        return decorator

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._entries))})"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name).factory(**kwargs)

    def names(self) -> List[str]:
        return sorted(self._entries)

    def entries(self) -> List[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


BACKBONES = Registry("backbone")
AUGMENTATIONS = Registry("augmentation")
METHODS = Registry("method")
REGULARIZERS = Registry("regularizer")
