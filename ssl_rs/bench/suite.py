"""Benchmark suites: a YAML matrix of pretraining runs, validated and expanded into cells.

A suite names one pretraining dataset, the split schemes to add to it, a base config (a path or a
packaged name such as ``synthetic/mocov2``, see :func:`ssl_rs.config.resolve_config`) with
overrides, and a ``matrix`` of axes (method x regularizer x augmentation x subset x image size
x seed). Every combination is a :class:`Cell` whose id is a hash of its resolved config, so a
rerun recognises the cells it has already finished. See ``docs/benchmarks_runner.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from ..config import resolve_config
from ..errors import ConfigError
from ..text import did_you_mean

REPO = Path(__file__).resolve().parents[2]
AXES = ("method", "regularizer", "augmentation", "subset", "image_size", "seed")
SUITE_KEYS = ("name", "description", "data", "splits", "base_config", "overrides", "matrix", "subset_seed",
              "eval", "studies", "report")
DATA_KEYS = ("synth", "path", "convert")
SYNTH_KEYS = ("n", "size", "seed", "dates", "classes", "tiles", "masks")
SPLIT_KEYS = ("scheme", "name", "block_km", "seed", "fractions")
# eval keys passed to the harness as they are, only when given (so suites without them keep their cell ids)
FINETUNE_OPTIONS = ("finetune_epochs", "finetune_lr", "finetune_backbone_lr_scale", "finetune_layer_decay",
                    "finetune_weight_decay", "finetune_schedule")
SEGMENTATION_OPTIONS = ("segmentation_epochs", "segmentation_lr", "segmentation_decoder", "segmentation_recipe")
# every protocol's forward passes (ssl_rs/evaluation/features.py); left out: the cell config's eval.precision
PRECISION_OPTIONS = ("precision",)
# the k-NN's votes and the linear probe's recipe (the GeoRank authors': knn_votes sum, linear_recipe georank),
# the evaluation's image size: the pretraining's (default) or each dataset's own (``data``, as the authors),
# and the batch size of feature extraction, fine-tuning and the segmentation probe (the harness's 256)
PROBE_OPTIONS = ("knn_votes", "linear_recipe", "size", "batch_size")
EVAL_SIZES = ("pretraining", "data")
EVAL_OPTIONS = FINETUNE_OPTIONS + SEGMENTATION_OPTIONS + PRECISION_OPTIONS + PROBE_OPTIONS
EVAL_KEYS = ("datasets", "protocols", "linear_epochs", "knn_k", "knn_temperature") + EVAL_OPTIONS
EVAL_DATASET_KEYS = ("name", "data", "splits", "schemes", "protocols")
STUDY_KEYS = ("name", "title", "compare", "metric")
REPORT_KEYS = ("embedding", "embedding_samples", "embedding_runs")
# Evaluation protocols are the harness's (ssl_rs.evaluation.harness.PROTOCOLS), read when a suite
# is loaded, so a protocol added there is accepted here without a change.
# The metrics a reference may name, per protocol. A protocol not listed here takes the names of
# harness.PROTOCOL_METRICS where the harness declares them; otherwise any lower-case name is
# accepted, and the report notes a reference whose metric was never measured.
CLASSIFICATION_METRICS = ("acc_macro", "acc_micro", "ap_macro", "ap_micro")
# ``iou_<class>``: any name that starts with ``iou_`` (one per class of the data).
SEGMENTATION_METRICS = ("miou", "f1_macro", "pixel_acc", "iou_<class>")
REFERENCE_METRICS = {"knn": CLASSIFICATION_METRICS, "linear": CLASSIFICATION_METRICS,
                     "finetune": CLASSIFICATION_METRICS, "segmentation": SEGMENTATION_METRICS}
# Overrides every cell gets: the runner owns where runs go and prints its own progress line.
RUNNER_OWNED = ("output.dir", "output.name", "output.overwrite", "data.path")


def _suggest(name: str, candidates: Sequence[str]) -> str:
    # suite keys and values are short: a looser match than the default still helps
    return did_you_mean(name, candidates, cutoff=0.5)


def _check_keys(where: str, mapping: Any, allowed: Sequence[str]) -> Dict[str, Any]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, allowed)} (allowed: {', '.join(allowed)})")
    return mapping


def short_hash(payload: Any, n: int = 12) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class DataSpec:
    """Where a dataset comes from: synthesised or converted into the output dir, or a file."""

    kind: str  # "synth" | "path" | "convert"
    params: Tuple[Tuple[str, Any], ...]
    splits: Tuple[Tuple[Tuple[str, Any], ...], ...] = ()

    @property
    def key(self) -> Dict[str, Any]:
        """The dataset's identity (hashed into cell ids instead of a machine-specific path)."""
        return {"kind": self.kind, **dict(self.params), "splits": [dict(s) for s in self.splits]}

    def file_name(self, label: str) -> str:
        return f"{label}-{short_hash(self.key, 8)}.h5"


