"""Turn a training run into a release: backbone-only safetensors, a model card, the registry entry.

``export_run(RUN_DIR, OUT_DIR)`` reads ``config.yaml``, ``checkpoints/best.ckpt`` (else
``last.ckpt``, loaded with ``weights_only=True``) and ``results.json``, and writes::

    OUT_DIR/<name>.safetensors   the evaluated encoder's weights + metadata (backbone, bands,
                                 normalisation, size; for a timm encoder the timm architecture
                                 and arguments: its keys are the bare timm model's)
    OUT_DIR/MODEL_CARD.md        config, data, metrics, the command that reproduces the run
    OUT_DIR/config.yaml          the run's resolved config (what the reproduce command reads)
    OUT_DIR/entry.py             the WeightsEntry to paste into ssl_rs/zoo/entries.py, with sha256 and size
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .. import __version__
from ..checkpoint import (EncoderExport, TrainingCheckpoint, build_encoder, encoder_export, encoder_state,
                          load_tensors_only, read_normalization)
from ..errors import DataError, SslRsError
from ..files import copy_file, write_bytes, write_text
from ..text import one_line
from .loading import SAFETENSORS_FORMAT
from .weights import WeightsEntry, check_url



def _read_config(config_file: Path) -> Dict[str, Any]:
    """The run's config.yaml as a dict, with the sections export reads checked (one-line DataError)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError, ValueError, TypeError) as e:
        raise DataError(f"{config_file}: not a readable run config ({one_line(e, 200)})") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{config_file}: expected a mapping of config sections, got {type(cfg).__name__}")
    for section in ("backbone", "method"):
        value = cfg.get(section)
        if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
            raise DataError(f"{config_file}: {section}.name: missing (not an ssl-rs run config)")
        if not isinstance(value.get("args") or {}, dict):
            raise DataError(f"{config_file}: {section}.args: expected a mapping, got {type(value['args']).__name__}")
    for section in ("geo", "augmentation", "data", "output"):
        if not isinstance(cfg.get(section) or {}, dict):
            raise DataError(f"{config_file}: {section}: expected a mapping, got {type(cfg[section]).__name__}")
    geo_name = (cfg.get("geo") or {}).get("name")
    if geo_name is not None and not isinstance(geo_name, str):
        raise DataError(f"{config_file}: geo.name: expected a name, got {geo_name!r}")
    size = (cfg.get("augmentation") or {}).get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataError(f"{config_file}: augmentation.size: expected a side in pixels, got {size!r}")
    path = (cfg.get("data") or {}).get("path")
    if path is not None and not isinstance(path, str):
        raise DataError(f"{config_file}: data.path: expected a path, got {path!r}")
    return cfg


