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
from typing import Any, Callable, Dict, Generic, Iterator, List, TypeVar

from .errors import ConfigError


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    summary: str


T = TypeVar("T")


class NamedCollection(Generic[T]):
    """Items by unique name; an unknown name is a ConfigError suggesting the closest one."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, T] = {}

    def _add(self, name: str, item: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = item
        return item

    def _listing_hint(self) -> str:
        return f"known: {', '.join(sorted(self._entries))}"

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{hint} ({self._listing_hint()})") from None

    def names(self) -> List[str]:
        return sorted(self._entries)

    def entries(self) -> List[T]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


class Registry(NamedCollection[Entry]):
    """A name -> factory map filled by a decorator."""

    def register(self, name: str | None = None, summary: str | None = None) -> Callable:
        def decorator(factory: Callable) -> Callable:
            key = name or factory.__name__
            doc = summary or (inspect.getdoc(factory) or "").split("\n")[0]
            self._add(key, Entry(key, factory, doc))
            return factory

        return decorator

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name).factory(**kwargs)


BACKBONES = Registry("backbone")
AUGMENTATIONS = Registry("augmentation")
METHODS = Registry("method")
REGULARIZERS = Registry("regularizer")