def _parse_splits(where: str, splits: Any) -> Tuple[Tuple[Tuple[str, Any], ...], ...]:
    from ..data.splits import SCHEMES

    if splits is None:
        return ()
    if not isinstance(splits, list):
        raise ConfigError(f"{where}: expected a list of {{scheme, block_km, seed}} entries")
    out = []
    for i, entry in enumerate(splits):
        entry = _check_keys(f"{where}[{i}]", entry, SPLIT_KEYS)
        scheme = entry.get("scheme")
        if scheme not in SCHEMES:
            raise ConfigError(f"{where}[{i}].scheme: unknown split scheme {scheme!r}{_suggest(scheme, SCHEMES)}")
        out.append(tuple(sorted(entry.items())))
    return tuple(out)


def _parse_data(where: str, data: Any, base: Path, splits: Any = None, splits_where: str = "") -> DataSpec:
    data = _check_keys(where, data, DATA_KEYS)
    given = [k for k in DATA_KEYS if k in data]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(DATA_KEYS)} (got {given or 'none'})")
    kind = given[0]
    value = data[kind]
    if kind == "synth":
        params = _check_keys(f"{where}.synth", value, SYNTH_KEYS)
        params = {"n": 2000, "size": 32, "seed": 0, "dates": 1, "classes": 8, **params}
        if "masks" in params:
            if not isinstance(params["masks"], bool):
                raise ConfigError(f"{where}.synth.masks: expected true or false, got {params['masks']!r}")
            if not params["masks"]:
                del params["masks"]  # the default: no change to the data's identity
            else:
                _check_synth_masks(f"{where}.synth.masks")
    elif kind == "path":
        params = {"path": str(_resolve(base, value))}
    else:
        value = _check_keys(f"{where}.convert", value, ("format", "src"))
        if "format" not in value or "src" not in value:
            raise ConfigError(f"{where}.convert: needs 'format' and 'src'")
        params = {"format": value["format"], "src": str(_resolve(base, value["src"]))}
    return DataSpec(kind, tuple(sorted(params.items())), _parse_splits(splits_where or f"{where}.splits", splits))


def _check_synth_masks(where: str) -> None:
    """``masks: true`` needs a ``data synth`` that writes segmentation masks."""
    import inspect

    from ..data.synth import synthesize

    if "masks" not in inspect.signature(synthesize).parameters:
        raise ConfigError(f"{where}: this ssl-rs cannot synthesise masks (ssl_rs.data.synth.synthesize has no "
                          "'masks' option)")


def harness_protocols() -> Tuple[str, ...]:
    from ..evaluation import harness

    return tuple(harness.PROTOCOLS)


def reference_metrics(protocol: str) -> Optional[Tuple[str, ...]]:
    """The metric names a reference may give for ``protocol``; None: not declared (any name)."""
    from ..evaluation import harness

    declared = getattr(harness, "PROTOCOL_METRICS", {}) or {}
    if protocol in declared:
        return tuple(declared[protocol])
    return REFERENCE_METRICS.get(protocol)


def _resolve(base: Path, value: Any) -> Path:
    """A relative path in a suite is taken from the working directory if it exists there, else
    from the repository root (so suites run from the root, and `report` works from anywhere)."""
    p = Path(str(value))
    if p.is_absolute():
        return p
    return (Path.cwd() / p).resolve() if (Path.cwd() / p).exists() else base / p


