"""``ssl-rs bench``: run a benchmark suite, then report it."""

from __future__ import annotations

import argparse


EXIT_CELLS_FAILED = 1


def cmd_bench_run(args: argparse.Namespace) -> int:
    import sys

    from ..progress import plural
    from .runner import check_max_cells, run_suite

    check_max_cells(args.max_cells, "--max-cells")
    # one line per cell on stdout; each cell's progress on stderr (a bar on a terminal, lines in a log)
    summary = run_suite(args.suite, args.out, dry_run=args.dry_run, max_cells=args.max_cells, progress=True)
    if not args.dry_run and summary["left"] == 0:
        cells = f"{summary['total']} {plural('cell', summary['total'])}"
        print(f"all {cells} finished; next: ssl-rs bench report {summary['out']}")
    if summary["failed"]:
        first = summary["failures"][0]
        attempted = summary["ran"] + summary["failed"]
        print(f"ssl-rs: error: {summary['failed']} of {attempted} cells run failed (first: cell {first['cell']} "
              f"{first['label']}: {first['error']}); recorded in {summary['out']}/results.csv, the next "
              "`ssl-rs bench run` retries them", file=sys.stderr)
        return EXIT_CELLS_FAILED
    return 0


def cmd_bench_report(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from .report import report
    from .runner import finished_rows, read_results
    from .suite import load_suite

    # The report is silent for a minute or more (mostly the embedding): say what it is doing, on
    # stderr. Only when there is something to report: bad input stays one error line.
    out = Path(args.dir)
    if (out / "suite.yaml").is_file() and finished_rows(read_results(out / "results.csv")):
        method = args.embedding or load_suite(out / "suite.yaml").report.get("embedding", "tsne")
        print(f"ssl-rs: reporting {args.dir}: tables and plots from results.csv, then a 2-D embedding of each "
              f"method's features ({'PCA' if method == 'pca' else 't-SNE'}: the slow part)", file=sys.stderr,
              flush=True)
    report(args.dir, embedding=args.embedding)
    return 0


def add_bench_parser(subparsers) -> None:
    """Add ``bench run`` and ``bench report`` to the ``ssl-rs`` command."""
    bench = subparsers.add_parser("bench", help="run benchmark suites (method x augmentation x size x seed) and report")
    bsub = bench.add_subparsers(dest="bench_command", required=True)

    p = bsub.add_parser("run", help="pretrain + evaluate every unfinished cell of a suite (resumable)")
    p.add_argument("suite", help="suite YAML (benchmarks/suites/<name>.yaml)")
    p.add_argument("--out", help="output directory (default bench_out/<suite name>)")
    p.add_argument("--dry-run", action="store_true", help="validate the suite and list its cells; run nothing")
    p.add_argument("--max-cells", type=int, help="stop after running this many cells, >= 1 (the rest run next time)")
    p.set_defaults(func=cmd_bench_run)

    p = bsub.add_parser("report", help="write results.md and PNG plots from a run's results.csv")
    p.add_argument("dir", help="the output directory of `ssl-rs bench run`")
    p.add_argument("--embedding", choices=["tsne", "pca"], help="2-D embedding method (default: the suite's, tsne)")
    p.set_defaults(func=cmd_bench_report)
