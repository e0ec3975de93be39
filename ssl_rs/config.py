"""Pretraining configuration: one schema, YAML files that compose, dotted overrides.

A config file may name ``defaults: [other.yaml, ...]`` (paths relative to it) that it is
merged onto, so a packaged config, ``ssl_rs/configs/<dataset>/<method>[_<regularizer>].yaml``,
only states what differs from its dataset's and the shared defaults. A config is named by a
path or by a packaged name (``synthetic/mocov2``): :func:`resolve_config` says which file a name
means, for ``-c``, for ``defaults:`` entries and for bench suites alike. Every key is checked against the schema:
an unknown key is an error that names it and suggests the closest valid one. Method, backbone,
augmentation and regularizer arguments (``*.args``) are checked against the signature of the
registered factory they go to.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from .errors import ConfigError
from .precision import precision_name
from .text import did_you_mean


@dataclass
class DataConfig:
    path: str = "???"
    scheme: Optional[str] = None  # split scheme; default: the file's default
    bands: Optional[List[str]] = None
    batch_size: int = 256
    num_workers: int = 2
    # None (every sample once per epoch) | "geo_neighbors" (Tile2Vec: neighbours share a batch) |
    # "places" (every place once per epoch, as one of its dates drawn at random: the GeoRank authors' SSL4EO-S12)
    sampler: Optional[str] = None
    neighbor_km: float = 15.0
    temporal_positives: bool = False  # second view from another date of the same place
    neighbor_pairs: bool = False  # pair each sample with an overlapping/touching one (NeighborMAE)
    neighbor_max_offset: float = 1.1  # neighbour: centres at most this many footprint sides apart, per axis


@dataclass
class AugmentationConfig:
    name: str = "geometric"
    size: Optional[int] = None  # view size; default: the data's image size
    args: Dict[str, Any] = field(default_factory=dict)
    # where a two-view method's second view comes from on multi-date data: "same" (the anchor's
    # date), "different" (another date of the place), "mixed" (either, half the samples each);
    # default: "different" with data.temporal_positives, else "same"
    temporal_views: Optional[str] = None


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
    # under DDP, each device's samples are compared with every device's (GeoRank, GeoBasic, Tile2Vec):
    # the loss of the global batch; false: within each device, as the GeoRank authors train
    gather: bool = False


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
    # Lightning's rule: an integer is a number of batches per epoch, a float in (0, 1] a fraction of
    # them; typed Any so that OmegaConf keeps the written type (as a float, 1 would mean all batches)
    limit_train_batches: Any = None


@dataclass
class EvalConfig:
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_votes: str = "mean"  # multi-label k-NN scores: mean, or sum (the GeoRank authors' raw vote sums)
    linear_recipe: str = "ssl-rs"  # the linear probe's recipe: ssl-rs, or georank (the GeoRank authors')
    linear_epochs: int = 100  # the linear probe's epochs (eval.protocols=[linear] or eval.linear)
    schemes: Optional[List[str]] = None  # final k-NN on these split schemes; default: the training one
    linear: bool = False  # add the linear probe to the default protocols (eval.protocols unset)
    # the final evaluation's protocols (knn, linear, geo, finetune, segmentation; docs/evaluation.md);
    # default: knn (+ linear with eval.linear)
    protocols: Optional[List[str]] = None
    data: Optional[str] = None  # labelled file the final evaluation scores on; default: the pretraining file
    # the fine-tuning protocol (eval.protocols=[finetune]; ssl_rs/evaluation/finetune.py): GeoRank's recipe
    finetune_epochs: int = 30
    finetune_lr: float = 1e-3  # AdamW, the head's peak rate of the warmup + cosine schedule
    finetune_backbone_lr_scale: float = 0.1  # the backbone learns at finetune_lr times this (GeoRank: 1)
    finetune_layer_decay: Optional[float] = None  # layer-wise lr decay in (0, 1] for timm backbones (ViTs)
    finetune_weight_decay: float = 0.01
    finetune_schedule: str = "ssl-rs"  # ssl-rs (warmup + cosine) or georank (the authors' scheduler exactly)
    segmentation_epochs: int = 20  # decoder epochs of the segmentation probe (eval.protocols=[segmentation])
    segmentation_decoder: str = "auto"  # auto, georank, multilevel or upernet (docs/evaluation.md)
    segmentation_recipe: str = "ssl-rs"  # the decoder's training: ssl-rs, or georank (the authors' SGD recipe)
    # the evaluation's forward passes: 32-true (null: the default, whatever trainer.precision is), bf16-mixed,
    # 16-mixed (CUDA only); features, losses and metrics stay float32 (ssl_rs/evaluation/features.py)
    precision: Optional[str] = None


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


def packaged_config_dir() -> Path:
    """The folder of the configs that ship with the package (``ssl_rs/configs``)."""
    return Path(__file__).resolve().parent / "configs"


CONFIG_SUFFIX = ".yaml"


def _is_layer(name: str) -> bool:
    """``defaults`` and ``<dataset>/_data``: layers the configs compose, not runs of their own."""
    return name == "defaults" or name.rsplit("/", 1)[-1].startswith("_")


def packaged_configs(layers: bool = False) -> List[str]:
    """Names of the packaged configs, ``<dataset>/<method>[_<regularizer>]``, sorted; with
    ``layers``, also the shared layers they compose (``defaults``, ``<dataset>/_data``)."""
    root = packaged_config_dir()
    names = (p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{CONFIG_SUFFIX}"))
    return sorted(n for n in names if layers or not _is_layer(n))


def _packaged_file(name: str) -> Optional[Path]:
    """The packaged YAML named ``name`` (with or without ``.yaml``), if there is one."""
    root = packaged_config_dir()
    text = name.replace(os.sep, "/")
    if Path(text).is_absolute():
        return None
    stem = text[: -len(CONFIG_SUFFIX)] if text.endswith(CONFIG_SUFFIX) else text
    path = (root / f"{stem}{CONFIG_SUFFIX}").resolve()
    # a name is a file inside the package, never a way out of it ("../../x")
    return path if path.is_file() and root in path.parents else None


def resolve_config(name: Union[str, os.PathLike], relative_to: Optional[Path] = None) -> Path:
    """The YAML file a config name means.

    A file that exists always wins: ``name`` as a path (relative to ``relative_to``, by default
    the working directory), then ``name`` + ``.yaml``. Otherwise it is a packaged config's name,
    with or without ``.yaml`` (``synthetic/mocov2``). Anything else is a one-line ConfigError
    suggesting the closest packaged name.
    """
    text = os.fspath(name)
    base = Path.cwd() if relative_to is None else Path(relative_to)
    local = base / Path(text).expanduser()  # an absolute name replaces the base
    for candidate in (local, local.with_name(local.name + CONFIG_SUFFIX)):
        if candidate.is_file():
            return candidate
    packaged = _packaged_file(text)
    if packaged is not None:
        return packaged
    stem = text[: -len(CONFIG_SUFFIX)] if text.endswith(CONFIG_SUFFIX) else text
    hint = did_you_mean(stem, packaged_configs(layers=True), cutoff=0.5)
    raise ConfigError(f"{text}: config file not found, and no packaged config has that name{hint} "
                      "(`ssl-rs list configs` lists them)")


def config_summary(path: Union[str, os.PathLike]) -> str:
    """One line about a config: the first sentence of its leading comment, else its method and
    regularizer (after composing its ``defaults``)."""
    path = Path(path)
    comment = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    text = " ".join(c for c in comment if c)
    if text:
        first = re.split(r"(?<=[.:;])\s", text, maxsplit=1)[0].rstrip(".:;")
        return first if len(first) <= 100 else first[:99].rstrip() + "…"
    cfg = _load_yaml(path)
    method, geo = OmegaConf.select(cfg, "method.name"), OmegaConf.select(cfg, "geo.name")
    return " + ".join(str(n) for n in (method, geo) if n) or "-"


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
        # relative to this file first, then a packaged name: a user's file can compose
        # ``defaults: [synthetic/mocov2]`` without copying it
        try:
            default = resolve_config(str(name), relative_to=path.parent)
        except ConfigError as e:
            raise ConfigError(f"{path}: defaults: {e}") from None
        merged = OmegaConf.merge(merged, _load_yaml(default, seen + (path.resolve(),)))
    return OmegaConf.merge(merged, raw)


def load_config(path: Union[str, os.PathLike, None] = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Schema <- YAML file (with its ``defaults``) <- ``key=value`` overrides; validated.
    ``path``: a file, or a packaged config's name (see :func:`resolve_config`)."""
    cfg = OmegaConf.structured(PretrainConfig)
    keys = valid_keys()
    layers = []
    if path:
        file = resolve_config(path)
        layers.append((str(file), _load_yaml(file)))
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
            raise ConfigError(f"{source}: unknown config key {key!r}{did_you_mean(key, keys, cutoff=0.5)}") from None
        except ValidationError as e:
            raise ConfigError(f"{source}: {e.full_key}: {str(e).splitlines()[0]}") from None
    if OmegaConf.is_missing(cfg.data, "path"):
        raise ConfigError("data.path: no dataset given (set it in the config or as data.path=FILE.h5)")
    return cfg


