"""The ssl-rs command: pretrain, evaluate, convert data, fetch pretrained weights, run benchmarks.

The CLI only parses arguments and calls library functions. Errors caused by input
(:class:`~ssl_rs.errors.SslRsError`) are printed as one line and exit with status 2. stdout
carries only results (tables, JSON); progress and log lines go to stderr (:mod:`ssl_rs.progress`),
so ``ssl-rs ... > out`` keeps the results alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

from .errors import ConfigError, SslRsError
from .text import markdown_table

EXIT_USAGE = 2


# ----------------------------------------------------------------------------- helpers
def _floats(text: str) -> List[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> List[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _write_json(path: Optional[str], payload: Dict) -> None:
    if path:
        from pathlib import Path

        from .files import write_text

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(payload, indent=2) + "\n")  # atomic: a reader never sees half a file


# ----------------------------------------------------------------------------- list
LIST_KINDS = ("backbones", "augmentations", "methods", "regularizers", "converters", "configs")


def _listing(kind: str) -> List[Dict[str, object]]:
    """Name and one-line description of everything of one kind (the registries load themselves)."""
    if kind == "configs":
        from .config import config_summary, packaged_configs, resolve_config

        return [{"name": n, "description": config_summary(resolve_config(n))} for n in packaged_configs()]
    if kind == "converters":
        from .data.converters import CONVERTERS

        return [{"name": c.name, "description": c.summary} for c in CONVERTERS.entries()]
    from .registry import AUGMENTATIONS, BACKBONES, METHODS, REGULARIZERS

    registry = {"backbones": BACKBONES, "augmentations": AUGMENTATIONS, "methods": METHODS,
                "regularizers": REGULARIZERS}[kind]
    return [{"name": e.name, "description": e.summary} for e in registry.entries()]


def cmd_list(args: argparse.Namespace) -> int:
    for kind in [args.kind] if args.kind else LIST_KINDS:
        rows = _listing(kind)
        print(f"{kind} ({len(rows)})")
        print(markdown_table(rows, ["name", "description"]))
        print()
    return 0


# ----------------------------------------------------------------------------- data
_STATES_DEFAULT = re.compile(r"\bdefault[: ]")


def _add_converter_flags(p: argparse.ArgumentParser) -> None:
    """One flag per option the converters declare (``patch_size`` -> ``--patch-size``), so a new
    converter's options reach the command without an edit here. An option several converters
    declare is one flag; its type and choices are kept where they agree, else each converter
    checks the value itself (``Option.parse``)."""
    from .data.converters import CONVERTERS

    declared: Dict[str, list] = {}
    for converter in CONVERTERS.entries():
        for option in converter.options:
            declared.setdefault(option.name, []).append((converter.name, option))
    for name, uses in declared.items():  # converters by name, each one's options as it declares them
        first = uses[0][1]
        same_type = all(o.type is first.type for _, o in uses)
        choices = list(first.choices) if first.choices and all(o.choices == first.choices for _, o in uses) else None
        # a help that states its default itself ("default: the least cloudy") gets no second one
        helps = [f"{converter}: {o.help}" + ("" if o.default is None or _STATES_DEFAULT.search(o.help)
                                             else f" (default {o.default})")
                 for converter, o in uses]
        p.add_argument(first.flag, dest=f"option_{name}", type=first.type if same_type else str, choices=choices,
                       metavar=None if choices else name.upper(), help="; ".join(helps))


def cmd_data_convert(args: argparse.Namespace) -> int:
    from .data.converters import convert, get_converter

    prefix = "option_"
    options = {key[len(prefix):]: value for key, value in vars(args).items()
               if key.startswith(prefix) and value is not None}
    converter = get_converter(args.format)  # an unknown format fails first, with its did-you-mean
    declared = {o.name for o in converter.options}
    for name in options:  # a flag another converter declares: refused by the flag the user typed
        if name not in declared:
            flags = ", ".join(o.flag for o in converter.options) or "none"
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag}: not an option of {converter.name} (its options: {flags})")
    from .files import terminate_cleanly

    with terminate_cleanly():  # SIGTERM removes the partial output like Ctrl-C does
        out = convert(args.format, args.src, args.output, shard_size=args.shard_size, workers=args.workers,
                      **options)
    from .data.layout import check_file

    info = check_file(out)
    shards = f" in {info['shards']} shards" if "shards" in info else ""
    print(f"wrote {out}: {info['n']} samples{shards}, {len(info['bands'])} bands, {info['size'][0]}x{info['size'][1]} px")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from .data.synth import synthesize
    from .files import terminate_cleanly

    if args.block_km != 0:  # 0: no spatial-block split; NaN, inf and negatives are refused
        from .data.splits import check_block_km

        check_block_km(args.block_km)

    with terminate_cleanly():  # SIGTERM removes the partial output like Ctrl-C does
        out = synthesize(
            args.output,
            n=args.n,
            bands=args.bands,
            size=args.size,
            seed=args.seed,
            dates=args.dates,
            num_classes=args.classes,
            tiles=args.tiles,
            block_km=args.block_km,  # written with the file, before it is moved into place
            masks=args.masks,
        )
    t = args.tiles
    places = args.n // (args.dates * t * t)
    tiles = f" x {t}x{t} tiles" if t > 1 else ""
    dates = f"{args.dates} date" + ("s" if args.dates > 1 else "")
    masks = ", with per-pixel masks" if args.masks else ""
    print(f"wrote {out}: {args.n} synthetic samples ({places} places x {dates}{tiles}){masks}")
    if args.block_km > 0:
        from .data.layout import check_file

        counts = check_file(out)["splits"]["spatial-block"]
        print(f"added split spatial-block ({args.block_km:g} km blocks): "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_data_split(args: argparse.Namespace) -> int:
    from .data.splits import add_split
    from .files import terminate_cleanly

    with terminate_cleanly():  # SIGTERM closes the file (modified in place) cleanly
        counts = add_split(
            args.file,
            args.scheme,
            name=args.name,
            fractions=args.fractions,
            seed=args.seed,
            block_km=args.block_km,
            make_default=args.default,
        )
    name = args.name or args.scheme
    print(f"{args.file}: splits/{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from .data.layout import check_file

    info = check_file(args.file)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"file      {info['file']}")
    print(f"source    {info['source']}")
    shards = f" in {info['shards']} shards" if "shards" in info else ""
    print(f"samples   {info['n']}{shards}")
    print(f"bands     {len(info['bands'])}: {', '.join(info['bands'])}")
    print(f"size      {info['size'][0]} x {info['size'][1]} px at {info['gsd']} m")
    if "lat_range" in info:
        print(f"lat       {info['lat_range'][0]:.4f} .. {info['lat_range'][1]:.4f}")
        print(f"lon       {info['lon_range'][0]:.4f} .. {info['lon_range'][1]:.4f}")
    else:
        print(f"locations {info['locations']}")
    print(f"columns   {', '.join(info['columns'])}")
    if "time_range" in info:
        print(f"time      {info['time_range'][0]} .. {info['time_range'][1]}")
    if "groups" in info:
        print(f"places    {info['groups']} (groups of dates)")
    if info.get("task"):
        print(f"task      {info['task']}, {len(info['classes'])} classes")
        for name, count in info["class_counts"].items():
            print(f"  {name:<40} {count}")
    if "mask_classes" in info:
        sampled = info["mask_pixels_sampled"]
        counted = f" (pixels of {sampled[0]} of the {sampled[1]} samples, drawn at random)" if sampled else ""
        print(f"mask      {len(info['mask_classes'])} classes, no-data value {info['mask_nodata']}; pixels{counted}:")
        for name, count in info["mask_pixel_counts"].items():
            print(f"  {name:<40} {count}")
    for scheme, counts in info["splits"].items():
        mark = " (default)" if scheme == info["default_split"] else ""
        print(f"split     {scheme}{mark}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


# ----------------------------------------------------------------------------- eval
def _check_output_file(path: str, option: str) -> None:
    """Fail now, in one line, if ``path`` could not be written later (it is a directory, a parent
    is a file, or its directory refuses new files); writes nothing."""
    from pathlib import Path

    from .files import nearest_existing, probe_writable

    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(f"{option}: {target} is a directory, not a file")
    parent = nearest_existing(target.parent)
    if not parent.is_dir():
        raise ConfigError(f"{option}: {target}: {parent} is not a directory")
    try:
        probe_writable(parent)
        if target.exists():
            with open(target, "ab"):
                pass
    except OSError as e:
        raise ConfigError(f"{option}: cannot write {target} ({e.strerror or e})") from None


#: ``ssl-rs eval <protocol>``: the harness protocol and what it does
EVAL_PROTOCOLS = {"knn": "k-NN classification", "linear": "linear probe",
                  "geo": "geo probes (similarity-distance correlation, location probe)",
                  "finetune": "fine-tuning (the whole backbone and a linear head)",
                  "segmentation": "semantic segmentation probe (frozen backbone, light decoder on per-pixel masks)"}
#: harness parameter -> the option of the protocol command that offers it
_PROTOCOL_OPTIONS = {"knn_k": "k", "knn_temperature": "temperature", "linear_epochs": "epochs"}
#: ``ssl-rs eval finetune``: harness parameter -> its option's dest (the flag is ``--`` + the rest, dashed)
_FINETUNE_OPTIONS = {"finetune_epochs": "finetune_epochs", "finetune_lr": "finetune_lr",
                     "finetune_backbone_lr_scale": "finetune_backbone_lr_scale",
                     "finetune_layer_decay": "finetune_layer_decay",
                     "finetune_weight_decay": "finetune_weight_decay", "finetune_schedule": "finetune_schedule"}


def _finetune_flag(param: str) -> str:
    """``finetune_backbone_lr_scale`` -> ``--backbone-lr-scale``."""
    return "--" + param[len("finetune_"):].replace("_", "-")


#: ``ssl-rs eval segmentation``: harness parameter -> its option's dest and flag
_SEGMENTATION_OPTIONS = {"segmentation_epochs": "--epochs", "segmentation_lr": "--lr",
                         "segmentation_decoder": "--decoder", "segmentation_recipe": "--recipe"}


def _metric_cell(name: str, value: float) -> str:
    """A metric as the result table shows it: two decimals, but a count (the geo probe's
    ``corr_pairs``) as the whole number it is. The harness keeps every metric a float, so
    results.json and --json have one type per metric value; only the table tells them apart."""
    if (name == "pairs" or name.endswith("_pairs")) and value.is_integer():
        return str(int(value))
    return f"{value:.2f}"


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.harness import check_backbone_args, check_eval_options, default_device, evaluate

    # the protocol's own options; the harness' defaults stand for those its command does not offer
    own = {param: getattr(args, option) for param, option in _PROTOCOL_OPTIONS.items() if hasattr(args, option)}
    # Everything the user typed is checked before the (possibly long) evaluation runs.
    check_eval_options(size=args.size, batch_size=args.batch_size, num_workers=args.workers, **own,
                       names={"size": "--size", "batch_size": "--batch-size", "num_workers": "--workers",
                              "knn_k": "--k", "knn_temperature": "--temperature", "linear_epochs": "--epochs"})
    from .evaluation.features import check_precision

    precision = check_precision(args.precision, default_device(args.device, option="--device"), "--precision")
    tuned = {param: getattr(args, dest) for param, dest in _FINETUNE_OPTIONS.items() if hasattr(args, dest)}
    if tuned:
        from .evaluation.finetune import check_finetune_options

        check_finetune_options(**{p[len("finetune_"):]: v for p, v in tuned.items()},
                               names={p[len("finetune_"):]: _finetune_flag(p) for p in tuned})
        own.update(tuned)
    dense = {param: getattr(args, param) for param in _SEGMENTATION_OPTIONS if hasattr(args, param)}
    if dense:
        from .evaluation.segmentation import check_segmentation_options

        check_segmentation_options(**{p[len("segmentation_"):]: v for p, v in dense.items()},
                                   names={p[len("segmentation_"):]: _SEGMENTATION_OPTIONS[p] for p in dense})
        own.update(dense)
    for param in ("knn_votes", "linear_recipe"):  # eval knn --votes, eval linear --recipe (argparse checks them)
        if hasattr(args, param):
            own[param] = getattr(args, param)
    if hasattr(args, "finetune_task"):  # ssl-rs eval finetune --task
        own["finetune_task"] = args.finetune_task
    backbone_args = None
    if args.backbone_args is not None:
        if args.checkpoint or args.weights:
            raise ConfigError("--backbone-args: applies to --backbone only (a checkpoint's config holds its "
                              "backbone's arguments)")
        try:
            backbone_args = json.loads(args.backbone_args)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--backbone-args: not valid JSON ({e})") from None
    if args.backbone:
        backbone_args = check_backbone_args(args.backbone, backbone_args, option="--backbone-args")
    if args.json:
        _check_output_file(args.json, "--json")

    backbone, bands, size = args.backbone, args.bands, args.size
    if args.weights:
        from .data.dataset import GeoDataset
        from .zoo import load_backbone

        data_bands = bands or GeoDataset(args.data).bands
        backbone = load_backbone(args.weights, bands=data_bands, data=args.data)
        bands = backbone.bands  # the data's bands the weights were re-wired to, in that order
    if args.checkpoint:
        from .evaluation.harness import load_checkpoint_backbone

        backbone, cfg = load_checkpoint_backbone(args.checkpoint)
        bands = bands or cfg["data_bands"]  # select the bands the model was trained on, by name
        if size is None:
            size = (cfg.get("augmentation") or {}).get("size")
    if tuned.get("finetune_layer_decay") is not None:  # named by its flag, before anything runs
        from .evaluation.finetune import check_layer_decay

        module = backbone
        if isinstance(backbone, str):  # built on the meta device: no memory, no compute
            import torch

            from .backbones import create_backbone

            with torch.device("meta"):
                module = create_backbone(backbone, in_chans=len(bands) if bands else 3, **(backbone_args or {}))
        check_layer_decay(module, tuned["finetune_layer_decay"], "--layer-decay")
    result = evaluate(
        backbone,
        args.data,
        backbone_args=backbone_args,
        seed=args.seed,
        scheme=args.scheme,
        protocols=[args.protocol],
        size=size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        bands=bands,
        eval_split=args.eval_split,
        precision=precision,
        **own,
    )
    if any(len(metrics) > 6 for metrics in result["metrics"].values()):  # too wide as one row: one per metric
        rows = [{"protocol": name, "metric": k, "value": _metric_cell(k, v)}
                for name, metrics in result["metrics"].items() for k, v in metrics.items() if isinstance(v, float)]
    else:
        rows = [{"protocol": name, **{k: _metric_cell(k, v) for k, v in metrics.items() if isinstance(v, float)}}
                for name, metrics in result["metrics"].items()]
    columns = ["protocol"] + [c for c in rows[0] if c != "protocol"]
    print(f"{result['backbone']} on {result['data']} (split scheme {result['scheme']}: "
          f"{result['n_train']} train, {result['n_test']} {result['eval_split']}"
          + ("" if result.get("precision", "32-true") == "32-true" else f"; precision {result['precision']}") + ")")
    print(markdown_table(rows, columns))
    try:
        _write_json(args.json, result)
    except OSError as e:
        raise ConfigError(f"--json: cannot write {args.json} ({e.strerror or e})") from None
    return 0


# ----------------------------------------------------------------------------- pretrain
def _epochs_trained(result: Dict) -> str:
    """``2 epochs in 4 s``; after a --resume, ``1 epoch in 4 s (continued from epoch 2; 3 in all)``:
    the seconds are this session's, and so are the epochs next to them."""
    run, total = result.get("epochs_run", result["epochs"]), result["epochs"]
    text = f"{run} epoch{'' if run == 1 else 's'} in {result['train_seconds']:.0f} s"
    if run != total:
        text += f" (continued from epoch {total - run}; {total} in all)"
    return text


