"""``ssl-rs bench run``: pretrain and evaluate every cell of a suite, resumably.

Output directory::

    suite.yaml       copy of the suite that was run (the report reads its studies)
    cells.json       the suite's cells: id, label, axis values, run dir (the report's index)
    data/            datasets the runner synthesised or converted (named by a hash of their spec)
    runs/<name>/     one pretraining run per cell: config.yaml, checkpoints/, tb/ (TensorBoard)
    results.csv      one row per (cell, eval dataset, split scheme, protocol), appended and
                     fsynced after each cell; a cell with a finished row is never run again.
                     A cell that fails gets one row with status "failed" and the one-line
                     reason in "error" (its traceback: runs/<name>/bench_error.log); the
                     suite goes on, and the next run retries it. Files written before the
                     status column existed have no status: every row of them is finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple

import numpy as np

from ..data.shards import INDEX_NAME, read_index
from ..errors import ConfigError, DataError, SslRsError
from ..files import copy_file, write_text
from ..progress import format_duration, plural
from ..run_directory import run_dir_of
from ..trainer import quiet_lightning
from .suite import Cell, DataSpec, Suite, load_suite, short_hash

KEY_COLUMNS = ["suite", "cell_id", "cell", "method", "regularizer", "augmentation", "subset", "n_train",
               "image_size", "seed", "eval_data", "scheme", "protocol"]
TAIL_COLUMNS = ["n_eval_train", "n_eval_test", "train_seconds", "cell_seconds", "epochs", "run_dir", "finished_at",
                "status", "error"]
FINISHED, FAILED = "finished", "failed"


# ----------------------------------------------------------------------------- results.csv
def read_results(path: Path) -> List[Dict[str, str]]:
    """Every row of results.csv, finished and failed; ``status`` is filled in (``finished`` for
    files written before the column existed)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["status"] = row.get("status") or FINISHED
        row.setdefault("error", "")
    return rows


def finished_rows(rows: List[Dict[str, str]]) -> List[Dict[str, str]]:
    """The rows of finished cells (what tables and plots are made of)."""
    return [r for r in rows if (r.get("status") or FINISHED) == FINISHED]


def failed_cells(rows: List[Dict[str, str]]) -> Dict[str, Dict[str, str]]:
    """cell_id -> its latest failed row, for cells with no finished row (a retried cell that
    finished is no longer failed)."""
    done = {r["cell_id"] for r in finished_rows(rows)}
    return {r["cell_id"]: r for r in rows if r.get("status") == FAILED and r["cell_id"] not in done}


def append_results(path: Path, rows: List[Dict[str, Any]]) -> None:
    """Append rows and fsync, so a kill after this call never loses a finished cell.

    The header is the union of the columns seen so far; when a new metric column appears
    (e.g. a multi-label dataset joins) the file is rewritten atomically with the wider header.
    """
    existing_header: List[str] = []
    if path.is_file():
        with open(path, newline="") as f:
            existing_header = next(csv.reader(f), [])
    metrics = sorted({k for r in rows for k in r} - set(KEY_COLUMNS) - set(TAIL_COLUMNS)
                     | (set(existing_header) - set(KEY_COLUMNS) - set(TAIL_COLUMNS)))
    header = KEY_COLUMNS + metrics + TAIL_COLUMNS
    if existing_header and existing_header == header:
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, header).writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        return
    old = read_results(path)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, header)
    writer.writeheader()
    writer.writerows(old + rows)
    write_text(path, text.getvalue(), announce=False)  # .results.csv.part, fsynced, renamed into place


