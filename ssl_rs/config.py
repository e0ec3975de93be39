"""Pretraining configuration: one schema, YAML files that compose, dotted overrides.

A config file may name ``defaults: [other.yaml, ...]`` (paths relative to it) that it is
merged onto, so ``zoo_configs/<dataset>/<method>[_<regularizer>].yaml`` only states what
differs from its dataset's and the shared defaults. Every key is checked against the schema:
an unknown key is an error that names it and suggests the closest valid one. Method, backbone,
augmentation and regularizer arguments (``*.args``) are checked against the signature of the
registered factory they go to.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from .errors import ConfigError


@dataclass
class DataConfig:
    path: str = "???"
    scheme: Optional[str] = None  # split scheme; default: the file's default
    bands: Optional[List[str]] = None
    batch_size: int = 256
    num_workers: int = 2
    sampler: Optional[str] = None  # None | "geo_neighbors" (Tile2Vec: neighbours share a batch)
    neighbor_km: float = 15.0
    temporal_positives: bool = False  # second view from another date of the same place
    neighbor_pairs: bool = False  # pair each sample with an overlapping/touching one (NeighborMAE)
    neighbor_max_offset: float = 1.1  # neighbour: centres at most this many footprint sides apart, per axis


@dataclass
class AugmentationConfig:
    name: str = "geometric"
    size: Optional[int] = None  # view size; default: the data's image size
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class BackboneConfig:
    name: str = "resnet18"
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    name: str = "mocov2"
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class GeoConfig:
    name: Optional[str] = None  # None = no regularizer
    alpha: float = 0.5
    embedding: Optional[str] = None  # which embedding it sees; default: the method's first (the GeoRank authors')
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    """Overrides of the method's optimisation recipe (``ssl_rs.methods.recipe.OptimRecipe``):
    a key left null takes the method's value; the run's ``config.yaml`` holds the resolved ones."""

    name: Optional[str] = None  # sgd | lars | adamw
    lr: Optional[float] = None  # base lr, for a global batch of 256 unless lr_scaling is none
    lr_scaling: Optional[str] = None  # linear | sqrt | none
    schedule: Optional[str] = None  # cosine | constant (after the warm-up)
    warmup_epochs: Optional[float] = None
    min_lr: Optional[float] = None
    weight_decay: Optional[float] = None
    weight_decay_end: Optional[float] = None  # cosine schedule of the weight decay to this value
    momentum: Optional[float] = None  # SGD / LARS
    betas: Optional[List[float]] = None  # AdamW
    exclude_from_decay: Optional[str] = None  # bias_norm | none
    grad_clip: Optional[float] = None  # 0: no clipping
    grad_clip_mode: Optional[str] = None  # global | per_parameter


@dataclass
class TrainerConfig:
    max_epochs: int = 100
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # "ddp" for multi-GPU / multi-node
    precision: Optional[str] = None  # default: bf16-mixed on GPU, 32 on CPU
    seed: int = 0
    log_every_n_steps: int = 10
    knn_every_n_epochs: int = 1  # online k-NN monitoring on the val split; 0 disables
    deterministic: bool = False
    progress_bar: bool = True
    limit_train_batches: Optional[float] = None


@dataclass
class EvalConfig:
    knn_k: int = 20
    knn_temperature: float = 0.07
    schemes: Optional[List[str]] = None  # final k-NN on these split schemes; default: the training one
    linear: bool = False
    data: Optional[str] = None  # labelled file the final evaluation scores on; default: the pretraining file


@dataclass
class OutputConfig:
    dir: str = "runs"
    name: Optional[str] = None  # default: <method>[_<regularizer>]
    overwrite: bool = False  # replace an existing run (kept aside until the new one's first checkpoint)


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    geo: GeoConfig = field(default_factory=GeoConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def valid_keys(schema=PretrainConfig, prefix: str = "") -> List[str]:
    keys = []
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys += valid_keys(type(default), key + ".")
        else:
            keys.append(key)
    return keys


def _suggest(key: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not close:  # match the last component alone ("trainer.max_epoch" -> "max_epochs")
        tail = key.rsplit(".", 1)[-1]
        close = [c for c in candidates if c.rsplit(".", 1)[-1] in difflib.get_close_matches(
            tail, [c.rsplit(".", 1)[-1] for c in candidates], n=1, cutoff=0.6)]
    return f"; did you mean {close[0]!r}?" if close else ""


#: keys that were renamed: a clear error instead of a guess
RENAMED_KEYS = {"optimizer.scale_lr": "optimizer.lr_scaling (linear | sqrt | none; false is none)"}


def _load_yaml(path: Path, seen: tuple = ()) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: defaults form a cycle")
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors
        raise ConfigError(f"{path}: cannot parse YAML ({str(e).splitlines()[0]})") from None
    defaults = raw.pop("defaults", []) if isinstance(raw, DictConfig) else []
    merged = OmegaConf.create()
    for name in defaults:
        merged = OmegaConf.merge(merged, _load_yaml(path.parent / str(name), seen + (path.resolve(),)))
    return OmegaConf.merge(merged, raw)


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Schema <- YAML file (with its ``defaults``) <- ``key=value`` overrides; validated."""
    cfg = OmegaConf.structured(PretrainConfig)
    keys = valid_keys()
    layers = []
    if path:
        layers.append((str(path), _load_yaml(Path(path))))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    if overrides:
        layers.append(("command line", OmegaConf.from_dotlist(list(overrides))))
    for source, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except (ConfigKeyError, ConfigAttributeError) as e:
            key = e.full_key or str(e.key)
            if key in RENAMED_KEYS:
                raise ConfigError(f"{source}: {key} was renamed {RENAMED_KEYS[key]}") from None
            raise ConfigError(f"{source}: unknown config key {key!r}{_suggest(key, keys)}") from None
        except ValidationError as e:
            raise ConfigError(f"{source}: {e.full_key}: {str(e).splitlines()[0]}") from None
    if OmegaConf.is_missing(cfg.data, "path"):
        raise ConfigError("data.path: no dataset given (set it in the config or as data.path=FILE.h5)")
    return cfg


