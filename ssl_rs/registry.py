"""One registry pattern for every pluggable part (backbones, augmentations, methods,
regularizers), modelled on timm's ``register_model`` / ``create_model``.

An implementation registers a factory next to its definition::

    @BACKBONES.register("resnet18")
    def resnet18(in_chans: int = 3, **kwargs) -> Backbone: ...

and anything else builds it by name: ``BACKBONES.create("resnet18", in_chans=13)``.

A registry loads its own providers: ``Registry("method", providers="ssl_rs.methods")`` imports
every module of that package the first time it is asked for a name, so adding a method is one
file in ``ssl_rs/methods/`` (plus its YAML config), with no import line anywhere else.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Iterator, List, Sequence, TypeVar, Union

from .errors import ConfigError
from .text import did_you_mean


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    summary: str


T = TypeVar("T")


class NamedCollection(Generic[T]):
    """Items by unique name; an unknown name is a ConfigError suggesting the closest one.

    ``providers``: packages (dotted names) whose modules add the items. Every module of each is
    imported the first time the collection is asked anything (``get``, ``names``, ``in``, ...),
    not when it is created, so a provider module may import this module (and its collection) at
    import time. Modules that add nothing are imported too, which is harmless.
    """

    def __init__(self, kind: str, providers: Union[str, Sequence[str]] = ()):
        self.kind = kind
        self.providers = (providers,) if isinstance(providers, str) else tuple(providers)
        self._entries: Dict[str, T] = {}
        self._loaded = not self.providers
        self._loading = False
        # Reentrant: a provider that asks this collection while it loads gets the entries so far
        # (``_loading``) instead of a deadlock; another thread waits for the loading to finish.
        self._lock = threading.RLock()

    def _add(self, name: str, item: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = item
        return item

    def load(self) -> None:
        """Import every module of the providers, once; later calls return at once."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._loading:  # loaded by another thread, or asked during our own import
                return
            self._loading = True  # set before the first import: a provider may ask us at import time
            try:
                for package in self.providers:
                    for module in provider_modules(package):
                        importlib.import_module(module)
                self._loaded = True
            finally:
                self._loading = False

    def _listing_hint(self) -> str:
        return f"known: {', '.join(sorted(self._entries))}"

    def get(self, name: str) -> T:
        self.load()
        try:
            return self._entries[name]
        except KeyError:
            hint = did_you_mean(name, self._entries)
            raise ConfigError(f"unknown {self.kind} {name!r}{hint} ({self._listing_hint()})") from None

    def names(self) -> List[str]:
        self.load()
        return sorted(self._entries)

    def entries(self) -> List[T]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.load()
        return len(self._entries)


def provider_modules(package: str) -> List[str]:
    """The dotted names of ``package`` and of every module and subpackage directly in it."""
    pkg = importlib.import_module(package)
    path = getattr(pkg, "__path__", None)
    if path is None:  # a plain module provides only itself
        return [package]
    return [package] + sorted(f"{package}.{info.name}" for info in pkgutil.iter_modules(path))


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


BACKBONES = Registry("backbone", providers="ssl_rs.backbones")
AUGMENTATIONS = Registry("augmentation", providers="ssl_rs.augmentations")
METHODS = Registry("method", providers="ssl_rs.methods")
REGULARIZERS = Registry("regularizer", providers="ssl_rs.geo")
