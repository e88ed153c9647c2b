"""`make bench`: every benchmark, each writing its table to benchmarks/results/."""

import subprocess
import sys

BENCHMARKS = ["benchmarks.loader", "benchmarks.telemetry_overhead", "benchmarks.watch_side_by_side", "benchmarks.model_steps", "benchmarks.waiting",
              "benchmarks.reports", "benchmarks.coord_mup", "benchmarks.precision",
              "benchmarks.distributed", "benchmarks.launchers"]

if __name__ == "__main__":
    extra = sys.argv[1:]
    failed = [b for b in BENCHMARKS if subprocess.call([sys.executable, "-m", b, *extra]) != 0]
    sys.exit(1 if failed else 0)
