"""The one owner of ssl-rs's checkpoint format: what a training checkpoint holds besides
Lightning's state, how it is read (tensors only, always), and how the evaluated encoder is taken
out of it.

A training checkpoint (``RUN/checkpoints/{last,best}.ckpt``) is Lightning's dict plus

    ssl_rs_config          the run's resolved config (plain types), written by :class:`RunMetadata`
    ssl_rs_bands           the band names of the training data, in input order
    ssl_rs_normalization   how the training inputs were normalised, ``{"type": "standardize",
                           "mean": [...], "std": [...]}`` (the data's band_mean / band_std, per
                           band of ``ssl_rs_bands``); absent in checkpoints written before it existed

Lightning's state includes the training loader's place in its epoch,
``loops.fit_loop.state_dict.combined_loader`` (:class:`ssl_rs.data.loader.ResumableLoader`'s
``state_dict``; given back on ``--resume`` by :func:`ssl_rs.trainer.training_data_position`);
checkpoints written before it existed resume with the interrupted epoch's data order restarted.

The encoder that is scored and exported is the method's :meth:`evaluated_backbone`, stored under
the method's :meth:`checkpoint_backbone_prefix` (``backbone.``; DINO's teacher
``momentum_backbone.``) and rebuilt around a fresh backbone by the method's
:meth:`inference_encoder` (the backbone itself, or SatMAE's band-group encoder). Methods are found
by name through the registry, so this module sits below ``methods/``, ``zoo/`` and ``train``.

:func:`encoder_export` turns that encoder into the tensors of a release: a timm model's own state
dict (loadable into ``timm.create_model(arch, in_chans=C, num_classes=0, **kwargs)``) where the
encoder is a timm backbone, else ssl-rs's keys with what rebuilds the module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from .errors import ConfigError

CONFIG_KEY = "ssl_rs_config"
BANDS_KEY = "ssl_rs_bands"
NORMALIZATION_KEY = "ssl_rs_normalization"
#: kept for callers of the earlier name
CHECKPOINT_CONFIG_KEY = CONFIG_KEY

PathLike = Union[str, os.PathLike]


def standardization(mean: Sequence[float], std: Sequence[float]) -> Dict[str, Any]:
    """The normalisation record of inputs fed as ``(x - mean) / std`` per band (plain floats)."""
    return {"type": "standardize", "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


class RunMetadata(Callback):
    """Writes the run's resolved config, its data's band names and (given ``mean`` / ``std``,
    the training data's band statistics) its input normalisation into every checkpoint Lightning
    saves (plain types only, so the file loads with ``weights_only=True``). The normalisation
    travels with the weights, so loading them later needs neither the training file nor its
    statistics to be unchanged."""

    def __init__(self, config: Mapping[str, Any], bands: List[str], mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        self.config = dict(config)
        self.bands = list(bands)
        self.normalization: Optional[Dict[str, Any]] = None
        if (mean is None) != (std is None):
            raise ConfigError("RunMetadata: give both mean and std, or neither")
        if mean is not None:
            if not len(mean) == len(std) == len(self.bands):
                raise ConfigError(f"RunMetadata: {len(self.bands)} bands but {len(mean)} means and {len(std)} stds")
            self.normalization = standardization(mean, std)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[BANDS_KEY] = list(self.bands)
        if self.normalization is not None:
            checkpoint[NORMALIZATION_KEY] = standardization(self.normalization["mean"], self.normalization["std"])


def read_normalization(ckpt: Mapping[str, Any], n_bands: int) -> Optional[Dict[str, Any]]:
    """The recorded input normalisation of a loaded checkpoint dict; None when it has none (a
    checkpoint from before the key existed) or the record does not fit its ``n_bands`` bands."""
    norm = ckpt.get(NORMALIZATION_KEY)
    if not isinstance(norm, dict) or norm.get("type") != "standardize":
        return None
    mean, std = norm.get("mean"), norm.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == n_bands):
        return None
    try:
        return standardization(mean, std)
    except (TypeError, ValueError):
        return None


def load_tensors_only(path: Path, prefix: str = "") -> Any:
    """A checkpoint file loaded with an explicit ``weights_only=True`` (which holds even under
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``: a pickled payload is refused, never run); a missing or
    unreadable file is one line, ``prefix`` + the path + what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{prefix}{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{prefix}{path}: not a loadable ssl-rs checkpoint (tensors only: {first})") from None


@dataclass(frozen=True)
class TrainingCheckpoint:
    """What ssl-rs reads from a training checkpoint."""

    path: Path
    state_dict: Dict[str, Tensor]
    config: Dict[str, Any]
    bands: List[str]
    normalization: Optional[Dict[str, Any]] = None  # None: the checkpoint does not record it

    @property
    def method(self) -> str:
        return self.config["method"]["name"]

    @property
    def method_args(self) -> Dict[str, Any]:
        return dict(self.config["method"].get("args") or {})


def run_checkpoint(path: PathLike, prefix: str = "") -> Path:
    """``path`` itself, or for a run directory its ``checkpoints/last.ckpt`` (so ``ssl-rs eval ...
    --checkpoint runs/mocov2`` scores the run's last state)."""
    p = Path(path)
    if not p.is_dir():
        return p
    last = p / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ConfigError(f"{prefix}{p}: a directory without checkpoints/last.ckpt (give a run directory or a .ckpt file)")
    return last


def read_training_checkpoint(path: PathLike, prefix: str = "") -> TrainingCheckpoint:
    """A training checkpoint of an ssl-rs run (tensors only), given as the file or its run
    directory; one-line ConfigError otherwise."""
    p = run_checkpoint(path, prefix)
    ckpt = load_tensors_only(p, prefix)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{prefix}{p}: state_dict: not a training checkpoint")
    config = ckpt.get(CONFIG_KEY)
    if not isinstance(config, dict):
        raise ConfigError(f"{prefix}{p}: {CONFIG_KEY}: not an ssl-rs training checkpoint")
    for section in ("method", "backbone"):
        if not isinstance(config.get(section), dict) or not isinstance(config[section].get("name"), str):
            raise ConfigError(f"{prefix}{p}: {CONFIG_KEY}.{section}.name: missing")
    bands = list(ckpt.get(BANDS_KEY) or [])
    return TrainingCheckpoint(p, ckpt["state_dict"], config, bands, read_normalization(ckpt, len(bands)))


def check_resume_checkpoint(path: PathLike, method_name: str) -> Dict[str, Tensor]:
    """A ``--resume`` checkpoint must exist, load as tensors only and come from a run of the same
    method; a one-line ConfigError otherwise. Returns its ``state_dict`` for
    :func:`check_resume_shapes`."""
    p = Path(path)
    ckpt = load_tensors_only(p, "--resume: ")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"--resume: {p}: state_dict: not a training checkpoint")
    saved = ((ckpt.get(CONFIG_KEY) or {}).get("method") or {}).get("name")
    if saved is not None and saved != method_name:
        raise ConfigError(f"--resume: {p} is a {saved!r} checkpoint; the config trains {method_name!r}")
    return ckpt["state_dict"]


def check_resume_shapes(path: PathLike, state: Mapping[str, Tensor], method: nn.Module) -> None:
    """The checkpoint's weights must fit the model the config builds (same keys and shapes), or
    Lightning would fail half-way through restoring with a traceback."""
    own = method.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ConfigError(f"--resume: {path}: state_dict: no {missing[0]!r} ({len(missing)} weights of the "
                          "configured model missing: another backbone or method settings?)")
    for key, value in own.items():
        saved = state[key]
        if tuple(saved.shape) != tuple(value.shape):
            raise ConfigError(f"--resume: {path}: state_dict: {key} has shape {tuple(saved.shape)}, the config's "
                              f"model {tuple(value.shape)} (other method, backbone or data settings?)")


def method_class(name: str):
    from .registry import METHODS

    return METHODS.get(name).factory


def build_encoder(backbone_name: str, backbone_args: Mapping[str, Any], method: str,
                  method_args: Mapping[str, Any], bands: List[str]) -> nn.Module:
    """A freshly initialised encoder of the shape a run of ``method`` trains and evaluates."""
    from .backbones import create_backbone

    backbone = create_backbone(backbone_name, in_chans=len(bands), **dict(backbone_args))
    return method_class(method).inference_encoder(backbone, dict(method_args), bands)


def encoder_state(ckpt: TrainingCheckpoint) -> Dict[str, Tensor]:
    """The evaluated encoder's weights (keys of :func:`build_encoder`'s module)."""
    prefix = method_class(ckpt.method).checkpoint_backbone_prefix(ckpt.method_args)
    state = {k[len(prefix):]: v for k, v in ckpt.state_dict.items() if k.startswith(prefix)}
    if not state:
        raise ConfigError(f"{ckpt.path}: state_dict: no {prefix}* weights (the {ckpt.method!r} encoder)")
    return state


def load_encoder(path: PathLike) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the evaluated encoder of a training checkpoint (tensors only, eval mode).

    Returns the encoder and the run's config dict with ``data_bands`` and ``data_normalization``
    (the recorded input normalisation, None in checkpoints without one) added."""
    ckpt = read_training_checkpoint(path)
    cfg = ckpt.config
    encoder = build_encoder(cfg["backbone"]["name"], cfg["backbone"].get("args") or {}, ckpt.method,
                            ckpt.method_args, ckpt.bands)
    encoder.load_state_dict(encoder_state(ckpt))
    return encoder.eval(), {**cfg, "data_bands": ckpt.bands, "data_normalization": ckpt.normalization}


@dataclass(frozen=True)
class EncoderExport:
    """The tensors of a release and what loads them.

    ``key_layout`` ``"timm"``: ``state`` is a bare timm model's state dict, loadable into
    ``timm.create_model(timm_model, in_chans=C, num_classes=0, **timm_kwargs)`` with
    ``strict=True``; ``"ssl_rs"``: the keys of ssl-rs's module (``encoder`` says which: the plain
    ``backbone``, or a method's encoder that :func:`build_encoder` rebuilds)."""

    state: Dict[str, Tensor]
    key_layout: str
    encoder: str
    timm_model: Optional[str] = None
    timm_kwargs: Optional[Dict[str, Any]] = None


def encoder_export(encoder: nn.Module, method: str) -> EncoderExport:
    """The release form of a rebuilt encoder (see :class:`EncoderExport`)."""
    from .backbones.timm_backbones import Backbone

    def tensors(module: nn.Module) -> Dict[str, Tensor]:
        return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}

    if isinstance(encoder, Backbone):
        if encoder.timm_model is not None:
            return EncoderExport(tensors(encoder.model), "timm", "backbone", encoder.timm_model,
                                 dict(encoder.timm_kwargs))
        return EncoderExport(tensors(encoder), "ssl_rs", "backbone")
    return EncoderExport(tensors(encoder), "ssl_rs", method)  # a method's own encoder (SatMAE)
