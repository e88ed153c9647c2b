"""Every file name of a run directory and of a sweep directory, once. Readers and writers
take their paths from here (`RunLayout`, `SweepLayout`), never from a literal of their own."""

from dataclasses import dataclass
from pathlib import Path

# a run directory
STATS_DIR = "stats.parquet"  # per-layer statistics: a folder of part files
HIST_DIR = "hist.parquet"  # histograms, long format: a folder of part files
METRICS_DIR = "metrics.parquet"  # per-step metrics: a folder of part files
THEORY_FILE = "theory.parquet"  # predicted step-0 std per layer
PROBE_FILE = "probe.parquet"  # step-0 statistics of every weight draw (probe.seeds, probe.inits)
COORD_FILE = "coord.parquet"  # the coordinate check: (param, width, seed, step, layer, kind) -> l1, std, rms
SUMMARY_FILE = "summary.json"  # the verdict, final metrics, flags, timings, versions
LOCK_FILE = ".initlab.lock"  # the live owner of the directory
PLOTS_DIR = "plots"  # figures
REPORT_FILE = "report.html"  # one self-contained page
HYDRA_DIR = ".hydra"  # Hydra's config.yaml and overrides.yaml
LOG_FILE = "initlab.log"  # the run's log (Hydra's job log, named by hydra.job.name)
# a sweep directory: one run directory per job, plus
SWEEP_FILE = "sweep.parquet"  # one row per job
MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of the sweep
RUNS_FILE = "runs.parquet"  # a comparison directory's table (initlab-report --compare): one row per run
STOP_FILE = ".initlab.stop"  # the signals that stopped the sweep, one per line, read by its jobs


@dataclass(frozen=True)
class _Directory:
    """What a run directory and a sweep directory both hold."""

    root: Path

    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE


@dataclass(frozen=True)
class RunLayout(_Directory):
    """The paths of one run directory."""

    @property
    def stats(self) -> Path:
        return self.root / STATS_DIR

    @property
    def hist(self) -> Path:
        return self.root / HIST_DIR

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_DIR

    @property
    def theory(self) -> Path:
        return self.root / THEORY_FILE

    @property
    def probe(self) -> Path:
        return self.root / PROBE_FILE

    @property
    def coord(self) -> Path:
        return self.root / COORD_FILE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def overrides(self) -> Path:
        return self.root / HYDRA_DIR / "overrides.yaml"

    @property
    def config(self) -> Path:
        return self.root / HYDRA_DIR / "config.yaml"


@dataclass(frozen=True)
class SweepLayout(_Directory):
    """The paths of one sweep directory (its jobs are RunLayouts)."""

    @property
    def table(self) -> Path:
        return self.root / SWEEP_FILE

    @property
    def multirun(self) -> Path:
        return self.root / MULTIRUN_FILE

    @property
    def runs(self) -> Path:
        return self.root / RUNS_FILE

    @property
    def stop(self) -> Path:
        return self.root / STOP_FILE


def discard_unused(run_dir: Path) -> bool:
    """Remove a run directory that holds nothing but what Hydra and a refused start put there
    (its config, its log); True if it is gone. Anything else in it, and it stays."""
    names = {HYDRA_DIR, LOG_FILE, LOCK_FILE, SUMMARY_FILE}
    if not run_dir.is_dir() or any(p.name not in names for p in run_dir.iterdir()):
        return False
    hydra_dir = run_dir / HYDRA_DIR
    if hydra_dir.is_dir() and not hydra_dir.is_symlink():
        for f in hydra_dir.iterdir():
            if f.suffix != ".yaml":
                return False
        for f in hydra_dir.iterdir():
            f.unlink()
        hydra_dir.rmdir()
    for name in names - {HYDRA_DIR}:
        (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        return False
    return True
