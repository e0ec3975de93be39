"""Safe loading of weights files, key-layout mapping and band adaptation.

Only tensors are ever loaded: safetensors files directly, anything else through
``torch.load(weights_only=True)``. A pickle that needs code to rebuild (a class, a function,
``os.system``...) is refused with :class:`UnsafeCheckpointError`; nothing in it runs.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..data.bands import normalize_band_name
from ..backbones.timm_backbones import Backbone
from ..errors import ConfigError, DataError, SslRsError
from .weights import ZOO, WeightsEntry

SAFETENSORS_FORMAT = "ssl_rs.backbone"  # metadata "format" of our exported files
MISSING_BAND_POLICIES = ("error", "zero")
# Keys a timm-layout file may lack, as torchgeo's ViT loaders allow (``assert missing <= KEYS``):
# the final LayerNorm then keeps its initial weight 1 / bias 0, which is what torchgeo's model
# holds too. Every other key must be there.
TIMM_OPTIONAL_KEYS = ("model.norm.weight", "model.norm.bias")
# Classifier heads of the timm models a file may come from; our backbones have none.
TIMM_HEAD_KEYS = ("fc.weight", "fc.bias", "head.weight", "head.bias")


class UnsafeCheckpointError(SslRsError):
    """The file needs pickled code to load; ssl-rs loads only tensors."""


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # A safetensors file starts with an 8-byte little-endian header length, then a JSON object.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 << 20)


def read_weights_file(path: Union[str, os.PathLike]) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Load a weights file safely: returns (the loaded dict, safetensors metadata or {})."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: weights file not found")
    if _is_safetensors(p):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"{p}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # one line, never a traceback
        text = str(e)
        if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in text:
            found = re.search(r"Unsupported global: GLOBAL \S+|Unsupported operand \S+", text)
            detail = found.group(0) if found else text.strip().splitlines()[0]
            raise UnsafeCheckpointError(
                f"{p}: refused: loading it would run pickled code ({detail}); ssl-rs loads tensors only "
                "(torch.load weights_only=True or safetensors): re-save the file as a plain state dict"
            ) from None
        raise DataError(f"{p}: not a loadable weights file ({text.strip().splitlines()[0] if text.strip() else type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{p}: expected a state dict, got {type(obj).__name__}")
    return obj, {}


def to_backbone_keys(state: Dict[str, Any], layout: str) -> Dict[str, Tensor]:
    """Map a state dict onto our ``Backbone`` (keys ``model.<timm keys>``).

    ``timm``: a bare timm model's state dict (torchgeo's files); a ``module.`` prefix from
    DataParallel is stripped and the classifier (ResNet ``fc.*``, ViT ``head.weight`` /
    ``head.bias``) dropped (our backbones have none).
    """
    if layout == "ssl_rs":
        out = dict(state)
    elif layout == "timm":
        out = {}
        for key, value in state.items():
            key = key[len("module."):] if key.startswith("module.") else key
            if key in TIMM_HEAD_KEYS or key.startswith("head.fc."):
                continue
            out["model." + key] = value
    else:
        raise ConfigError(f"unknown key layout {layout!r}")
    bad = [k for k, v in out.items() if not isinstance(v, Tensor)]
    if bad:
        raise DataError(f"state dict: {bad[0]!r} is not a tensor")
    return out


def first_conv_key(state: Dict[str, Tensor], in_chans: int) -> str:
    """The stem convolution: the first 4-D weight whose input dimension is ``in_chans``."""
    for key, value in state.items():
        if key.endswith("weight") and value.ndim == 4 and value.shape[1] == in_chans:
            return key
    raise DataError(f"state dict: no convolution weight with {in_chans} input channels")


def adapt_first_conv(
    state: Dict[str, Tensor],
    from_bands: Sequence[str],
    to_bands: Sequence[str],
    missing: str = "error",
    key: Optional[str] = None,
) -> Dict[str, Tensor]:
    """Re-wire the stem convolution from ``from_bands`` to ``to_bands``, selecting filters by band name.

    A band the weights know but the data lacks (B10 for 12-band L2A data) has its filter slice
    dropped, which is exactly the pretrained model fed zeros (after normalisation) in that band.
    A band the data has but the weights do not know raises ``ConfigError`` (``missing="error"``)
    or gets a zero filter (``missing="zero"``: the model ignores it). Returns a new state dict.
    """
    if missing not in MISSING_BAND_POLICIES:
        raise ConfigError(f"missing: use one of {MISSING_BAND_POLICIES}, got {missing!r}")
    try:
        source = [normalize_band_name(b) for b in from_bands]
        target = [normalize_band_name(b) for b in to_bands]
    except ValueError as e:
        raise ConfigError(f"bands: {e}") from None
    if len(set(target)) != len(target):
        raise ConfigError(f"bands: {list(to_bands)} names a band twice")
    key = key or first_conv_key(state, len(source))
    if key not in state or state[key].ndim != 4 or state[key].shape[1] != len(source):
        raise DataError(f"state dict: {key!r} is not a convolution over the {len(source)} bands {', '.join(source)}")
    weight = state[key]
    unknown = [b for b in target if b not in source]
    if unknown and missing == "error":
        raise ConfigError(
            f"bands: the weights have no filters for {', '.join(unknown)} (they know {', '.join(source)}); "
            "drop those bands or pass missing='zero'"
        )
    slices = [weight[:, source.index(b)] if b in source else torch.zeros_like(weight[:, 0]) for b in target]
    out = dict(state)
    out[key] = torch.stack(slices, dim=1).contiguous()
    return out


def _entry_spec(entry: WeightsEntry, meta: Dict[str, str]) -> Dict[str, Any]:
    spec = {"backbone": entry.backbone, "backbone_args": dict(entry.backbone_args), "bands": list(entry.bands),
            "normalization": dict(entry.normalization), "image_size": entry.image_size, "name": entry.name,
            "eval_transforms": dict(entry.eval_transforms), "key_layout": entry.key_layout}
    if meta.get("format") == SAFETENSORS_FORMAT:  # an ssl-rs export says which module its keys belong to
        spec.update(_encoder_spec(Path(entry.filename), meta))
    return spec


def _encoder_spec(path: Path, meta: Dict[str, str]) -> Dict[str, Any]:
    """Which module an ssl-rs export's keys belong to: the plain backbone (the default, and all
    exports before the field existed) or a method's encoder rebuilt from ``method_args``."""
    try:
        return {"encoder": meta.get("encoder", "backbone"), "method_args": json.loads(meta.get("method_args", "{}"))}
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: metadata: malformed method_args ({e})") from None


