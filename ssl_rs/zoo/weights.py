"""Weights entries: what a pretrained checkpoint is, where it lives and how to check it.

Like torchgeo's ``WeightsEnum`` with one difference that matters: every entry carries the
file's sha256 and size, and :func:`ssl_rs.zoo.download` refuses a file that does not match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import ConfigError
from ..registry import NamedCollection

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A weights name becomes a directory of the cache (``<cache>/<name>/<file>``) and the URL's last
# segment its file name: both must be one plain path component, never ``..`` or a separator.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
URL_SCHEMES = ("https", "http", "file")


def url_filename(url: str) -> str:
    """The file name a weights URL is cached under: the last segment of its path (query and
    fragment left out)."""
    from urllib.parse import urlsplit

    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


def check_url(url: object, where: str) -> str:
    """``url`` if it is an http(s)/file URL whose file name is a safe single path component."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"{where}: url must be an http(s):// or file:// URL, got {url!r}")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in URL_SCHEMES:
        raise ConfigError(f"{where}: url scheme {scheme!r} is not supported (use {', '.join(URL_SCHEMES)})")
    name = url_filename(url)
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or not name.isprintable():
        raise ConfigError(f"{where}: url {url!r} must end in a plain file name (it becomes the cached file's "
                          f"name), got {name!r}")
    return url

# Key layouts a weights file may use; load_backbone maps each onto our Backbone (``model.<timm keys>``).
KEY_LAYOUTS = ("ssl_rs", "timm")


@dataclass(frozen=True)
class WeightsEntry:
    """One pretrained checkpoint.

    ``sha256=None`` means no verified hash is known: downloading then needs an explicit
    ``sha256=`` from the user or ``allow_unverified=True``. ``metrics`` are the numbers the
    weights reached in the ssl-rs harness (empty when not measured yet); numbers published
    elsewhere go to ``published_metrics`` with their source.
    """

    name: str
    url: str
    sha256: Optional[str]
    size: Optional[int]  # bytes
    backbone: str
    bands: Tuple[str, ...]
    method: str
    pretraining_data: str
    normalization: Mapping[str, Any]
    image_size: int
    license: str
    backbone_args: Mapping[str, Any] = field(default_factory=dict)
    regularizer: Optional[str] = None
    key_layout: str = "ssl_rs"
    metrics: Mapping[str, float] = field(default_factory=dict)
    published_metrics: Mapping[str, float] = field(default_factory=dict)
    source: str = ""
    sha256_source: str = ""
    summary: str = ""

    def __post_init__(self) -> None:
        # Checked here, not only in the CLI: an entry built through the Python API must not reach
        # outside the cache (the name is a directory, the URL's file name a file inside it).
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise ConfigError(f"weights name {self.name!r}: use letters, digits, '_', '.', '-' (it names the cache "
                              "directory), starting with a letter or digit")
        check_url(self.url, f"weights {self.name!r}")
        if self.sha256 is not None and not (isinstance(self.sha256, str) and SHA256_RE.match(self.sha256)):
            raise ConfigError(f"weights {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.key_layout not in KEY_LAYOUTS:
            raise ConfigError(f"weights {self.name!r}: key_layout must be one of {KEY_LAYOUTS}")
        object.__setattr__(self, "bands", tuple(self.bands))

    @property
    def in_chans(self) -> int:
        return len(self.bands)

    @property
    def verified(self) -> bool:
        return self.sha256 is not None

    @property
    def filename(self) -> str:
        return url_filename(self.url)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name, "url": self.url, "sha256": self.sha256, "size": self.size,
            "backbone": self.backbone, "backbone_args": dict(self.backbone_args), "in_chans": self.in_chans,
            "bands": list(self.bands), "method": self.method, "regularizer": self.regularizer,
            "pretraining_data": self.pretraining_data, "normalization": dict(self.normalization),
            "image_size": self.image_size, "license": self.license, "key_layout": self.key_layout,
            "metrics": dict(self.metrics), "published_metrics": dict(self.published_metrics),
            "source": self.source, "sha256_source": self.sha256_source, "summary": self.summary,
        }


class WeightsZoo(NamedCollection[WeightsEntry]):
    """Name -> :class:`WeightsEntry`, with the registries' lookup and suggestions."""

    def __init__(self) -> None:
        super().__init__("weights")

    def register(self, entry: WeightsEntry) -> WeightsEntry:
        return self._add(entry.name, entry)

    def _listing_hint(self) -> str:
        return "see `ssl-rs zoo list`"


ZOO = WeightsZoo()