@dataclass(frozen=True)
class AxisValue:
    """One value of a matrix axis: its label in tables and what it changes in the config."""

    axis: str
    label: str
    value: Any = None
    overrides: Tuple[str, ...] = ()
    geo: Optional[Tuple[Tuple[str, Any], ...]] = None  # regularizer: replaces the config's geo block
    # published values: ((eval dataset, scheme or None, protocol, metric), value), and where from
    reference: Tuple[Tuple[Tuple[str, Optional[str], str, str], float], ...] = ()
    source: str = ""


@dataclass
class EvalDataset:
    name: str
    data: Optional[DataSpec]  # None: the pretraining dataset
    schemes: List[Optional[str]]
    own_protocols: Optional[List[str]] = None  # the dataset's own eval protocols; None: the suite's
    protocols: List[str] = field(default_factory=list)  # what runs on it


@dataclass
class Study:
    name: str
    title: str
    compare: List[str]
    metric: Optional[str] = None


@dataclass
class Cell:
    """One pretraining run of the matrix and everything needed to run and label it."""

    index: int
    values: Dict[str, AxisValue]
    config_path: Path
    overrides: List[str]
    subset: Optional[float] = None
    id: str = ""
    base_scheme: Optional[str] = None  # the split scheme a subset is cut from
    axes_varied: Tuple[str, ...] = ()  # the suite's axes with several values (named in labels)

    @property
    def label(self) -> str:
        parts = [self.values["method"].label]
        reg = self.values["regularizer"].label
        if reg != "none":
            parts[0] += f"+{reg}"
        for axis in ("augmentation", "subset", "image_size"):
            if axis in self.axes_varied:
                parts.append(f"{axis}={self.values[axis].label}" if axis != "augmentation" else self.values[axis].label)
        parts.append(f"seed={self.values['seed'].label}")
        return " ".join(parts)

    @property
    def run_name(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.values["method"].label)
        reg = self.values["regularizer"].label
        if reg != "none":
            safe += f"_{reg}"
        return f"{safe}-s{self.values['seed'].label}-{self.id[:8]}"


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    data: DataSpec
    base_config: Path
    overrides: List[str]
    matrix: Dict[str, List[AxisValue]]
    subset_seed: int
    eval_datasets: List[EvalDataset]
    protocols: List[str]
    linear_epochs: int
    knn_k: Optional[int]
    knn_temperature: Optional[float]
    studies: List[Study]
    eval_options: Dict[str, Any] = field(default_factory=dict)  # finetune_epochs, segmentation_epochs
    report: Dict[str, Any] = field(default_factory=dict)

    @property
    def varied_axes(self) -> Tuple[str, ...]:
        return tuple(a for a in AXES if len(self.matrix[a]) > 1)

    def reference(self, method: str, regularizer: str) -> Dict[Tuple[str, Optional[str], str, str], Tuple[float, str]]:
        """The published values of the cells with these method and regularizer labels (as in
        results.csv): (eval dataset, scheme or None, protocol, metric) -> (value, source)."""
        out: Dict[Tuple[str, Optional[str], str, str], Tuple[float, str]] = {}
        for axis, label in (("method", method), ("regularizer", regularizer)):
            for v in self.matrix.get(axis, []):
                if v.label == label:
                    out.update({k: (value, v.source) for k, value in v.reference})
        return out

    @property
    def has_references(self) -> bool:
        return any(v.reference for axis in ("method", "regularizer") for v in self.matrix.get(axis, []))

    def cells(self) -> List[Cell]:
        """The matrix in a fixed order (seed innermost), each with its config overrides."""
        cells = []
        for i, combo in enumerate(itertools.product(*(self.matrix[a] for a in AXES))):
            values = dict(zip(AXES, combo))
            method = values["method"]
            overrides = list(self.overrides) + list(method.overrides)
            for axis in ("regularizer", "augmentation", "image_size", "seed"):
                overrides += list(values[axis].overrides)
            subset = values["subset"].value
            cells.append(Cell(i + 1, values, Path(method.value), overrides, subset, axes_varied=self.varied_axes))
        return cells


