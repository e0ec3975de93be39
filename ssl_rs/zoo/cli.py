"""``ssl-rs zoo list | info NAME | download NAME | export RUN_DIR -o OUT``."""

from __future__ import annotations

import argparse
import json


def _size_text(size) -> str:
    return f"{size / 1e6:.1f} MB" if size else "?"


def cmd_zoo_list(args: argparse.Namespace) -> int:
    from ..text import markdown_table
    from . import ZOO

    rows = [{"name": e.name, "backbone": e.backbone, "bands": e.in_chans, "method": e.method,
             "regularizer": e.regularizer or "-", "data": e.pretraining_data.split(":")[0],
             "size": _size_text(e.size), "sha256": e.verification, "licence": e.license}
            for e in ZOO.entries()]
    print(markdown_table(rows, ["name", "backbone", "bands", "method", "regularizer", "data", "size", "sha256",
                                "licence"]))
    return 0


def cmd_zoo_info(args: argparse.Namespace) -> int:
    from . import ZOO, cached_path

    entry = ZOO.get(args.name)
    info = entry.as_dict()
    path = cached_path(entry)
    info["cached"] = str(path) if path.is_file() else None
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value) if value else "-"
        print(f"{key:<{width}}  {value if value not in (None, '') else '-'}")
    return 0


def cmd_zoo_download(args: argparse.Namespace) -> int:
    from ..files import terminate_cleanly
    from . import download

    with terminate_cleanly():  # SIGTERM removes the partial download like Ctrl-C does
        path = download(args.name, sha256=args.sha256, allow_unverified=args.allow_unverified,
                        progress=not args.no_progress)
    print(path)
    return 0


def cmd_zoo_export(args: argparse.Namespace) -> int:
    from ..files import terminate_cleanly
    from .export import export_run

    with terminate_cleanly():  # SIGTERM removes the partial outputs like Ctrl-C does
        out = export_run(args.run_dir, args.output, name=args.name, checkpoint=args.checkpoint, url=args.url,
                         license=args.license)
    entry = out["entry"]
    print(f"wrote {out['weights']} ({entry.size} bytes, sha256 {entry.sha256})")
    print(f"wrote {out['model_card']}, {out['entry_file']}, {out['config']}")
    return 0


def add_zoo_parser(subparsers) -> None:
    zoo = subparsers.add_parser("zoo", help="pretrained weights: list, info, download (verified), export a run")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)

    p = zsub.add_parser("list", help="the registered weights, as a table")
    p.set_defaults(func=cmd_zoo_list)

    p = zsub.add_parser("info", help="everything an entry records (URL, sha256, bands, normalisation, metrics)")
    p.add_argument("name", help="a zoo entry (`ssl-rs zoo list`)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_zoo_info)

    p = zsub.add_parser("download", help="download into the cache ($SSL_RS_HOME/weights), checking size and sha256")
    p.add_argument("name", help="a zoo entry (`ssl-rs zoo list`)")
    p.add_argument("--sha256", help="expected sha256, for entries registered without one")
    p.add_argument("--allow-unverified", action="store_true",
                   help="accept an entry without any sha256 (warns; records the computed hash)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_zoo_download)

    p = zsub.add_parser("export", help="turn a training run into a release (safetensors, model card, entry)")
    p.add_argument("run_dir", help="a run directory (config.yaml, checkpoints/, results.json)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--name", help="weights name (default: <backbone>_<run name>)")
    p.add_argument("--checkpoint", choices=["best", "last"], help="default: best if present, else last")
    p.add_argument("--url", help="public URL the file will have (default: file:// URL of the export)")
    p.add_argument("--license", default="unspecified", help="licence of the weights (default: unspecified)")
    p.set_defaults(func=cmd_zoo_export)
