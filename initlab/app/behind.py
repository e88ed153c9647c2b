"""A sequential sweep's per-run figures, drawn behind it: while the next jobs run, worker
processes draw each finished job's figures (and its report.html) from the files it wrote,
with the same `report_run` as `initlab-report`. Drawing a step-0 job's figures takes longer
than the rest of the job, so drawn in turn they more than doubled a probe sweep's time
(benchmarks/waiting.py measures the sweep with and without figures).

Only for Hydra's basic launcher, whose jobs run one after another in this process; the
parallel launchers already keep every core busy, and a single run draws in its own process.
The workers are spawned, not forked (a fork of a process running torch's threads is unsafe),
import no torch, run at a lower priority than the jobs and ignore Ctrl-C: the sweep decides
what happens to the figures not yet drawn."""

import logging
import os
import signal
from concurrent.futures import Future, wait
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # multiprocessing only when a sweep first hands a run over (not for --help)
    from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger("initlab")
NICE = 10  # the jobs come first: the figures take the cores the jobs leave, then all of them at the end
MAX_WORKERS = 4  # each holds pandas and matplotlib (about 230 MB at its peak, measured)


def workers() -> int:
    """One per core this process may run on, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _background() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICE)


def draw_run(run_dir: str, html: bool) -> int:
    """In the worker: one run's figures (and report.html) from its files; how many were written."""
    from initlab.report.build import report_run
    from initlab.report.html import write_html

    made = report_run(Path(run_dir))
    if html:
        write_html(Path(run_dir))
    return len(made)


class Behind:
    """The worker processes, started at the first run handed over, drawing runs in the order given."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._pending: dict[Future, Path] = {}

    def submit(self, run_dir: Path, html: bool) -> None:
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool
        from multiprocessing import get_context

        if self._pool is None:
            self._pool = ProcessPoolExecutor(workers(), mp_context=get_context("spawn"), initializer=_background)
        try:
            future = self._pool.submit(draw_run, str(run_dir), html)
        except BrokenProcessPool:  # the worker died (out of memory?): start another for this run on
            self._pool = None
            return self.submit(run_dir, html)
        self._pending[future] = run_dir
        future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        run_dir = self._pending.pop(future, None)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:  # logged, never raised: the run's data is safe and its verdict stands
            log.error("plots   failed for %s (%s); rebuild later with `initlab-report %s`", run_dir,
                      f"{type(exc).__name__}: {exc}", run_dir)

    def finish(self) -> None:
        """Wait for every run handed over (the sweep's report comes after its jobs' figures)."""
        if self._pool is None:
            return
        if self._pending:
            log.info("plots   drawing the figures of the last %d jobs", len(self._pending))
        wait(list(self._pending))  # each logs its own failure
        self._pool.shutdown()
        self._pool = None

    def abandon(self) -> list[Path]:
        """Ctrl-C: the figure being drawn is finished, the rest are not drawn; returns those runs."""
        if self._pool is None:
            return []
        queued = [run_dir for future, run_dir in list(self._pending.items()) if future.cancel()]
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        return queued