def _method_values(where: str, raw: Any, zoo_dir: Path) -> List[AxisValue]:
    known = sorted(p.stem for p in zoo_dir.glob("*.yaml") if not p.stem.startswith("_"))
    out = []
    for i, entry in enumerate(raw):
        if isinstance(entry, dict):
            entry = _check_keys(f"{where}[{i}]", entry, ("name", "config", "overrides", "reference", "source"))
            name, config, overrides = entry.get("name"), entry.get("config"), entry.get("overrides") or []
        else:
            name, config, overrides = entry, None, []
        if not isinstance(name, str):
            raise ConfigError(f"{where}[{i}]: expected a zoo config name or {{name, config, overrides}}")
        if config:  # a path or a packaged name, as base_config
            try:
                path = resolve_config(str(config))
            except ConfigError as e:
                raise ConfigError(f"{where}[{i}].config: {e}") from None
        else:
            path = zoo_dir / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"{where}[{i}]: unknown method {name!r}{_suggest(name, known)} (no {path})")
        out.append(AxisValue("method", name, str(path), tuple(_check_overrides(f"{where}[{i}]", overrides))))
    return out


def _check_eval_options(where: str, options: Dict[str, Any]) -> None:
    """The protocols' own checks, each error naming the suite's key (``eval.finetune_lr``)."""
    from ..evaluation.features import check_precision
    from ..evaluation.finetune import check_finetune_options
    from ..evaluation.harness import check_eval_options
    from ..evaluation.segmentation import check_segmentation_options

    def given(keys, prefix):
        return {k[len(prefix):]: options[k] for k in keys if k in options}

    try:
        check_finetune_options(**given(FINETUNE_OPTIONS, "finetune_"),
                               names={k[len("finetune_"):]: f"eval.{k}" for k in FINETUNE_OPTIONS})
        check_segmentation_options(**given(SEGMENTATION_OPTIONS, "segmentation_"),
                                   names={k[len("segmentation_"):]: f"eval.{k}" for k in SEGMENTATION_OPTIONS})
        probe = {k: options[k] for k in ("knn_votes", "linear_recipe", "batch_size") if k in options}
        check_eval_options(**probe, names={k: f"eval.{k}" for k in probe})
        if "size" in options and options["size"] not in EVAL_SIZES:
            raise ConfigError(f"eval.size: unknown {options['size']!r} (use {', '.join(EVAL_SIZES)})")
        if "precision" in options:  # its device is checked when the suite runs (a dry run plans it anywhere)
            options["precision"] = check_precision(options["precision"], option="eval.precision")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_overrides(where: str, overrides: Any) -> List[str]:
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ConfigError(f"{where}.overrides: expected a list of 'key=value' strings")
    for o in overrides:
        if o.split("=", 1)[0] in RUNNER_OWNED:
            raise ConfigError(f"{where}.overrides: {o.split('=', 1)[0]} is set by the runner")
    return overrides


def _regularizer_values(where: str, raw: Any) -> List[AxisValue]:
    from ..registry import REGULARIZERS

    out = []
    for i, entry in enumerate(raw):
        if entry is None or entry == "none":
            out.append(AxisValue("regularizer", "none", None, (), geo=(("name", None),)))
            continue
        if isinstance(entry, dict) and entry.get("name", "none") in (None, "none"):  # none with a reference
            entry = _check_keys(f"{where}[{i}]", entry, ("name", "label", "reference", "source"))
            out.append(AxisValue("regularizer", str(entry.get("label", "none")), None, (), geo=(("name", None),)))
            continue
        if isinstance(entry, str):
            entry = {"name": entry}
        entry = _check_keys(f"{where}[{i}]", entry, ("name", "label", "alpha", "args", "overrides", "reference",
                                                     "source"))
        name = entry.get("name")
        if name not in REGULARIZERS:
            raise ConfigError(f"{where}[{i}]: unknown regularizer {name!r}{_suggest(name, REGULARIZERS.names())}"
                              f" (known: none, {', '.join(REGULARIZERS.names())})")
        geo = {"name": name, "args": dict(entry.get("args") or {})}
        if "alpha" in entry:
            geo["alpha"] = float(entry["alpha"])
        overrides = _check_overrides(f"{where}[{i}]", entry.get("overrides") or [])
        out.append(AxisValue("regularizer", str(entry.get("label", name)), name, tuple(overrides),
                             geo=tuple(sorted(geo.items(), key=lambda kv: kv[0]))))
    return out