# ----------------------------------------------------------------------------- data
def prepare_dataset(spec: DataSpec, out: Path, label: str, progress: bool = False) -> Path:
    """Synthesise / convert (once; the file name hashes the spec) and add the missing splits."""
    params = dict(spec.params)
    if spec.kind == "path":
        path = Path(params["path"])
        if not path.is_file():
            raise ConfigError(f"data.path: {path} not found")  # check_data_sources says it first
    else:
        path = out / "data" / spec.file_name(label)
        if not path.is_file():  # writers are atomic: an existing file is complete
            path.parent.mkdir(parents=True, exist_ok=True)
            if spec.kind == "synth":
                from ..data.synth import synthesize

                extra = {"masks": True} if params.get("masks") else {}  # only where asked: older synthesize has none
                synthesize(path, n=params["n"], size=params["size"], seed=params["seed"], dates=params["dates"],
                           num_classes=params["classes"], tiles=params.get("tiles", 1), progress=progress, **extra)
            else:
                from ..data.converters import convert

                convert(params["format"], params["src"], path)
    for split in spec.splits:
        _ensure_split(path, dict(split))
    return path


#: eval.* config keys added after cell ids were first written, with the default that leaves them out of an id
EVAL_KEYS_ADDED_LATER = {"precision": None, "knn_votes": "mean", "linear_recipe": "ssl-rs", "finetune_schedule": "ssl-rs",
                         "segmentation_decoder": "auto", "segmentation_recipe": "ssl-rs", "linear_epochs": 100}


def check_data_sources(suite: Suite) -> None:
    """The datasets a suite reads (``path``, ``convert.src``) exist: checked before anything is
    written, so a typo leaves no half-made output directory behind."""
    specs = [("data", suite.data)] + [(f"eval.datasets[{i}].data", d.data)
                                      for i, d in enumerate(suite.eval_datasets) if d.data is not None]
    for where, spec in specs:
        params = dict(spec.params)
        if spec.kind == "path":
            path = Path(params["path"])
            if path.is_dir() and not (path / INDEX_NAME).is_file():
                raise ConfigError(f"{suite.path}: {where}.path: {path} is a folder without {INDEX_NAME} "
                                  "(expected an HDF5 file or a sharded dataset)")
            if path.is_dir():  # the index is small: a corrupt one fails the dry run, not the first cell
                try:
                    read_index(path)
                except DataError as e:
                    raise ConfigError(f"{suite.path}: {where}.path: {e}") from None
            if not path.is_file() and not path.is_dir():
                raise ConfigError(f"{suite.path}: {where}.path: {params['path']} not found")
        if spec.kind == "convert" and not Path(params["src"]).exists():
            raise ConfigError(f"{suite.path}: {where}.convert.src: {params['src']} not found")


def check_max_cells(max_cells: Optional[int], option: str = "max_cells") -> None:
    if max_cells is not None and (isinstance(max_cells, bool) or not isinstance(max_cells, int) or max_cells < 1):
        raise ConfigError(f"{option}: must be a number of cells >= 1, got {max_cells!r} (to run nothing and list "
                          "the cells, use a dry run)")


def _ensure_split(path: Path, split: Dict[str, Any]) -> None:
    from ..data.layout import open_h5
    from ..data.splits import add_split

    name = split.get("name") or split["scheme"]
    wanted = {"scheme": split["scheme"], "seed": int(split.get("seed", 0))}
    if split["scheme"] == "spatial-block":
        wanted["block_km"] = float(split.get("block_km", 100.0))
    with open_h5(path) as f:
        if "splits" in f and name in f["splits"]:
            attrs = f["splits"][name].attrs
            have = {k: (attrs[k].item() if hasattr(attrs[k], "item") else attrs[k]) for k in wanted if k in attrs}
            if have == wanted:
                return
    add_split(path, split["scheme"], name=name, seed=wanted["seed"], block_km=wanted.get("block_km", 100.0),
              fractions=split.get("fractions", (0.7, 0.1, 0.2)))


def subset_scheme_name(base: Optional[str], value: float, seed: int) -> str:
    return f"bench-subset-{base or 'default'}-{value:g}-s{seed}"


