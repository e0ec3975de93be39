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
from dataclasses import dataclass, field
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
SYNTH_KEYS = ("n", "size", "seed", "dates", "classes", "tiles")
SPLIT_KEYS = ("scheme", "name", "block_km", "seed", "fractions")
EVAL_KEYS = ("datasets", "protocols", "linear_epochs", "knn_k", "knn_temperature")
EVAL_DATASET_KEYS = ("name", "data", "splits", "schemes")
STUDY_KEYS = ("name", "title", "compare", "metric")
REPORT_KEYS = ("embedding", "embedding_samples", "embedding_runs")
PROTOCOLS = ("knn", "linear")
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
    elif kind == "path":
        params = {"path": str(_resolve(base, value))}
    else:
        value = _check_keys(f"{where}.convert", value, ("format", "src"))
        if "format" not in value or "src" not in value:
            raise ConfigError(f"{where}.convert: needs 'format' and 'src'")
        params = {"format": value["format"], "src": str(_resolve(base, value["src"]))}
    return DataSpec(kind, tuple(sorted(params.items())), _parse_splits(splits_where or f"{where}.splits", splits))


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


@dataclass
class EvalDataset:
    name: str
    data: Optional[DataSpec]  # None: the pretraining dataset
    schemes: List[Optional[str]]


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
    report: Dict[str, Any] = field(default_factory=dict)

    @property
    def varied_axes(self) -> Tuple[str, ...]:
        return tuple(a for a in AXES if len(self.matrix[a]) > 1)

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
            entry = _check_keys(f"{where}[{i}]", entry, ("name", "config", "overrides"))
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
        if isinstance(entry, str):
            entry = {"name": entry}
        entry = _check_keys(f"{where}[{i}]", entry, ("name", "label", "alpha", "args", "overrides"))
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
    protocols = list(ev.get("protocols") or ["knn"])
    for p in protocols:
        if p not in PROTOCOLS:
            raise ConfigError(f"{where}: eval.protocols: unknown protocol {p!r}{_suggest(p, PROTOCOLS)}")
    if "knn" not in protocols:
        protocols.insert(0, "knn")  # k-NN always runs: it is the number every table shares
    datasets = []
    for i, entry in enumerate(ev.get("datasets") or [{"name": "pretrain", "data": "pretrain"}]):
        w = f"{where}: eval.datasets[{i}]"
        entry = _check_keys(w, entry, EVAL_DATASET_KEYS)
        spec = entry.get("data", "pretrain")
        dspec = None if spec == "pretrain" else _parse_data(f"{w}.data", spec, REPO, entry.get("splits"), f"{w}.splits")
        schemes = entry.get("schemes") or [None]
        datasets.append(EvalDataset(str(entry.get("name", f"data{i}")), dspec, list(schemes)))
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: eval.datasets: names must be unique, got {names}")

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
        knn_temperature=ev.get("knn_temperature"), studies=studies, report=report,
    )
