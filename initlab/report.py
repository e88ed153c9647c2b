"""`initlab-report RUN_DIR...`: rebuild a run's plots from its parquet files alone."""

import argparse
import sys
from pathlib import Path

from rich.console import Console

from initlab.plots import plot_run
from initlab.store import SUMMARY_FILE, load_run


def report_run(run_dir: Path) -> list[Path]:
    """Re-plot one run directory; training is never re-run."""
    run = load_run(run_dir)
    return plot_run(run.stats, run.metrics, run.config, run_dir / "plots", run.hist)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="initlab-report", description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="run directories (holding summary.json)")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    failed = 0
    for path in args.paths:
        if not (path / SUMMARY_FILE).exists() and not (path / "metrics.parquet").exists():
            console.print(f"initlab-report: error: {path} is not an initlab run directory "
                          f"(no {SUMMARY_FILE} or metrics.parquet)", markup=False)
            failed += 1
            continue
        for p in report_run(path):
            console.print(f"wrote {p}", markup=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