def _best_line(best: Optional[Dict]) -> Optional[str]:
    if not best:
        return None
    if best.get("checkpoint"):
        score = "" if best["score"] is None else f" {best['score']:.2f}"
        return f"best.ckpt: {best['metric']}{score} (the highest online k-NN score on the val split)"
    return f"no best.ckpt (last.ckpt only): {best['why_not']}"


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import pretrain
    from .trainer import lightning_chatter_muted

    cfg = load_config(args.config, args.overrides)
    with lightning_chatter_muted():  # stderr: ssl-rs's progress and log lines, and real warnings only
        result = pretrain(cfg, resume=args.resume)
    if args.json:  # the whole result, as results.json holds it, for scripts
        print(json.dumps(result))
        return 0
    head = f"run {result['run_dir']}: {_epochs_trained(result)}"
    if result.get("eval_skipped"):
        print(f"{head} (no final evaluation: {result['eval_skipped'].split(',')[0]})")
    elif "eval" in result:
        rows = []
        for scheme, res in result["eval"].items():
            for protocol, metrics in res["metrics"].items():
                rows.append({"scheme": scheme, "protocol": protocol,
                             **{k: _metric_cell(k, v) for k, v in metrics.items() if isinstance(v, float)}})
        print(head)
        print(markdown_table(rows, list(rows[0])))
    best = _best_line(result.get("best"))
    if best:
        print(best)
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-rs", description=__doc__.split("\n")[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ssl-rs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered backbones, augmentations, methods, regularizers, converters "
                       "and the packaged configs")
    p.add_argument("kind", nargs="?", choices=LIST_KINDS, help="list only this kind (default: all)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("pretrain", help="pretrain a method (+ geo regularizer) from a config, then k-NN evaluate")
    p.add_argument("-c", "--config", help="YAML config: a file, or a packaged config's name such as "
                   "synthetic/mocov2_georank (`ssl-rs list configs`; a local file of that name wins)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_epochs=2 geo.alpha=0.3")
    p.add_argument("--resume", help="continue from a checkpoint (optimiser, schedules, EMA and epoch restored)")
    p.add_argument("--json", action="store_true", help="print the result (what RUN/results.json holds) as one "
                   "JSON object instead of the table")
    p.set_defaults(func=cmd_pretrain)

    data = sub.add_parser("data", help="convert, synthesise, split and inspect HDF5 datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)

    p = dsub.add_parser("convert", help="convert a real dataset distribution to the ssl-rs HDF5 layout")
    from .data.converters import CONVERTERS

    p.add_argument("format", help=" | ".join(CONVERTERS.names()) + " (`ssl-rs list converters`)")
    p.add_argument("src", help="the dataset's folder")
    p.add_argument("-o", "--output", required=True, help="output .h5 file, or with --shard-size the folder of "
                   "shards (written atomically)")
    p.add_argument("--shard-size", type=int, help="write a folder of HDF5 shards of at most this many samples "
                   "with one index (SSL4EO-sized data; docs/data_format.md)")
    p.add_argument("--workers", type=int, default=1, help="processes converting in parallel, each writing its own "
                   "shards (needs --shard-size; default 1)")
    _add_converter_flags(p)
    p.set_defaults(func=cmd_data_convert)

    p = dsub.add_parser("synth", help="write the synthetic geo-world (the demo's default data)")
    p.add_argument("-o", "--output", required=True, help="output .h5 file (written atomically)")
    p.add_argument("--n", type=int, default=2000, help="number of samples (default 2000)")
    p.add_argument("--bands", type=_names, help="comma-separated band names (default: the 12 L2A bands)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed of places, land cover and splits (default 0)")
    p.add_argument("--dates", type=int, default=1, help="dates per place (default 1)")
    p.add_argument("--classes", type=int, default=8, help="number of land-cover classes (default 8)")
    p.add_argument("--tiles", type=int, default=1, help="cut each place's scene into TILES x TILES adjacent "
                   "--size tiles, each with its own lat/lon (neighbour pairs; --n counts tiles; default 1)")
    p.add_argument("--block-km", type=float, default=500.0,
                   help="block size of the spatial-block split added next to the random one (default 500, "
                        "as the demo and the synthetic zoo configs expect; 0 adds none)")
    p.add_argument("--masks", action="store_true", help="also write per-pixel masks (semantic segmentation): "
                   "each scene shows two classes' regions, clutter is no-data (255)")
    p.set_defaults(func=cmd_data_synth)

    p = dsub.add_parser("split", help="add a random or spatially blocked train/val/test split")
    p.add_argument("file", help="HDF5 file, or folder of shards (the split covers all shards)")
    p.add_argument("--scheme", choices=["random", "spatial-block"], required=True,
                   help="random: samples assigned at random; spatial-block: whole --block-km cells go to one part")
    p.add_argument("--name", help="store as splits/NAME (default: the scheme's name)")
    p.add_argument("--fractions", type=_floats, default=[0.7, 0.1, 0.2], help="train,val,test (default 0.7,0.1,0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the assignment (default 0)")
    p.add_argument("--block-km", type=float, default=100.0, help="spatial-block cell size in km (default 100)")
    p.add_argument("--default", action="store_true", help="make this the file's default split")
    p.set_defaults(func=cmd_data_split)

    p = dsub.add_parser("info", help="summarise an ssl-rs HDF5 file or folder of shards")
    p.add_argument("file", help="HDF5 file, or folder of shards")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_data_info)

    ev = sub.add_parser("eval", help="evaluate a backbone: its frozen features (k-NN, linear probe, geo probes, "
                        "segmentation probe) or fine-tuned")
    esub = ev.add_subparsers(dest="protocol", required=True)
    for protocol, summary in EVAL_PROTOCOLS.items():
        p = esub.add_parser(protocol, help=f"{summary} on the train/test split of an HDF5 file")
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--backbone", help="a registered backbone name (randomly initialised)")
        src.add_argument("--checkpoint", help="an ssl-rs training run: its directory (RUN: its checkpoints/last.ckpt) "
                         "or a checkpoint file")
        src.add_argument("--weights", help="a zoo entry (`ssl-rs zoo list`) or an exported .safetensors file: "
                         "its bands are matched to the data's by name, its input normalisation and "
                         "evaluation transforms applied")
        p.add_argument("--data", required=True, help="HDF5 file or folder of shards, with a split" + (
            " (lat/lon needed, labels not)" if protocol == "geo" else
            " and per-pixel masks (labels not needed)" if protocol == "segmentation" else ""))
        p.add_argument("--scheme", help="split scheme in the file (default: the file's default)")
        p.add_argument("--eval-split", default="test", choices=["val", "test"],
                       help="the part of the split scored against the train part (default test)")
        p.add_argument("--bands", type=_names, help="band subset, in the model's order")
        p.add_argument("--size", type=int, help="resize inputs to this side (default: the checkpoint's training "
                       "size, else the data's size)")
        p.add_argument("--batch-size", type=int, default=256, help=(
            "fine-tuning and evaluation" if protocol == "finetune" else
            "decoder training and evaluation" if protocol == "segmentation" else "feature extraction") + " batch size (default 256)")
        p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0: read in "
                       "the main process)")
        p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
        p.add_argument("--precision", help="32-true (default: float32), bf16-mixed or 16-mixed (CUDA only): the "
                       "forward passes under torch.autocast, features, losses and metrics in float32; "
                       "several times faster on a recent GPU")
        p.add_argument("--seed", type=int, default=0, help="seed of a randomly initialised backbone" + (
            ", the head, the shuffling and the augmentation" if protocol == "finetune" else
            ", the decoder and the shuffling" if protocol == "segmentation" else ""))
        p.add_argument("--backbone-args", help="JSON object of backbone arguments (with --backbone)")
        # each protocol's own options only on its own command: an option that would be ignored is not offered
        if protocol == "knn":
            p.add_argument("--k", type=int, default=20, help="k-NN neighbours (default 20)")
            p.add_argument("--temperature", type=float, default=0.07, help="k-NN vote temperature (default 0.07)")
            p.add_argument("--votes", dest="knn_votes", choices=["mean", "sum"], default="mean",
                           help="multi-label scores: mean (default), each query's weighted votes over its total "
                           "weight; sum, the raw weighted sums (the GeoRank authors'; changes average precision)")
        if protocol == "linear":
            p.add_argument("--epochs", type=int, default=100, help="linear probe epochs (default 100)")
            p.add_argument("--recipe", dest="linear_recipe", choices=["ssl-rs", "georank"], default="ssl-rs",
                           help="ssl-rs (default): standardised features, cosine schedule, batch 1024; georank: "
                           "the GeoRank authors' probe, raw features, warmup + cosine to lr/10, batch 512")
        if protocol == "finetune":  # GeoRank's recipe, with a slower backbone (ssl_rs/evaluation/finetune.py)
            p.add_argument("--epochs", dest="finetune_epochs", type=int, metavar="N", default=30,
                           help="fine-tuning epochs (default 30, as GeoRank)")
            p.add_argument("--lr", dest="finetune_lr", type=float, metavar="LR", default=1e-3,
                           help="AdamW learning rate of the head, peak of the warmup + cosine schedule "
                                "(default 0.001, as GeoRank)")
            p.add_argument("--backbone-lr-scale", dest="finetune_backbone_lr_scale", type=float, metavar="S", default=0.1,
                           help="the backbone learns at --lr times this (default 0.1; 1 trains both at --lr, "
                                "as GeoRank)")
            p.add_argument("--layer-decay", dest="finetune_layer_decay", type=float, metavar="D",
                           help="layer-wise learning-rate decay in (0, 1] for timm backbones (ViTs: e.g. 0.75): "
                                "each layer learns at this fraction of the one above (default: none)")
            p.add_argument("--weight-decay", dest="finetune_weight_decay", type=float, metavar="WD", default=0.01,
                           help="AdamW weight decay (default 0.01, as GeoRank)")
            p.add_argument("--schedule", dest="finetune_schedule", choices=["ssl-rs", "georank"], default="ssl-rs",
                           help="ssl-rs (default): warmup over min(100, a tenth of the steps), cosine to lr/10; "
                           "georank: the GeoRank authors' scheduler exactly (10000 warmup steps beyond 10000)")
            p.add_argument("--task", dest="finetune_task", choices=["classification", "segmentation"],
                           default="classification", help="classification (default): a linear head on the labels; "
                           "segmentation: the segmentation probe's decoder on the per-pixel masks")
        if protocol == "segmentation":  # ssl_rs/evaluation/segmentation.py
            p.add_argument("--epochs", dest="segmentation_epochs", type=int, metavar="N", default=20,
                           help="decoder training epochs (default 20)")
            p.add_argument("--lr", dest="segmentation_lr", type=float, metavar="LR",
                           help="learning rate of the decoder (default: the recipe's, 0.001 for ssl-rs, 0.02 for "
                           "georank)")
            p.add_argument("--decoder", dest="segmentation_decoder",
                           choices=["auto", "georank", "multilevel", "upernet"],
                           default="auto", help="georank: GeoRank's transposed convolution + bilinear upsampling on "
                           "the last feature map (CNNs); multilevel: a few ViT blocks fused; upernet: the GeoRank "
                           "authors' SSL evaluation decoder, UPerNet + FCN head on the last 4 maps (CNNs); auto "
                           "(default): multilevel when every feature map has one size, else georank")
            p.add_argument("--recipe", dest="segmentation_recipe", choices=["ssl-rs", "georank"], default="ssl-rs",
                           help="the decoder's training: ssl-rs (default), AdamW (weight decay 0.01) with a cosine "
                           "schedule per step; georank, the GeoRank authors' UPerNet recipe, SGD (momentum 0.9, "
                           "weight decay 1e-4) at a constant rate in batches of 512")
        p.add_argument("--json", help="also write the result to this JSON file")
        p.set_defaults(func=cmd_eval)

    from .zoo.cli import add_zoo_parser
    add_zoo_parser(sub)
    from .bench.cli import add_bench_parser
    add_bench_parser(sub)
    return parser


class _LogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"ssl-rs: {level}{record.getMessage()}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The library logs what a user should know about their data (e.g. how many samples have
    # neighbours) at INFO; the CLI shows it on stderr, for this call only.
    logger = logging.getLogger("ssl_rs")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter())
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        return args.func(args)
    except SslRsError as e:
        print(f"ssl-rs: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:  # Ctrl-C; pretrain's Interrupted also for SIGTERM, with its last.ckpt
        import signal

        signum = getattr(e, "signum", signal.SIGINT)
        checkpoint = getattr(e, "checkpoint", None)
        resume = f"; continue with --resume {checkpoint}" if checkpoint else ""
        print(f"ssl-rs: interrupted ({signal.Signals(signum).name}){resume}", file=sys.stderr)
        return 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports a signal's end
    except BrokenPipeError:  # the reader of stdout stopped (`ssl-rs data info FILE | head`): not an error of ours
        # stdout goes to /dev/null so that the interpreter's last flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # as a shell reports an end by SIGPIPE
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


if __name__ == "__main__":
    sys.exit(main())