def _augmentation_values(where: str, raw: Any) -> List[AxisValue]:
    from ..registry import AUGMENTATIONS

    out = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {"name": entry}
        entry = _check_keys(f"{where}[{i}]", entry, ("name", "label", "args", "overrides"))
        name = entry.get("name")
        if name not in AUGMENTATIONS:
            raise ConfigError(f"{where}[{i}]: unknown augmentation preset {name!r}"
                              f"{_suggest(name, AUGMENTATIONS.names())} (known: {', '.join(AUGMENTATIONS.names())})")
        overrides = [f"augmentation.name={name}"]
        overrides += [f"augmentation.args.{k}={json.dumps(v)}" for k, v in (entry.get("args") or {}).items()]
        overrides += _check_overrides(f"{where}[{i}]", entry.get("overrides") or [])
        out.append(AxisValue("augmentation", str(entry.get("label", name)), name, tuple(overrides)))
    labels = [v.label for v in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: two augmentation entries share the label "
                          f"{next(x for x in labels if labels.count(x) > 1)!r}: give each a distinct label")
    return out


def _number_values(where: str, axis: str, raw: Any) -> List[AxisValue]:
    out = []
    for i, v in enumerate(raw):
        if axis == "subset":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (0 < v <= 1 or (float(v).is_integer() and v > 1))
            if not ok:
                raise ConfigError(f"{where}[{i}]: subset {v!r} must be a fraction in (0, 1] or a sample count > 1")
            out.append(AxisValue(axis, f"{v:g}", v))
        else:
            if not isinstance(v, int) or isinstance(v, bool) or v < (8 if axis == "image_size" else 0):
                lo = "an image side >= 8" if axis == "image_size" else "a non-negative integer"
                raise ConfigError(f"{where}[{i}]: {axis} {v!r} must be {lo}")
            key = "augmentation.size" if axis == "image_size" else "trainer.seed"
            out.append(AxisValue(axis, str(v), v, (f"{key}={v}",)))
    return out


def _parse_protocols(where: str, raw: Any) -> List[str]:
    known = harness_protocols()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: expected a non-empty list of protocols ({', '.join(known)})")
    for p in raw:
        if p not in known:
            raise ConfigError(f"{where}: unknown protocol {p!r}{_suggest(str(p), known)} (known: {', '.join(known)})")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"{where}: a protocol is listed twice: {raw}")
    return list(raw)


def _parse_reference(where: str, raw: Any, datasets: List[EvalDataset]) -> Tuple[Tuple[Tuple[str, Optional[str], str, str], float], ...]:
    """``{eval dataset[/scheme]: {protocol: {metric: value}}}`` -> sorted ((dataset, scheme, protocol,
    metric), value) pairs; every name is checked against the suite's eval datasets, their schemes
    and protocols, and the protocol's metrics."""
    import re

    shape = "{eval dataset: {protocol: {metric: value}}}"
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: expected a mapping {shape}, got {raw!r}")
    by_name = {d.name: d for d in datasets}
    out = {}
    for task, protocols in raw.items():
        task = str(task)
        name, _, scheme = task.partition("/")
        w = f"{where}.{task}"
        if name not in by_name:
            raise ConfigError(f"{w}: unknown eval dataset {name!r}{_suggest(name, list(by_name))} "
                              f"(eval.datasets: {', '.join(by_name)})")
        ds = by_name[name]
        schemes = [str(s) for s in ds.schemes if s is not None]
        if scheme:
            if scheme not in schemes:
                known = ", ".join(schemes) or "none named: it is evaluated on its default split"
                raise ConfigError(f"{w}: eval dataset {name!r} has no scheme {scheme!r}{_suggest(scheme, schemes)} "
                                  f"(its schemes: {known})")
        elif len(ds.schemes) > 1:
            raise ConfigError(f"{w}: eval dataset {name!r} is evaluated on several schemes ({', '.join(schemes)}): "
                              f"name one, e.g. {name}/{schemes[0]}")
        else:
            scheme = ds.schemes[0]
        if not isinstance(protocols, dict) or not protocols:
            raise ConfigError(f"{w}: expected a mapping {{protocol: {{metric: value}}}}, got {protocols!r}")
        for protocol, metrics in protocols.items():
            wp = f"{w}.{protocol}"
            known = harness_protocols()
            if protocol not in known:
                raise ConfigError(f"{wp}: unknown protocol {protocol!r}{_suggest(str(protocol), known)} "
                                  f"(known: {', '.join(known)})")
            if protocol not in ds.protocols:
                raise ConfigError(f"{wp}: protocol {protocol!r} is not run on eval dataset {name!r} "
                                  f"(its protocols: {', '.join(ds.protocols)})")
            if not isinstance(metrics, dict) or not metrics:
                raise ConfigError(f"{wp}: expected a mapping {{metric: value}}, got {metrics!r}")
            allowed = reference_metrics(protocol)
            for metric, value in metrics.items():
                wm = f"{wp}.{metric}"
                metric = str(metric)
                per_class = any(a.endswith("_<class>") and metric.startswith(a[:-len("<class>")]) and
                                metric != a[:-len("<class>")] for a in allowed or ())
                if allowed is not None and metric not in allowed and not per_class:
                    raise ConfigError(f"{wm}: unknown metric {metric!r} for protocol {protocol!r}"
                                      f"{_suggest(metric, allowed)} (its metrics: {', '.join(allowed)})")
                if allowed is None and not re.fullmatch(r"[a-z][a-z0-9_]*", metric):
                    raise ConfigError(f"{wm}: {metric!r} is not a metric name (lower-case letters, digits, _)")
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{wm}: expected a number (the published value, in percent), got {value!r}")
                out[(name, scheme, str(protocol), metric)] = float(value)
    return tuple(sorted(out.items(), key=lambda kv: tuple(str(k) for k in kv[0])))


