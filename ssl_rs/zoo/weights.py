"""Weights entries: what a pretrained checkpoint is, where it lives and how to check it.

Like torchgeo's ``WeightsEnum`` with one difference that matters: an entry carries the file's
sha256 (or, where only that is known, the hash prefix its file name carries) and size, and
:func:`ssl_rs.zoo.download` refuses a file that does not match.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import ConfigError
from ..registry import NamedCollection

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A known beginning of the sha256, shorter than the whole: torchgeo names its files
# ``<stem>-<first 8 hex digits of the sha256>.pth``, the convention torch.hub's check_hash reads.
SHA256_PREFIX_RE = re.compile(r"^[0-9a-f]{8,63}$")
# torch.hub's own pattern (torch.hub.HASH_REGEX): the hex digits after the last '-' before a '.'.
FILENAME_HASH_RE = re.compile(r"-([a-f0-9]*)\.")
# What ``eval_transforms`` may hold, in the order they apply (after the harness' standardisation).
EVAL_TRANSFORMS = ("resize", "center_crop")
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

def filename_hash_prefix(filename: str) -> Optional[str]:
    """The hash prefix a file name carries the torch.hub way (``name-<hex>.pth``), else None."""
    found = FILENAME_HASH_RE.search(filename)
    return found.group(1) if found and found.group(1) else None


def check_eval_transforms(value: object, image_size: Optional[int], where: str) -> Dict[str, int]:
    """``{"resize": R, "center_crop": C}`` (either may be absent): square side lengths in pixels,
    ``C <= R``, ending at ``image_size`` when both are known."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: eval_transforms must be a mapping like {{'resize': 256, 'center_crop': 224}}, "
                          f"got {value!r}")
    unknown = sorted(set(value) - set(EVAL_TRANSFORMS))
    if unknown:
        raise ConfigError(f"{where}: eval_transforms: unknown {unknown[0]!r} (use {', '.join(EVAL_TRANSFORMS)})")
    out = {}
    for key in EVAL_TRANSFORMS:
        if key in value:
            side = value[key]
            if isinstance(side, bool) or not isinstance(side, int) or side < 1:
                raise ConfigError(f"{where}: eval_transforms.{key} must be a side in pixels, got {side!r}")
            out[key] = side
    if "resize" in out and "center_crop" in out and out["center_crop"] > out["resize"]:
        raise ConfigError(f"{where}: eval_transforms: center_crop {out['center_crop']} is larger than the resize "
                          f"{out['resize']} it crops from")
    final = out.get("center_crop", out.get("resize"))
    if final is not None and image_size is not None and final != image_size:
        raise ConfigError(f"{where}: eval_transforms end at {final} px, but image_size is {image_size}")
    return out


# Key layouts a weights file may use; load_backbone maps each onto our Backbone (``model.<timm keys>``).
KEY_LAYOUTS = ("ssl_rs", "timm")