def write_subset_split(path: Path, base: Optional[str], value: float, seed: int) -> Tuple[str, int]:
    """Add a split scheme whose train part is a random subset of ``base``'s train part.

    ``value`` is a fraction (<= 1) or a count. Val and test stay as in ``base``, so every subset
    is evaluated on the same samples; the subsets of one seed are nested (one permutation, cut
    at each size), as in a cardinality study.
    """
    from ..data.layout import SPLIT_CODES, open_h5, read_split, write_split

    name = subset_scheme_name(base, value, seed)
    with open_h5(path, "r+") as f:
        codes = read_split(f, base).astype(np.uint8).copy()
        train = np.flatnonzero(codes == SPLIT_CODES.index("train"))
        count = int(round(value * len(train))) if value <= 1 else int(value)
        if count > len(train) or count < 1:
            raise ConfigError(f"matrix.subset: {value:g} asks for {count} samples but {path.name} has "
                              f"{len(train)} training samples")
        order = np.random.default_rng(seed).permutation(train)
        codes[order[count:]] = 255  # in no split
        if "splits" not in f or name not in f["splits"]:
            write_split(f, name, codes)
            f["splits"][name].attrs.update({"scheme": "subset", "base": base or "", "seed": seed,
                                            "value": float(value)})
    return name, count


# ----------------------------------------------------------------------------- cells
def resolve_cell(suite: Suite, cell: Cell, out: Path, data_path: Path) -> Any:
    """The cell's full validated config (and its id, stored on the cell)."""
    from ..config import load_config, to_dict, validate

    overrides = cell.overrides + [f"data.path={data_path}", f"output.dir={out / 'runs'}", "output.overwrite=true",
                                  "trainer.progress_bar=false"]
    try:
        cfg = load_config(cell.config_path, overrides)
    except ConfigError as e:
        raise ConfigError(f"{suite.path}: cell {cell.index} ({cell.label}): {e}") from None
    geo = cell.values["regularizer"].geo
    if geo is not None:  # the regularizer axis replaces the method config's geo block as a whole
        for key, value in geo:
            setattr(cfg.geo, key, value)
        if dict(geo).get("name") is None:
            cfg.geo.args = {}
    try:  # what pretrain checks first, now: a typo fails the whole suite before the first hour, not in cell 7
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{suite.path}: cell {cell.index} ({cell.label}): {e}") from None
    cell.base_scheme = cfg.data.scheme
    if cell.subset is not None:
        cfg.data.scheme = subset_scheme_name(cfg.data.scheme, cell.subset, suite.subset_seed)
    identity = to_dict(cfg)
    identity.pop("output")
    identity["data"]["path"] = suite.data.key  # the data's recipe, not this machine's path
    identity["trainer"].pop("progress_bar")
    for key, default in EVAL_KEYS_ADDED_LATER.items():  # at their defaults: the ids of older suites' cells stay
        if identity["eval"].get(key, default) == default:
            identity["eval"].pop(key, None)
    evaluation = {
        # a dataset's own protocols join its entry only when given, so the ids of suites without them stay
        "datasets": [{"name": d.name, "data": d.data.key if d.data else "pretrain", "schemes": d.schemes,
                      **({"protocols": d.own_protocols} if d.own_protocols is not None else {})}
                     for d in suite.eval_datasets],
        "protocols": suite.protocols, "linear_epochs": suite.linear_epochs, "knn_k": suite.knn_k,
        "knn_temperature": suite.knn_temperature,
        **({"options": suite.eval_options} if suite.eval_options else {}),
    }
    cell.id = short_hash({"config": identity, "eval": evaluation})
    cfg.output.name = cell.run_name
    return cfg


def plan(suite: Suite, out: Path) -> Tuple[List[Cell], Dict[int, Any]]:
    """All cells with their configs; validates every cell before anything runs."""
    data_path = Path(dict(suite.data.params)["path"]) if suite.data.kind == "path" else \
        out / "data" / suite.data.file_name("pretrain")
    cells = suite.cells()
    configs = {c.index: resolve_cell(suite, c, out, data_path) for c in cells}
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        dup = next(c for c in cells if ids.count(c.id) > 1)
        raise ConfigError(f"{suite.path}: matrix: cell {dup.index} ({dup.label}) resolves to the same config as "
                          "another cell; an axis value changes nothing")
    return cells, configs


