"""The sweep that `initlab -m` runs in this process: its state, and the Hydra callback that
builds its report when it ends.

Hydra constructs the callback and the launcher from the config, so nothing can be handed to
them: they and the CLI share the process's one `SweepRun` through `current()`. It holds what
the CLI's exit code and Ctrl-C message need and the pool that draws the jobs' figures behind
the sweep (app/behind.py)."""

import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from initlab.app.behind import Behind
from initlab.errors import RunDirTaken
from initlab.rundir.layout import SweepLayout
from initlab.rundir.lock import claim_sweep, release
from initlab.signals import STOPPING

log = logging.getLogger("initlab")


@dataclass
class SweepRun:
    """What this process knows of the sweep it runs."""

    dir: Path | None = None  # set when the sweep starts
    jobs: int = 0  # set when its report is built
    failed: int = 0
    stopped_by: int | None = None  # the signal that stopped it
    behind: Behind = field(default_factory=Behind)  # the jobs' figures, drawn while the next jobs run
    lock: Path | None = None  # the sweep owns its directory while it runs
    handlers: dict[int, Any] = field(default_factory=dict)  # the signal handlers before the sweep's own

    def stop_jobs(self, signum: int, frame: object) -> None:
        """Ctrl-C or SIGTERM while a launcher's jobs run in processes of their own: no further
        job starts, and each running one gets the signal once (app/isolation.py)."""
        if self.stopped_by is None:
            log.warning("interrupted: no further job starts; running jobs stop at their next step and "
                        "write their summaries")
            self.stopped_by = signum
        assert self.dir is not None
        with SweepLayout(self.dir).stop.open("a") as f:
            f.write(f"{signum}\n")

    def stop_listening(self) -> None:
        """The jobs have returned: signals are the sweep process's own again."""
        for signum, handler in self.handlers.items():
            signal.signal(signum, handler)
        self.handlers = {}
        if self.dir is not None:
            SweepLayout(self.dir).stop.unlink(missing_ok=True)

    def release(self) -> None:
        self.stop_listening()
        release(self.lock)
        self.lock = None


_CURRENT = SweepRun()


def current() -> SweepRun:
    """This process's sweep."""
    return _CURRENT


def in_process(launcher: Any) -> bool:
    """The sweep's jobs run one after another in this process (Hydra's basic launcher); the
    others run each job in a process of its own (app/isolation.py)."""
    return "BasicLauncher" in str(launcher.get("_target_"))


def _log_lr_optima(df: Any) -> None:
    """A width x learning-rate sweep: each width's best rate and the optimum's shift."""
    from initlab.report.plots.transfer import lr_optima, transfer_axes
    from initlab.rundir.sweep_table import swept_factors

    axes = transfer_axes(df, swept_factors(df))
    if axes is None or "loss_avg" not in df:
        return
    for row in lr_optima(df[df["status"].isin(["ok", "diverged"])], *axes).itertuples():
        log.info("lr      %s width %s: best lr %.4g (training loss %.4g), %+d grid steps from the smallest width",
                 f"param={row.param}" if row.param else "", row.width, row.best_lr, row.loss, row.shift)


def _print_jobs(df: Any) -> None:
    """The sweep's jobs as a table at the end, where the user is looking: what was swept, the
    verdict, the held-out loss and accuracy, the training loss over the last steps, the flags."""
    from rich.console import Console
    from rich.table import Table

    from initlab.rundir.sweep_table import swept_factors

    def num(v: Any, fmt: str) -> str:
        return "—" if v is None or v != v else format(v, fmt)  # v != v: NaN

    factors = swept_factors(df)
    table = Table(title="sweep", title_justify="left")
    for col in ["job", *factors, "status", "held-out loss", "held-out acc.", "train loss (tail)", "flags"]:
        table.add_column(col, justify="right" if col not in ("status", "flags") else "left")
    for row in df.to_dict("records"):
        status = row["status"] if row["status"] != "failed" or not row.get("error") else \
            f"failed: {str(row['error'])[:60]}"
        table.add_row(str(row["job"]), *(str(row.get(f)) for f in factors), status,
                      num(row.get("val_loss"), ".4g"), num(row.get("val_accuracy"), ".3f"),
                      num(row.get("loss_avg"), ".4g"), row.get("flags") or "")
    Console(stderr=True).print(table)


class SweepReport(Callback):
    """Hydra callback (conf/config.yaml): build the sweep report when a multirun ends, and
    note on this process's `SweepRun` how many jobs failed, so `initlab -m` can exit non-zero."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Claim the sweep directory before Hydra makes it: a second sweep into it (a reused
        directory, or two started at once) is refused with one line and exit 2 before any job."""
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            current().lock = claim_sweep(sweep_dir)
        except RunDirTaken as exc:  # SystemExit passes through Hydra's error report: one line, not its listing
            print(f"initlab: error: {exc}", file=sys.stderr)
            sys.exit(2)
        current().dir = sweep_dir  # for a sweep stopped before its end
        if not in_process(config.hydra.launcher):  # jobs in processes of their own
            current().handlers = {s: signal.signal(s, current().stop_jobs) for s in (signal.SIGINT, *STOPPING)}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import pandas as pd  # the report's imports: not for --help, --cfg or a single run

        from initlab.report.build import build_sweep_report
        from initlab.report.html import write_html

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep = current()
        sweep.stop_listening()  # a Ctrl-C from here on stops the report, not jobs
        sweep.behind.finish()  # the jobs' figures, then the sweep's
        try:
            table_path, _ = build_sweep_report(sweep_dir, OmegaConf.select(config, "plot_layers", default="weighted"),
                                               OmegaConf.select(config, "plot_format", default="png"))
            if OmegaConf.select(config, "report.html", default=False):
                log.info("sweep   %s", write_html(sweep_dir))
            df = pd.read_parquet(table_path)
            failed = int((~df["status"].isin(["ok", "diverged"])).sum())  # diverged is a result
            sweep.dir, sweep.jobs, sweep.failed = sweep_dir, len(df), failed
            _print_jobs(df)
            log.info("sweep   %d jobs, %d failed -> %s", len(df), failed, table_path)
            _log_lr_optima(df)
        except Exception as exc:  # a report bug must not hide the jobs' own results
            log.error("sweep   report failed (%s); rebuild with `initlab-report %s`", exc, sweep_dir)
        finally:
            sweep.release()
