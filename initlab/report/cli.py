"""`initlab-report RUN_OR_SWEEP_DIR...`: rebuild plots (and a sweep's table) from the
parquet files alone; training is never re-run. Optionally report.html and TensorBoard."""

import argparse
import sys
from pathlib import Path

from rich.console import Console

from initlab.report.build import (
    NothingToDraw,
    build_comparison,
    build_sweep_report,
    latest_run,
    latest_sweep,
    report_run,
)
from initlab.report.html import write_html
from initlab.rundir.layout import METRICS_DIR, SUMMARY_FILE
from initlab.rundir.lock import in_use
from initlab.rundir.store import bad_parts
from initlab.rundir.sweep_table import is_sweep_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="initlab-report", description=__doc__)
    parser.add_argument("paths", nargs="*", type=Path, help="run directories (holding summary.json)")
    parser.add_argument("--latest", type=Path, metavar="DIR",
                        help="also rebuild the most recent run and sweep under DIR (e.g. outputs)")
    parser.add_argument("--layers", default=None, metavar="WHICH",
                        help="the layer axis of per-layer figures: weighted (conv/linear outputs), all, or a "
                             "module type such as ReLU (default: the run's plot_layers)")
    parser.add_argument("--format", choices=["png", "svg", "pdf"], default=None,
                        help="figure format (default: the run's plot_format)")
    parser.add_argument("--html", action="store_true",
                        help="also write DIR/report.html: one self-contained page (figures embedded) that opens "
                             "from file:// with no network")
    parser.add_argument("--compare", action="store_true",
                        help="draw the given runs (directories or globs) side by side, as a sweep's figures, "
                             "into --out, with runs.parquet: the config keys they differ on and their verdicts")
    parser.add_argument("--out", type=Path, default=Path("compare"), metavar="DIR",
                        help="where --compare writes (default: ./compare)")
    parser.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="LOGDIR",
                        help="instead of redrawing the plots, write TensorBoard event files (a sweep: one TensorBoard run per "
                             "job) to LOGDIR, default DIR/tensorboard; needs initlab[tensorboard]")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    paths = list(args.paths)
    if args.latest is not None:
        latest = [p for p in (latest_run(args.latest), latest_sweep(args.latest)) if p is not None]
        if not latest:
            print(f"initlab-report: error: no finished run or sweep under {args.latest}", file=sys.stderr)
            return 1
        paths += latest
    if not paths:
        parser.error("give run directories or --latest DIR")
    if args.compare:
        return _compare(paths, args, console)
    for path in paths:  # bad input: one line and exit 2, before any work
        problem = (f"{path} does not exist" if not path.exists() else
                   f"{path} is not a directory" if not path.is_dir() else
                   f"{busy}; report it when that run ends" if (busy := in_use(path)) else None)
        if problem:
            print(f"initlab-report: error: {problem}", file=sys.stderr)
            return 2
    if args.tensorboard is not None:  # the export, and with --html the page of what is already drawn
        failed = _tensorboard(paths, Path(args.tensorboard) if args.tensorboard else None)
        for path in paths if args.html else []:
            if (path / SUMMARY_FILE).exists() or is_sweep_dir(path):
                console.print(f"wrote {write_html(path)}", markup=False)
        return failed
    failed = 0
    for path in paths:
        try:
            failed += _report(path, args, console)
        except OSError as exc:  # a full or read-only disk, a folder in the way: the files already there stay
            print(f"initlab-report: error: cannot write the report of {path}: {exc.strerror or exc}"
                  f"{f' ({exc.filename})' if exc.filename else ''}", file=sys.stderr)
            failed += 1
        except ValueError as exc:  # a damaged summary.json or sweep table (json and pyarrow say ValueError)
            print(f"initlab-report: error: cannot read {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                  file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _report(path: Path, args: argparse.Namespace, console: Console) -> int:
    """One directory's figures (and page); 1 where there was nothing to draw."""
    if is_sweep_dir(path):
        table, plots = build_sweep_report(path, args.layers or "weighted", args.format or "png")
        for p in [table, *plots, *([write_html(path)] if args.html else [])]:
            console.print(f"wrote {p}", markup=False)
        return 0
    if not (path / SUMMARY_FILE).exists() and not (path / METRICS_DIR).exists():
        print(f"initlab-report: error: {path} is not an initlab run directory "
              f"(no {SUMMARY_FILE} or {METRICS_DIR})", file=sys.stderr)
        return 1
    for part, why in bad_parts(path).items():
        print(f"initlab-report: warning: skipped unreadable part {part} ({why}); drawing the rest",
              file=sys.stderr)
    try:
        made = report_run(path, args.layers, args.format)
    except NothingToDraw as exc:
        print(f"initlab-report: error: {exc}", file=sys.stderr)
        return 1
    for p in [*made, *([write_html(path)] if args.html else [])]:
        console.print(f"wrote {p}", markup=False)
    return 0


def _compare(paths: list[Path], args: argparse.Namespace, console: Console) -> int:
    from initlab.errors import InitlabError

    try:
        table, plots = build_comparison(paths, args.out, args.layers or "weighted", args.format or "png")
    except (InitlabError, FileNotFoundError) as exc:  # bad input: one line, exit 2, nothing written
        print(f"initlab-report: error: {exc}", file=sys.stderr)
        return 2
    for p in [table, *plots]:
        console.print(f"wrote {p}", markup=False)
    return 0


def _tensorboard(paths: list[Path], logdir: Path | None) -> int:
    from initlab.errors import InitlabError
    from initlab.report.tensorboard import export

    failed = 0
    for path in paths:
        target = logdir or path / "tensorboard"
        try:
            written = export(path, target if len(paths) == 1 or logdir is None else target / path.name)
        except (InitlabError, FileNotFoundError) as exc:
            print(f"initlab-report: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        for where, n in written:
            print(f"wrote {where}: {n['scalars']} scalars, {n['histograms']} histograms")
        print(f"view: tensorboard --logdir {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