def _cell_row_base(suite: Suite, cell: Cell, cfg: Any, n_train: int, image_size: int) -> Dict[str, Any]:
    v = cell.values
    return {
        "suite": suite.name, "cell_id": cell.id, "cell": cell.index, "method": v["method"].label,
        "regularizer": v["regularizer"].label if v["regularizer"].geo is not None else (cfg.geo.name or "none"),
        # an explicit matrix entry's label (e.g. "same" / "different" temporal views of one preset)
        "augmentation": v["augmentation"].label if v["augmentation"].overrides else cfg.augmentation.name,
        "subset": v["subset"].label, "n_train": n_train,
        "image_size": image_size, "seed": cfg.trainer.seed,
    }


def run_cell(suite: Suite, cell: Cell, cfg: Any, out: Path, eval_paths: Dict[str, Path]) -> List[Dict[str, Any]]:
    """Pretrain one cell from scratch, evaluate its last checkpoint, return its result rows."""
    from ..data.dataset import GeoDataset
    from ..evaluation.harness import evaluate
    from ..checkpoint import load_encoder
    from ..config import to_dict
    from ..train import log_final_metrics, pretrain

    run_dir = run_dir_of(cfg)
    options = {"precision": cfg.eval.precision, **suite.eval_options}  # the suite's eval.precision, else the cell's
    if run_dir.exists():  # a killed cell's partial run: start it again cleanly
        shutil.rmtree(run_dir)
    train_ds = GeoDataset(cfg.data.path, split="train", scheme=cfg.data.scheme)
    image_size = int(cfg.augmentation.size or train_ds.size[0])
    # eval.size: data evaluates each dataset at its own size (the GeoRank authors'), else at the pretraining's
    eval_size = None if options.pop("size", "pretraining") == "data" else image_size
    with quiet_lightning():  # the runner prints one line per cell; the chatter would bury it
        result = pretrain(cfg, evaluate_after=False)  # the cell's training progress: on stderr (run_suite)
    backbone, ckpt_cfg = load_encoder(run_dir / "checkpoints" / "last.ckpt")
    base = _cell_row_base(suite, cell, cfg, len(train_ds), image_size)
    rows = []
    evaluations = {}
    for ds in suite.eval_datasets:
        for scheme in ds.schemes:
            res = evaluate(backbone, eval_paths[ds.name], scheme=scheme, protocols=ds.protocols,
                           size=eval_size, bands=ckpt_cfg["data_bands"], linear_epochs=suite.linear_epochs,
                           knn_k=suite.knn_k or cfg.eval.knn_k,
                           knn_temperature=suite.knn_temperature or cfg.eval.knn_temperature,
                           seed=cfg.trainer.seed, progress=cfg.trainer.progress_bar, **options)
            evaluations[f"{ds.name}/{res['scheme'] or 'default'}"] = res
            for protocol, metrics in res["metrics"].items():
                rows.append({**base, "eval_data": ds.name, "scheme": res["scheme"] or "default",
                             "protocol": protocol, **{k: f"{v:.4f}" for k, v in metrics.items()},
                             "n_eval_train": res["n_train"], "n_eval_test": res["n_test"],
                             "train_seconds": f"{result['train_seconds']:.2f}", "epochs": result["epochs"],
                             "run_dir": os.path.relpath(run_dir, out),
                             "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "status": FINISHED, "error": ""})
    record = {"cell_id": cell.id, "label": cell.label, "train_seconds": result["train_seconds"], "eval": evaluations}
    reference = cell_reference(suite, cell)
    if reference:  # the published values this cell is compared with (the report reads the current suite's)
        record["reference"] = reference
    write_text(run_dir / "bench_result.json", json.dumps(record, indent=2) + "\n", announce=False)
    # beside the training curves, so `tensorboard --logdir OUT/runs` compares the cells' scores too
    log_final_metrics(run_dir, to_dict(cfg), evaluations, step=result["steps"])
    return rows


def cell_reference(suite: Suite, cell: Cell) -> List[Dict[str, Any]]:
    """The suite's published values for a cell, as JSON: one entry per (eval dataset, scheme,
    protocol, metric) with its value and source."""
    out = []
    for v in (cell.values["method"], cell.values["regularizer"]):
        for (data, scheme, protocol, metric), value in v.reference:
            out.append({"eval_data": data, "scheme": scheme, "protocol": protocol, "metric": metric, "value": value,
                        "source": v.source})
    return out


def failure_reason(error: BaseException, limit: int = 300) -> str:
    """One line for results.csv and the log: ``Type: message`` (whitespace folded, shortened)."""
    text = " ".join(str(error).split())
    reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def _failed_row(suite: Suite, cell: Cell, cfg: Any, out: Path, reason: str, seconds: float) -> Dict[str, Any]:
    base = _cell_row_base(suite, cell, cfg, "", cfg.augmentation.size or "")
    return {**base, "eval_data": "", "scheme": "", "protocol": "", "cell_seconds": f"{seconds:.2f}",
            "run_dir": os.path.relpath(run_dir_of(cfg), out),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "status": FAILED,
            "error": reason}


def _save_traceback(cfg: Any, error: BaseException) -> Optional[Path]:
    """The failed cell's traceback beside its run (best effort: the reason is in results.csv anyway)."""
    path = run_dir_of(cfg) / "bench_error.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, "".join(traceback.format_exception(type(error), error, error.__traceback__)), announce=False)
    except (OSError, SslRsError):  # files' one-line errors (a full disk) are SslRsErrors
        return None
    return path


def _check_precisions(suite: Suite, cells: List[Cell], configs: Dict[int, Any]) -> None:
    """Each cell's evaluation precision against the device it will run on (``16-mixed`` needs
    CUDA), before the first cell trains; a dry run plans a GPU suite on any machine."""
    from ..evaluation.features import check_precision
    from ..evaluation.harness import default_device

    device = default_device()
    for c in cells:
        precision = suite.eval_options.get("precision", configs[c.index].eval.precision)
        try:
            check_precision(precision, device, "eval.precision")
        except ConfigError as e:
            raise ConfigError(f"{suite.path}: cell {c.index} ({c.label}): {e}") from None


def run_suite(suite_path: str | Path, out: Optional[str | Path] = None, *, dry_run: bool = False,
              max_cells: Optional[int] = None, stream: Optional[TextIO] = None, progress: bool = False) -> Dict[str, Any]:
    """Run every unfinished cell of a suite (cells that failed before are retried).

    A cell that fails is recorded in results.csv (status ``failed``, the one-line reason) and the
    suite goes on with the next one. One line per cell goes to ``stream`` (default stdout); with
    ``progress``, the data synthesis and each cell's training and feature extraction show their
    progress on stderr (:mod:`ssl_rs.progress`: a bar on a terminal, a line now and then in a
    log), so an hours-long GPU cell is not silent. Returns counts of cells: ``total``, ``skipped`` (finished
    before), ``ran`` (finished now), ``failed`` (failed now; ``failures`` lists them), ``left``
    (not finished, failed ones included).
    """
    check_max_cells(max_cells)
    stream = stream or sys.stdout
    suite = load_suite(suite_path)
    out = Path(out) if out else Path("bench_out") / suite.name
    out = out.resolve()
    log: Callable[[str], None] = lambda line: print(line, file=stream, flush=True)  # noqa: E731
    cells, configs = plan(suite, out)
    check_data_sources(suite)
    results_path = out / "results.csv"
    previous = read_results(results_path)
    done = {r["cell_id"] for r in finished_rows(previous)}
    failed_before = failed_cells(previous)
    todo = [c for c in cells if c.id not in done]
    retry = sum(c.id in failed_before for c in todo)
    log(f"suite {suite.name}: {len(cells)} {plural('cell', len(cells))}, {len(cells) - len(todo)} finished, "
        f"{len(todo)} to run"
        + (f" ({retry} failed before: retried)" if retry else "") + f" -> {out}")
    if dry_run:
        for c in cells:
            mark = "  (done)" if c.id in done else ("  (failed before: " + failed_before[c.id]["error"] + ")"
                                                    if c.id in failed_before else "")
            log(f"  cell {c.index}/{len(cells)} {c.id} {c.label}{mark}")
        return {"total": len(cells), "skipped": len(cells) - len(todo), "ran": 0, "failed": 0, "failures": [],
                "left": len(todo), "out": str(out)}

    _check_precisions(suite, cells, configs)
    out.mkdir(parents=True, exist_ok=True)
    copy_file(suite.path, out / "suite.yaml", announce=False)  # rewritten on every resume: not announced
    write_text(out / "cells.json", json.dumps([
        {"cell_id": c.id, "cell": c.index, "label": c.label, "run_dir": os.path.relpath(configs[c.index].output.dir, out)
         + "/" + c.run_name, **{a: v.label for a, v in c.values.items()},
         **({"reference": cell_reference(suite, c)} if cell_reference(suite, c) else {})} for c in cells], indent=2) + "\n",
        announce=False)
    data_path = prepare_dataset(suite.data, out, "pretrain", progress=progress)
    eval_paths = {d.name: (data_path if d.data is None else prepare_dataset(d.data, out, d.name, progress=progress))
                  for d in suite.eval_datasets}
    for c in todo:
        if c.subset is not None:
            write_subset_split(data_path, c.base_scheme, c.subset, suite.subset_seed)

    durations: List[float] = []
    # Until a cell of this session finishes, the ETA uses the cells finished by earlier sessions.
    earlier = [float(v) for v in {r["cell_id"]: r.get("cell_seconds") for r in finished_rows(previous)
                                  if r["cell_id"] in {c.id for c in cells}}.values() if v]
    ran = 0
    failures: List[Dict[str, Any]] = []
    for c in todo:
        attempted = ran + len(failures)
        if max_cells is not None and attempted >= max_cells:
            break
        left = len(todo) - attempted
        basis = durations or earlier
        eta = format_duration(np.mean(basis) * left) if basis else "?"
        log(f"cell {c.index}/{len(cells)} {c.label} ... ETA {eta}")
        start = time.perf_counter()
        configs[c.index].trainer.progress_bar = progress  # not part of the cell's identity (resolve_cell)
        try:
            rows = run_cell(suite, c, configs[c.index], out, eval_paths)
        except Exception as e:  # one cell's failure must not cost the others (Ctrl-C and SIGTERM still stop)
            seconds = time.perf_counter() - start
            reason = failure_reason(e)
            append_results(results_path, [_failed_row(suite, c, configs[c.index], out, reason, seconds)])
            saved = _save_traceback(configs[c.index], e)
            failures.append({"cell": c.index, "cell_id": c.id, "label": c.label, "error": reason})
            where = f" (traceback: {os.path.relpath(saved, out)})" if saved else ""
            log(f"  FAILED after {format_duration(seconds)}: {reason}{where}")
            continue
        durations.append(time.perf_counter() - start)
        for row in rows:
            row["cell_seconds"] = f"{durations[-1]:.2f}"
        append_results(results_path, rows)
        ran += 1
        main = rows[0]
        metric = next((k for k in ("acc_macro", "ap_macro", "miou") if k in main), None)
        score = (f", {main['eval_data']}/{main['scheme']} {main['protocol']} {metric} {float(main[metric]):.1f}"
                 if metric else "")
        log(f"  done in {format_duration(durations[-1])} (train {float(main['train_seconds']):.0f}s){score}")
    left = len(todo) - ran
    failed = f", {len(failures)} failed" if failures else ""
    log(f"suite {suite.name}: ran {ran} {plural('cell', ran)}{failed}, {left} left; results in {results_path}")
    return {"total": len(cells), "skipped": len(cells) - len(todo), "ran": ran, "failed": len(failures),
            "failures": failures, "left": left, "out": str(out)}