#: BaseMethod arguments that come from other config sections, never from ``method.args``
METHOD_ARGS_SET_BY_BUILD = ("augmentation", "regularizer", "alpha", "geo_embedding", "optim", "batch_size", "seed",
                            "eval_preprocess", "knn_k", "knn_temperature", "temporal_views")
#: values of ``augmentation.temporal_views``
TEMPORAL_VIEWS = ("same", "different", "mixed")


def _init_parameters(cls: type) -> List[str]:
    """Keyword arguments a class's constructor accepts, through ``**kwargs`` passed up its bases
    (a method's own, then its base classes': the EMA arguments of a momentum method)."""
    names: List[str] = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names += [p for p, v in params.items() if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)
                  and p not in ("self", "backbone") and p not in names]
        if not any(v.kind == v.VAR_KEYWORD for v in params.values()):
            break  # nothing is passed further up
    return names


def check_args(kind: str, name: str, factory, args: Dict[str, Any], reserved: Sequence[str] = ()) -> None:
    """Raise ConfigError for ``args`` that ``factory`` does not accept, suggesting a close one.
    ``factory`` is a function, or (methods) a class, whose bases' constructors count too."""
    if kind == "method":
        accepted = [p for p in _init_parameters(factory) if p not in reserved]
        reserved = (*reserved, *METHOD_ARGS_SET_BY_BUILD)
    else:
        params = inspect.signature(factory).parameters
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return
        accepted = [p for p in params if p not in ("self", "backbone", *reserved)]
    for key in args:
        if kind == "method" and key in {f.name for f in fields(OptimizerConfig)} | {"optimizer", "scale_lr"}:
            raise ConfigError(f"method.args.{key}: optimiser settings go in the optimizer section "
                              f"(optimizer.{'name' if key == 'optimizer' else key}=...)")
        if key not in accepted or key in reserved:
            raise ConfigError(f"{kind}.args: {name!r} has no argument {key!r}{did_you_mean(key, accepted, cutoff=0.5)}")


