"""Every benchmark `make bench` runs finishes and writes its table: each in its tiny mode
(`--quick`, a `_quick` table that git ignores). Slow: minutes on 2 cores."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run_all import BENCHMARKS

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("module", BENCHMARKS)
def test_each_benchmark_runs_to_its_table(module: str) -> None:
    proc = subprocess.run([sys.executable, "-m", module, "--quick"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Machine:" in proc.stdout  # the table, printed as written to benchmarks/results/*_quick.md