def _metadata_spec(path: Path, meta: Dict[str, str]) -> Dict[str, Any]:
    if meta.get("format") != SAFETENSORS_FORMAT:
        raise DataError(f"{path}: metadata: not an ssl-rs export (format {meta.get('format')!r}); "
                        "load plain state dicts through a WeightsEntry")
    try:
        spec = {"backbone": meta["backbone"], "backbone_args": json.loads(meta.get("backbone_args", "{}")),
                "bands": json.loads(meta["bands"]), "normalization": json.loads(meta.get("normalization", "null")),
                "image_size": json.loads(meta.get("image_size", "null")), "name": meta.get("name", path.stem)}
    except (KeyError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: metadata: missing or malformed field ({e})") from None
    return {**spec, **_encoder_spec(path, meta)}


def _new_encoder(spec: Dict[str, Any], bands: Sequence[str]) -> nn.Module:
    """A freshly initialised module of the kind the weights were saved from, over ``bands``."""
    from ..backbones import create_backbone
    from ..checkpoint import build_encoder

    encoder = spec.get("encoder", "backbone")
    if encoder == "backbone":
        return create_backbone(spec["backbone"], in_chans=len(bands), **spec["backbone_args"])
    return build_encoder(spec["backbone"], spec["backbone_args"], encoder, spec.get("method_args") or {}, list(bands))


def load_backbone(
    weights: Union[str, os.PathLike, WeightsEntry],
    bands: Optional[Sequence[str]] = None,
    *,
    missing: str = "error",
    data: Optional[Union[str, os.PathLike]] = None,
    sha256: Optional[str] = None,
    allow_unverified: bool = False,
    progress: bool = True,
) -> nn.Module:
    """A ready backbone (eval mode) from a zoo name, a ``WeightsEntry`` or a local export.

    ``weights``: a registered name (downloaded and verified into the cache), an entry, or the
    path of a ``.safetensors`` file written by ``ssl-rs zoo export`` (or a training ``.ckpt``).
    ``bands``: the bands of your data, by name, in your data's order; the stem convolution is
    adapted with :func:`adapt_first_conv` (``missing`` as there). ``data``: an ssl-rs HDF5 file;
    inputs standardised with its ``band_mean`` / ``band_std`` (what the harness feeds) are mapped
    to the weights' pretraining normalisation (see :func:`match_input_normalization`). The backbone
    carries ``.bands`` (its input bands), ``.normalization``, ``.image_size`` and
    ``.eval_transforms`` (e.g. ``{"resize": 256, "center_crop": 224}``, which
    :func:`ssl_rs.evaluation.harness.evaluate` applies) from the weights. A training checkpoint
    records the normalisation of its training data, so ``data=`` works for it as for an export.
    """
    spec: Dict[str, Any]
    entry: Optional[WeightsEntry] = weights if isinstance(weights, WeightsEntry) else None
    if isinstance(weights, str) and weights in ZOO:  # a registered name wins over a same-named file
        entry = ZOO.get(weights)
    if entry is None and not Path(weights).is_file():
        # a path and a mistyped name look alike (`ssl4eo-s12/resnet18-moco`): say both were tried
        text = str(weights)
        raise DataError(f"{text}: neither a weights file nor a zoo entry{ZOO.suggestion(text)} "
                        "(see `ssl-rs zoo list`)")
    if entry is not None:
        from .cache import download

        path = download(entry, sha256=sha256, allow_unverified=allow_unverified, progress=progress)
        raw, meta = read_weights_file(path)
        state, spec = to_backbone_keys(raw, entry.key_layout), _entry_spec(entry, meta)
    else:
        path = Path(weights)
        raw, meta = read_weights_file(path)
        if "ssl_rs_config" in raw:  # a Lightning training checkpoint of ours
            from ..evaluation.harness import load_checkpoint_backbone

            backbone, cfg = load_checkpoint_backbone(path)  # a config that does not fit: one line
            state = dict(backbone.state_dict())
            spec = {"backbone": cfg["backbone"]["name"], "backbone_args": dict(cfg["backbone"].get("args") or {}),
                    "bands": list(cfg["data_bands"]),
                    # None in checkpoints written before runs recorded it (the old one-line error)
                    "normalization": cfg.get("data_normalization"),
                    "image_size": cfg["augmentation"].get("size"), "name": path.stem, "eval_transforms": {},
                    "encoder": "backbone" if isinstance(backbone, Backbone) else cfg["method"]["name"],
                    "method_args": dict(cfg["method"].get("args") or {})}
        else:
            spec = _metadata_spec(path, meta)
            state = to_backbone_keys(raw, meta.get("key_layout", "ssl_rs"))

    from_bands: List[str] = [normalize_band_name(b) for b in spec["bands"]]
    to_bands = from_bands
    if bands is not None:
        try:
            to_bands = [normalize_band_name(b) for b in bands]
        except ValueError as e:
            raise ConfigError(f"bands: {e}") from None
        if to_bands != from_bands:
            if spec.get("encoder", "backbone") != "backbone":
                raise ConfigError(f"bands: the {spec['encoder']} encoder of {spec['name']!r} groups its input bands "
                                  f"by position and cannot be re-wired: give it {', '.join(from_bands)}")
            key = _stem_key(_new_encoder(spec, from_bands))
            state = adapt_first_conv(state, from_bands, to_bands, missing=missing, key=key)
    normalization = select_bands(spec["normalization"], from_bands, to_bands)
    backbone = _new_encoder(spec, to_bands)
    if spec.get("key_layout") == "timm":
        fresh = backbone.state_dict()
        state.update({k: fresh[k] for k in TIMM_OPTIONAL_KEYS if k in fresh and k not in state})
    try:
        backbone.load_state_dict(state)
    except RuntimeError as e:  # missing/unexpected keys or shapes: the file is for another backbone
        detail = " ".join(str(e).split())[:300]
        raise DataError(f"weights {spec['name']!r}: do not fit backbone {spec['backbone']!r} ({detail})") from None
    if data is not None:
        from ..data.dataset import GeoDataset

        stats = GeoDataset(data, bands=to_bands)
        match_input_normalization(backbone, stats.band_mean, stats.band_std, normalization, str(data))
    backbone.bands = to_bands
    backbone.normalization = normalization
    backbone.image_size = spec["image_size"]
    backbone.eval_transforms = dict(spec.get("eval_transforms") or {})
    backbone.weights_name = spec["name"]
    return backbone.eval()


def select_bands(normalization: Optional[Dict[str, Any]], from_bands: Sequence[str],
                 to_bands: Sequence[str]) -> Optional[Dict[str, Any]]:
    """A per-band normalisation re-indexed like :func:`adapt_first_conv` re-wires the stem: by band
    name, in ``to_bands``' order. A band the weights lack (a zero filter) gets mean 0 / std 1: the
    model ignores it, so any values do. Scalar normalisations are returned unchanged."""
    if not normalization or normalization.get("type") != "standardize" or list(from_bands) == list(to_bands):
        return normalization
    mean, std = list(normalization["mean"]), list(normalization["std"])
    if len(mean) != len(from_bands) or len(std) != len(from_bands):
        return normalization  # match_input_normalization reports the mismatch
    where = {b: i for i, b in enumerate(from_bands)}
    return {**normalization, "mean": [mean[where[b]] if b in where else 0.0 for b in to_bands],
            "std": [std[where[b]] if b in where else 1.0 for b in to_bands]}


def _stem_key(backbone: nn.Module) -> str:
    """State-dict key of the first Conv2d of a backbone (its stem)."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    raise ConfigError(f"backbone {getattr(backbone, 'name', '?')!r} has no convolution to adapt")


def match_input_normalization(
    backbone: nn.Module, mean: Sequence[float], std: Sequence[float], normalization: Optional[Dict[str, Any]],
    what: str = "data",
) -> nn.Module:
    """Make a backbone fed ``(x - mean) / std`` see its inputs as in pretraining.

    A per-band affine map applied by a forward pre-hook (state-dict keys stay unchanged), e.g. for
    SSL4EO-S12 weights (reflectance / 10000): ``x * std / 10000 + mean / 10000``. Exact, and it
    commutes with the harness' bilinear resize because both are per-band affine.
    """
    kind = (normalization or {}).get("type")
    mean_t = torch.tensor(list(mean), dtype=torch.float32)
    std_t = torch.tensor(list(std), dtype=torch.float32)
    if kind == "scale":
        divisor = float(normalization["divisor"])
        scale, shift = std_t / divisor, mean_t / divisor
    elif kind == "standardize":
        w_mean = torch.tensor(normalization["mean"], dtype=torch.float32)
        w_std = torch.tensor(normalization["std"], dtype=torch.float32)
        if len(w_mean) != len(mean_t):
            raise ConfigError(f"{what}: {len(mean_t)} bands, but the weights' normalisation has {len(w_mean)}")
        scale, shift = std_t / w_std, (mean_t - w_mean) / w_std
    else:
        raise ConfigError(f"{what}: the weights do not record their input normalisation ({normalization!r})")
    # Non-persistent buffers follow .to(device) and stay out of the state dict.
    backbone.register_buffer("input_scale", scale.view(1, -1, 1, 1), persistent=False)
    backbone.register_buffer("input_shift", shift.view(1, -1, 1, 1), persistent=False)
    backbone.register_forward_pre_hook(_renormalize)
    return backbone


def _renormalize(module: nn.Module, args: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    x = args[0]
    if x.ndim != 4 or x.shape[1] != module.input_scale.shape[1]:
        return args  # the backbone's own shape check gives the error message
    return (x * module.input_scale.to(x.dtype) + module.input_shift.to(x.dtype), *args[1:])