def load_suite(path: str | Path) -> Suite:
    """Parse and validate a suite file; every problem is one ConfigError line naming the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: cannot parse YAML ({str(e).splitlines()[0]})") from None
    where = str(path)
    raw = _check_keys(where, raw, SUITE_KEYS)
    if "data" not in raw:
        raise ConfigError(f"{where}: data: no pretraining dataset (give data.synth, data.path or data.convert)")
    data = _parse_data(f"{where}: data", raw["data"], REPO, raw.get("splits"), f"{where}: splits")
    if "base_config" not in raw:
        raise ConfigError(f"{where}: base_config: missing (a config path or packaged name, e.g. synthetic/mocov2)")
    try:
        base_config = resolve_config(str(raw["base_config"]))
    except ConfigError as e:
        raise ConfigError(f"{where}: base_config: {e}") from None
    overrides = _check_overrides(f"{where}: overrides", list(raw.get("overrides") or []))

    matrix_raw = _check_keys(f"{where}: matrix", raw.get("matrix") or {}, AXES)
    matrix: Dict[str, List[AxisValue]] = {}
    for axis in AXES:
        values = matrix_raw.get(axis)
        if values is None:
            continue
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: matrix.{axis}: expected a non-empty list")
        w = f"{where}: matrix.{axis}"
        if axis == "method":
            matrix[axis] = _method_values(w, values, base_config.parent)
        elif axis == "regularizer":
            matrix[axis] = _regularizer_values(w, values)
        elif axis == "augmentation":
            matrix[axis] = _augmentation_values(w, values)
        else:
            matrix[axis] = _number_values(w, axis, values)
        labels = [v.label for v in matrix[axis]]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{w}: duplicate values {sorted({x for x in labels if labels.count(x) > 1})}")
    # Axes left out take the base config's value: one AxisValue that changes nothing.
    matrix.setdefault("method", [AxisValue("method", base_config.stem, str(base_config))])
    matrix.setdefault("regularizer", [AxisValue("regularizer", "none")])
    matrix.setdefault("augmentation", [AxisValue("augmentation", "config")])
    matrix.setdefault("subset", [AxisValue("subset", "all", None)])
    matrix.setdefault("image_size", [AxisValue("image_size", "data")])
    matrix.setdefault("seed", [AxisValue("seed", "0", 0, ("trainer.seed=0",))])

    ev = _check_keys(f"{where}: eval", raw.get("eval") or {}, EVAL_KEYS)
    protocols = _parse_protocols(f"{where}: eval.protocols", ev.get("protocols") or ["knn"])
    if "knn" not in protocols:
        protocols.insert(0, "knn")  # k-NN always runs: it is the number every table shares
    datasets = []
    for i, entry in enumerate(ev.get("datasets") or [{"name": "pretrain", "data": "pretrain"}]):
        w = f"{where}: eval.datasets[{i}]"
        entry = _check_keys(w, entry, EVAL_DATASET_KEYS)
        spec = entry.get("data", "pretrain")
        dspec = None if spec == "pretrain" else _parse_data(f"{w}.data", spec, REPO, entry.get("splits"), f"{w}.splits")
        schemes = entry.get("schemes") or [None]
        if not isinstance(schemes, list) or len(set(map(str, schemes))) != len(schemes):
            raise ConfigError(f"{w}.schemes: expected a list of distinct split scheme names, got {schemes!r}")
        # a dataset's own protocols run as given (a segmentation task has no k-NN to add)
        own = _parse_protocols(f"{w}.protocols", entry["protocols"]) if "protocols" in entry else None
        datasets.append(EvalDataset(str(entry.get("name", f"data{i}")), dspec, list(schemes), own,
                                    list(own if own is not None else protocols)))
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: eval.datasets: names must be unique, got {names}")
    for n in names:
        if "/" in n:
            raise ConfigError(f"{where}: eval.datasets: name {n!r} has a '/' (references name a scheme as NAME/SCHEME)")
    for axis in ("method", "regularizer"):
        raw_values = matrix_raw.get(axis) or []
        for i, entry in enumerate(raw_values):
            if isinstance(entry, dict) and ("reference" in entry or "source" in entry):
                w = f"{where}: matrix.{axis}[{i}]"
                reference = _parse_reference(f"{w}.reference", entry.get("reference"), datasets)
                source = entry.get("source", "")
                if not isinstance(source, str):
                    raise ConfigError(f"{w}.source: expected a string (where the reference values come from)")
                if source and not reference:
                    raise ConfigError(f"{w}.source: given without a reference")
                matrix[axis][i] = replace(matrix[axis][i], reference=reference, source=source.strip())
    for m in matrix["method"]:
        for r in matrix["regularizer"]:
            both = sorted(set(dict(m.reference)) & set(dict(r.reference)))
            if both:
                ds, scheme, protocol, metric = both[0]
                task = ds + (f"/{scheme}" if scheme else "")
                raise ConfigError(f"{where}: matrix: the reference {task}.{protocol}.{metric} is given both by method "
                                  f"{m.label!r} and by regularizer {r.label!r}; give it once")

    eval_options = {key: ev[key] for key in EVAL_OPTIONS if key in ev}
    _check_eval_options(where, eval_options)

    studies = []
    for i, entry in enumerate(raw.get("studies") or []):
        w = f"{where}: studies[{i}]"
        entry = _check_keys(w, entry, STUDY_KEYS)
        compare = entry.get("compare") or []
        if isinstance(compare, str):
            compare = [compare]
        for axis in compare:
            if axis not in AXES:
                raise ConfigError(f"{w}.compare: unknown axis {axis!r}{_suggest(axis, AXES)}")
        name = str(entry.get("name", f"study{i + 1}"))
        studies.append(Study(name, str(entry.get("title", name)), list(compare), entry.get("metric")))
    if not studies:
        studies = [Study("main", "Results", [a for a in AXES if a != "seed" and len(matrix[a]) > 1])]
    report = _check_keys(f"{where}: report", raw.get("report") or {}, REPORT_KEYS)
    if report.get("embedding", "tsne") not in ("tsne", "pca"):
        raise ConfigError(f"{where}: report.embedding: use tsne or pca, got {report['embedding']!r}")
    return Suite(
        name=str(raw.get("name", path.stem)), path=path, description=str(raw.get("description", "")).strip(),
        data=data, base_config=base_config, overrides=overrides, matrix=matrix,
        subset_seed=int(raw.get("subset_seed", 0)), eval_datasets=datasets, protocols=protocols,
        linear_epochs=int(ev.get("linear_epochs", 100)), knn_k=ev.get("knn_k"),
        knn_temperature=ev.get("knn_temperature"), studies=studies, report=report, eval_options=eval_options,
    )