def _is_batch_limit(value: Any) -> bool:
    """An integer >= 1 (batches), a whole float > 1 (batches, as Lightning reads it) or a fraction in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return value >= 1
    return 0 < value <= 1 or (value > 1 and value.is_integer())


def validate(cfg: DictConfig) -> None:
    """What a pretraining config can get wrong beyond its types, checked before anything is built
    or written: a one-line ConfigError naming the key. ``pretrain`` runs it first, and the bench
    runner for every cell of a suite before the first one trains.

    First the values (a negative learning rate, zero epochs, a batch of 0; recipe-level optimiser
    values are checked again by the method's recipe), then the registered parts the config names
    (method, backbone, augmentation, regularizer): each exists and accepts its ``args``."""

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
        ("optimizer.lr", positive, "positive (or null for the method's recipe)"),
        ("optimizer.warmup_epochs", non_negative, ">= 0"),
        ("optimizer.min_lr", non_negative, ">= 0"),
        ("optimizer.weight_decay", non_negative, ">= 0"),
        ("eval.knn_k", positive, "a positive integer"),
        ("eval.knn_temperature", positive, "> 0"),
        ("eval.linear_epochs", positive, "a positive integer"),
        ("eval.finetune_epochs", positive, "a positive integer"),
        ("eval.finetune_lr", lambda x: 0 < x < float("inf"), "a learning rate > 0"),
        ("eval.finetune_backbone_lr_scale", lambda x: 0 < x < float("inf"), "> 0"),
        ("eval.finetune_layer_decay", lambda x: 0 < x <= 1, "in (0, 1] (or null for none)"),
        ("eval.finetune_weight_decay", lambda x: 0 <= x < float("inf"), ">= 0"),
        ("eval.segmentation_epochs", positive, "a positive integer"),
    )
    limit = OmegaConf.select(cfg, "trainer.limit_train_batches")
    if limit is not None and not _is_batch_limit(limit):
        raise ConfigError("trainer.limit_train_batches: must be a number of batches (an integer >= 1) or a fraction "
                          f"of the epoch in (0, 1] (or null for all batches), got {limit!r}")
    precision_name(OmegaConf.select(cfg, "eval.precision"), option="eval.precision")  # its device: check_evaluation
    views = OmegaConf.select(cfg, "augmentation.temporal_views")
    if views is not None and views not in TEMPORAL_VIEWS:
        raise ConfigError(f"augmentation.temporal_views: must be one of {', '.join(TEMPORAL_VIEWS)}, got {views!r}")
    for key, ok, what in checks:
        value = OmegaConf.select(cfg, key)
        if value is None:  # null: the default of whatever it configures
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise ConfigError(f"{key}: must be {what}, got {value!r}")

    # the same checks as ``build`` makes of the arguments it passes on (its reserved ones included)
    from .registry import AUGMENTATIONS, BACKBONES, METHODS, REGULARIZERS

    check_args("method", cfg.method.name, METHODS.get(cfg.method.name).factory, dict(cfg.method.args))
    check_args("backbone", cfg.backbone.name, BACKBONES.get(cfg.backbone.name).factory, dict(cfg.backbone.args),
               reserved=("in_chans",))
    check_args("augmentation", cfg.augmentation.name, AUGMENTATIONS.get(cfg.augmentation.name).factory,
               dict(cfg.augmentation.args), reserved=("size", "mean", "std", "n_views", "seed"))
    if cfg.geo.name:
        factory = REGULARIZERS.get(cfg.geo.name).factory
        if "gather" in cfg.geo.args:
            raise ConfigError("geo.args.gather: gathering across devices is set by geo.gather, not in geo.args")
        # build passes geo.gather to every regularizer
        params = inspect.signature(factory).parameters
        if "gather" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            raise ConfigError(f"geo.gather: regularizer {cfg.geo.name!r} takes no gather argument")
        check_args("geo", cfg.geo.name, factory, dict(cfg.geo.args))


def to_dict(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