def _read_results(results_file: Path) -> Dict[str, Any]:
    """results.json (``{}`` when the run has none), checked where the export reads it."""
    if not results_file.is_file():
        return {}
    try:
        results = json.loads(results_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{results_file}: not valid JSON ({one_line(e, 200)})") from None
    if not isinstance(results, dict):
        raise DataError(f"{results_file}: expected a JSON object, got {type(results).__name__}")
    for key in ("epochs", "steps", "train_seconds"):
        value = results.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DataError(f"{results_file}: {key}: expected a number, got {value!r}")
    evaluation = results.get("eval")
    if evaluation is not None:
        if not isinstance(evaluation, dict):
            raise DataError(f"{results_file}: eval: expected an object per split scheme, got {type(evaluation).__name__}")
        for scheme, res in evaluation.items():
            metrics = res.get("metrics", {}) if isinstance(res, dict) else None
            if not isinstance(metrics, dict) or not all(isinstance(m, dict) for m in metrics.values()):
                raise DataError(f"{results_file}: eval.{scheme}.metrics: expected an object of metrics per protocol")
    return results


def check_output_dir(out: Path) -> None:
    """Fail in one line, before anything is written, if ``out`` cannot hold the export: it is a
    file, a parent is a file, or the directory that would hold it refuses new files. Writes nothing
    that stays (the check creates and removes one probe file)."""
    from ..files import nearest_existing, probe_writable

    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output directory: exists and is not a directory")
    parent = nearest_existing(out)
    if not parent.is_dir():
        raise DataError(f"{out}: output directory: {parent} is not a directory")
    try:
        probe_writable(parent)
    except OSError as e:
        raise DataError(f"{out}: output directory: cannot write in {parent} ({e.strerror or e})") from None


def _read_run(run_dir: Path, checkpoint: Optional[str]):
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise DataError(f"{run_dir}: config.yaml not found (not an ssl-rs run directory)")
    cfg = _read_config(config_file)
    names = [checkpoint] if checkpoint else ["best", "last"]
    ckpt_file = next((run_dir / "checkpoints" / f"{n}.ckpt" for n in names
                      if (run_dir / "checkpoints" / f"{n}.ckpt").is_file()), None)
    if ckpt_file is None:
        raise DataError(f"{run_dir}/checkpoints: no {' or '.join(f'{n}.ckpt' for n in names)}")
    try:
        ckpt = load_tensors_only(ckpt_file)
    except SslRsError as e:
        raise DataError(str(e)) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError(f"{ckpt_file}: state_dict: not a Lightning checkpoint")
    results = _read_results(run_dir / "results.json")
    return cfg, ckpt_file, ckpt, results


def _flat_metrics(results: Dict[str, Any]) -> Dict[str, float]:
    """{"<scheme>/<protocol>_<metric>": value} from results.json's ``eval``."""
    out = {}
    for scheme, res in (results.get("eval") or {}).items():
        for protocol, metrics in res.get("metrics", {}).items():
            for metric, value in metrics.items():
                if isinstance(value, (int, float)):
                    out[f"{scheme}/{protocol}_{metric}"] = round(float(value), 4)
    return out


def _data_facts(cfg: Dict[str, Any], bands, recorded: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Normalisation and size of the training data. The normalisation is the one the checkpoint
    recorded (``recorded``) when it has one: the data file may be gone, moved or rewritten since
    the run; older checkpoints fall back to the file's statistics when the file is still there."""
    data = cfg.get("data", {})
    path = data.get("path")
    facts: Dict[str, Any] = {"path": path, "normalization": recorded, "size": None, "n": None}
    if path and Path(path).is_file():
        from ..data.dataset import GeoDataset

        try:
            ds = GeoDataset(path, bands=bands)
        except DataError:
            return facts
        facts.update(size=ds.size[0], n=len(ds))
        if recorded is None:
            facts["normalization"] = {"type": "standardize", "mean": ds.band_mean, "std": ds.band_std}
    return facts


def export_run(
    run_dir: Union[str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    *,
    name: Optional[str] = None,
    checkpoint: Optional[str] = None,
    url: Optional[str] = None,
    license: str = "unspecified",
) -> Dict[str, Any]:
    """Export one run; returns the written paths and the :class:`WeightsEntry`.

    ``checkpoint``: "best" or "last" (default: best if present). ``url``: where the file will be
    published; until then the entry points at the exported file (``file://``), so it loads as is.
    """
    from safetensors.torch import save as safetensors_bytes

    run = Path(run_dir)
    out = Path(out_dir)
    cfg, ckpt_file, ckpt, results = _read_run(run, checkpoint)
    bands = list(ckpt.get("ssl_rs_bands") or [])
    if not bands:
        raise DataError(f"{ckpt_file}: ssl_rs_bands: the checkpoint does not record its bands")
    backbone = cfg["backbone"]["name"]
    backbone_args = dict(cfg["backbone"].get("args") or {})
    method = cfg["method"]["name"]
    method_args = dict(cfg["method"].get("args") or {})
    release = _encoder_release(TrainingCheckpoint(ckpt_file, ckpt["state_dict"], cfg, bands))
    regularizer = (cfg.get("geo") or {}).get("name")
    facts = _data_facts(cfg, bands, read_normalization(ckpt, len(bands)))
    image_size = (cfg.get("augmentation") or {}).get("size") or facts["size"]
    name = name or f"{backbone}_{run.name}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise DataError(f"--name: {name!r} must be letters, digits, '_', '.', '-'")
    if url is not None:
        check_url(url, "--url")  # before writing: the entry is built after the weights file
    check_output_dir(out)

    out.mkdir(parents=True, exist_ok=True)
    weights_file = out / f"{name}.safetensors"
    metadata = {
        "format": SAFETENSORS_FORMAT, "ssl_rs_version": __version__, "name": name,
        "backbone": backbone, "backbone_args": json.dumps(backbone_args), "bands": json.dumps(bands),
        "normalization": json.dumps(facts["normalization"]), "image_size": json.dumps(image_size),
        "method": method, "regularizer": json.dumps(regularizer), "checkpoint": ckpt_file.name,
        "key_layout": release.key_layout, "encoder": release.encoder, "method_args": json.dumps(method_args),
        "timm_model": json.dumps(release.timm_model), "timm_kwargs": json.dumps(release.timm_kwargs),
    }
    weights = safetensors_bytes(release.state, metadata=metadata)  # written below, with the other files
    sha256, size = hashlib.sha256(weights).hexdigest(), len(weights)

    data_text = f"{facts['path']}" + (f" ({facts['n']} samples, {len(bands)} bands)" if facts["n"] else "")
    entry = WeightsEntry(
        name=name, url=url or weights_file.resolve().as_uri(), sha256=sha256, size=size,
        backbone=backbone, backbone_args=backbone_args, bands=tuple(bands), method=method,
        regularizer=regularizer, pretraining_data=data_text,
        normalization=facts["normalization"] or {"type": "unknown", "note": "not in the checkpoint, and the training "
                                                                            "data file was not found"},
        image_size=int(image_size) if image_size else 0, license=license, key_layout=release.key_layout,
        metrics=_flat_metrics(results), source=f"ssl-rs {__version__} run {run.name}",
        summary=f"{backbone} {method}" + (f" + {regularizer}" if regularizer else "") + f" on {Path(str(facts['path'])).name}",
    )
    # Every file is composed before the first is written, and each is written atomically
    # (ssl_rs.files: .NAME.part beside it, mode from the umask, "replaced OUT" on the log).
    card, entry_text = model_card(entry, cfg, results, ckpt_file, release), entry_source(entry)
    write_bytes(weights_file, weights)
    copy_file(run / "config.yaml", out / "config.yaml")
    write_text(out / "entry.py", entry_text)
    write_text(out / "MODEL_CARD.md", card)
    return {"weights": weights_file, "model_card": out / "MODEL_CARD.md", "entry_file": out / "entry.py",
            "config": out / "config.yaml", "entry": entry}


def _encoder_release(training: TrainingCheckpoint) -> EncoderExport:
    """The evaluated encoder of the checkpoint, rebuilt as the run built it and put in its release
    form; weights that do not fit the run's config are one line."""
    cfg = training.config
    try:
        encoder = build_encoder(cfg["backbone"]["name"], cfg["backbone"].get("args") or {}, training.method,
                                training.method_args, training.bands)
        encoder.load_state_dict(encoder_state(training))
    except SslRsError as e:
        raise DataError(str(e)) from None
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{training.path}: state_dict: does not fit the run's config (backbone "
                        f"{cfg['backbone']['name']!r}, method {training.method!r}): {one_line(e, 200)}") from None
    return encoder_export(encoder, training.method)


def entry_source(entry: WeightsEntry) -> str:
    """Python source registering ``entry``, ready to paste into ``ssl_rs/zoo/entries.py``."""
    fields = entry.as_dict()
    fields.pop("in_chans")
    fields["bands"] = tuple(fields["bands"])
    lines = [f"    {k}={v!r}," for k, v in fields.items()]
    return (
        "# Registry entry for ssl_rs/zoo/entries.py. Upload the .safetensors file first and set `url`\n"
        "# to its public address; sha256 and size are those of the exported file.\n"
        "from ssl_rs.zoo.weights import ZOO, WeightsEntry\n\n"
        "ZOO.register(WeightsEntry(\n" + "\n".join(lines) + "\n))\n"
    )


def loading_lines(entry: WeightsEntry, release: EncoderExport) -> str:
    """The model card's "Use" section: the code that loads the file."""
    ssl_rs = (f'from ssl_rs.zoo import load_backbone\n'
              f'backbone = load_backbone("{entry.filename}")   # or the registered name once published')
    if release.key_layout == "timm":
        kwargs = "".join(f", {k}={v!r}" for k, v in (release.timm_kwargs or {}).items())
        return ("The weights are a plain timm model's state dict:\n\n```python\nimport timm\n"
                "from safetensors.torch import load_file\n"
                f'model = timm.create_model("{release.timm_model}", in_chans={entry.in_chans}, num_classes=0{kwargs})\n'
                f'model.load_state_dict(load_file("{entry.filename}"))   # strict: every key matches\n```\n\n'
                "or, with the bands and normalisation recorded in the file:\n\n"
                f"```python\n{ssl_rs}\n```")
    what = ("ssl-rs's own backbone" if release.encoder == "backbone"
            else f"the {release.encoder!r} method's encoder (not a plain timm model)")
    return f"The weights are {what}; ssl-rs rebuilds it from the file's metadata:\n\n```python\n{ssl_rs}\n```"


def model_card(entry: WeightsEntry, cfg: Dict[str, Any], results: Dict[str, Any], ckpt_file: Path,
               release: EncoderExport) -> str:
    import yaml

    norm = entry.normalization
    if norm.get("type") == "standardize":
        norm_text = "per-band (x - mean) / std, with\n\n" + "\n".join(
            f"  - {b}: mean {m:.2f}, std {s:.2f}" for b, m, s in zip(entry.bands, norm["mean"], norm["std"]))
    else:
        norm_text = json.dumps(dict(norm))
    metric_rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in entry.metrics.items()) or "| (no results.json) | |"
    timing = ""
    if results:
        timing = (f"Trained {results.get('epochs')} epochs ({results.get('steps')} steps) in "
                  f"{results.get('train_seconds', 0):.0f} s; exported from `{ckpt_file.name}`.")
    return f"""# {entry.name}

{entry.summary}.

| field | value |
| --- | --- |
| file | `{entry.filename}` |
| sha256 | `{entry.sha256}` |
| size | {entry.size} bytes |
| backbone | `{entry.backbone}` {json.dumps(dict(entry.backbone_args))} |
| input bands ({entry.in_chans}) | {', '.join(entry.bands)} |
| method | {entry.method} |
| geo regularizer | {entry.regularizer or 'none'} |
| pretraining data | {entry.pretraining_data} |
| image size | {entry.image_size} px |
| licence | {entry.license} |
| ssl-rs | {__version__} |

## Input normalisation

{norm_text}

## Metrics (ssl-rs harness, percent)

| scheme/metric | value |
| --- | --- |
{metric_rows}

{timing}

## Use

{loading_lines(entry, release)}

## Reproduce

```bash
ssl-rs pretrain -c config.yaml        # the run's resolved config, shipped next to this card
ssl-rs zoo export {cfg.get('output', {}).get('dir', 'runs')}/{ckpt_file.parent.parent.name} -o OUT_DIR
```

## Config

```yaml
{yaml.safe_dump(cfg, sort_keys=False).rstrip()}
```
"""