#: BaseMethod arguments that come from other config sections, never from ``method.args``
METHOD_ARGS_SET_BY_BUILD = ("augmentation", "regularizer", "alpha", "geo_embedding", "optim", "batch_size", "seed",
                            "eval_preprocess", "knn_k", "knn_temperature")


def check_args(kind: str, name: str, factory, args: Dict[str, Any], reserved: Sequence[str] = ()) -> None:
    """Raise ConfigError for ``args`` that ``factory`` does not accept, suggesting a close one."""
    params = inspect.signature(factory).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()) and kind != "method":
        return
    accepted = [p for p in params if p not in ("self", "backbone", *reserved)]
    if kind == "method":  # the EMA arguments of the base class pass through **kwargs
        from .methods.base import BaseMomentumMethod

        accepted += [p for p in inspect.signature(BaseMomentumMethod.__init__).parameters
                     if p not in ("self", "args", "kwargs")]
        reserved = (*reserved, *METHOD_ARGS_SET_BY_BUILD)
    for key in args:
        if kind == "method" and key in {f.name for f in fields(OptimizerConfig)} | {"optimizer", "scale_lr"}:
            raise ConfigError(f"method.args.{key}: optimiser settings go in the optimizer section "
                              f"(optimizer.{'name' if key == 'optimizer' else key}=...)")
        if key not in accepted or key in reserved:
            raise ConfigError(f"{kind}.args: {name!r} has no argument {key!r}{_suggest(key, accepted)}")


def validate(cfg: DictConfig) -> None:
    """The values a pretraining's types cannot rule out (a negative learning rate, zero epochs, a
    batch of 0): a one-line ConfigError naming the key, raised by ``pretrain`` before anything
    is written. (Recipe-level optimiser values are checked again by the method's recipe.)"""

    def positive(x):
        return x > 0

    def non_negative(x):
        return x >= 0

    checks = (
        ("data.batch_size", positive, "a positive integer"),
        ("data.num_workers", non_negative, "an integer >= 0 (0 loads in the main process)"),
        ("data.neighbor_km", positive, "> 0"),
        ("data.neighbor_max_offset", positive, "> 0"),
        ("augmentation.size", positive, "a positive number of pixels (or null for the data's size)"),
        ("trainer.max_epochs", positive, "a positive integer"),
        ("trainer.num_nodes", positive, "a positive integer"),
        ("trainer.log_every_n_steps", positive, "a positive integer"),
        ("trainer.knn_every_n_epochs", non_negative, "an integer >= 0 (0 disables the online k-NN)"),
        ("trainer.limit_train_batches", positive, "> 0 (or null for all batches)"),
        ("optimizer.lr", positive, "positive (or null for the method's recipe)"),
        ("optimizer.warmup_epochs", non_negative, ">= 0"),
        ("optimizer.min_lr", non_negative, ">= 0"),
        ("optimizer.weight_decay", non_negative, ">= 0"),
        ("eval.knn_k", positive, "a positive integer"),
        ("eval.knn_temperature", positive, "> 0"),
    )
    for key, ok, what in checks:
        value = OmegaConf.select(cfg, key)
        if value is None:  # null: the default of whatever it configures
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise ConfigError(f"{key}: must be {what}, got {value!r}")


def to_dict(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