@dataclass(frozen=True)
class WeightsEntry:
    """One pretrained checkpoint.

    ``sha256=None`` means no full hash is known. With ``sha256_prefix`` (the first hex digits,
    e.g. the 8 that torchgeo's file names carry) the download is checked the way torch.hub checks
    it: the file's sha256 must start with the prefix; without either, downloading needs an
    explicit ``sha256=`` from the user or ``allow_unverified=True``. ``image_size``: the
    pretraining input side (None where the source records none). ``eval_transforms``: what the
    source applies before the model at evaluation (``{"resize": 256, "center_crop": 224}`` is
    torchgeo's Resize(256) + CenterCrop(224)); the harness applies it. ``metrics`` are the
    numbers the weights reached in the ssl-rs harness (empty when not measured yet); numbers
    published elsewhere go to ``published_metrics`` with their source.
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
    image_size: Optional[int]
    license: str
    backbone_args: Mapping[str, Any] = field(default_factory=dict)
    regularizer: Optional[str] = None
    key_layout: str = "ssl_rs"
    metrics: Mapping[str, float] = field(default_factory=dict)
    published_metrics: Mapping[str, float] = field(default_factory=dict)
    source: str = ""
    sha256_source: str = ""
    summary: str = ""
    sha256_prefix: Optional[str] = None
    eval_transforms: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked here, not only in the CLI: an entry built through the Python API must not reach
        # outside the cache (the name is a directory, the URL's file name a file inside it).
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise ConfigError(f"weights name {self.name!r}: use letters, digits, '_', '.', '-' (it names the cache "
                              "directory), starting with a letter or digit")
        check_url(self.url, f"weights {self.name!r}")
        if self.sha256 is not None and not (isinstance(self.sha256, str) and SHA256_RE.match(self.sha256)):
            raise ConfigError(f"weights {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        prefix = self.sha256_prefix
        if prefix is not None and not (isinstance(prefix, str) and SHA256_PREFIX_RE.match(prefix)):
            raise ConfigError(f"weights {self.name!r}: sha256_prefix must be 8 to 63 lowercase hex digits, "
                              f"got {prefix!r}")
        if prefix is not None and self.sha256 is not None and not self.sha256.startswith(prefix):
            raise ConfigError(f"weights {self.name!r}: sha256 {self.sha256} does not start with sha256_prefix {prefix}")
        # A prefix is copied from the file name the publisher chose: where the name carries one
        # the torch.hub way they must agree, so a typo in either fails here. (Not checked for full
        # hashes: an export named e.g. ``run-20250101`` would look like one.)
        named = filename_hash_prefix(self.filename)
        if prefix is not None and named is not None and not (prefix.startswith(named) or named.startswith(prefix)):
            raise ConfigError(f"weights {self.name!r}: sha256_prefix {prefix} differs from the {named} in the file "
                              f"name {self.filename!r}")
        size = self.image_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ConfigError(f"weights {self.name!r}: image_size must be a side in pixels or None, got {size!r}")
        # (0: exports written before image_size could be None, for "unknown")
        object.__setattr__(self, "eval_transforms",
                           check_eval_transforms(self.eval_transforms, size or None, f"weights {self.name!r}"))
        if self.key_layout not in KEY_LAYOUTS:
            raise ConfigError(f"weights {self.name!r}: key_layout must be one of {KEY_LAYOUTS}")
        object.__setattr__(self, "bands", tuple(self.bands))

    @property
    def in_chans(self) -> int:
        return len(self.bands)

    @property
    def verified(self) -> bool:
        """A full sha256 is registered (a prefix alone is :attr:`verification` ``"prefix"``)."""
        return self.sha256 is not None

    @property
    def verification(self) -> str:
        """``"verified"`` (full sha256), ``"prefix"`` (only its first digits) or ``"NONE"``."""
        return "verified" if self.sha256 is not None else "prefix" if self.sha256_prefix else "NONE"

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
            "sha256_prefix": self.sha256_prefix, "eval_transforms": dict(self.eval_transforms),
        }


class WeightsZoo(NamedCollection[WeightsEntry]):
    """Name -> :class:`WeightsEntry`, with the registries' lookup and suggestions."""

    def __init__(self) -> None:
        super().__init__("weights")

    def register(self, entry: WeightsEntry) -> WeightsEntry:
        return self._add(entry.name, entry)

    def _listing_hint(self) -> str:
        return "see `ssl-rs zoo list`"

    def closest_name(self, text: str) -> Optional[str]:
        """The entry a mistyped name most likely meant, or None: by spelling, else by its words
        in any order, since names from papers and hubs order the same words differently
        (``ssl4eo-s12/resnet18-moco`` is ``resnet18_ssl4eo_s12_moco``)."""
        self.load()
        spelled = difflib.get_close_matches(str(text), list(self._entries), n=1, cutoff=0.6)
        if spelled:
            return spelled[0]
        words = set(_name_words(text))
        if not words:
            return None
        overlap = {name: len(words & set(_name_words(name))) / len(words | set(_name_words(name)))
                   for name in self._entries}
        best = max(sorted(overlap), key=overlap.__getitem__, default=None)
        # half the words in common: below that the "closest" entry is mostly other words
        return best if best is not None and overlap[best] >= 0.5 else None

    def suggestion(self, text: str) -> str:
        """``"; did you mean 'x'?"`` for :meth:`closest_name`, or ``""``."""
        closest = self.closest_name(text)
        return f"; did you mean {closest!r}?" if closest else ""

    def get(self, name: str) -> WeightsEntry:
        self.load()
        if name in self._entries:
            return self._entries[name]
        raise ConfigError(f"unknown weights {name!r}{self.suggestion(name)} ({self._listing_hint()})")


def _name_words(text: str) -> Tuple[str, ...]:
    return tuple(w for w in re.split(r"[^a-z0-9]+", str(text).lower()) if w)


ZOO = WeightsZoo()
