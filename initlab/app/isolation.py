"""A sweep job run by a launcher in a process of its own (the stock joblib and submitit plugins)
runs its study in a child process, and the job's process speaks for it.

Under the stock plugins a job process that dies ends the whole sweep: loky breaks its pool
and kills every sibling, submitit raises when the result is read, and no report is written.
The process a study dies of (SIGKILL, the OOM killer, which picks the largest process) is
here the child: the job's process outlives it, writes the job's `failed` summary from the
job's own files, and returns to its launcher like any job.

Ctrl-C reaches the sweep's process, whose Hydra callback (app/sweep.py) appends the signal
to the sweep directory's stop file; each job's process forwards every signal it finds there
to its study, which stops at a step boundary and writes `interrupted`, and a job that finds
the file before it starts does not start. A file, not a signal to a pid: the jobs may run
on other hosts (Slurm) and the launchers do not say which processes are theirs.
"""

import json
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import configure_log
from omegaconf import DictConfig, OmegaConf, open_dict

from initlab.rundir.layout import RunLayout, SweepLayout, discard_unused
from initlab.rundir.store import read_metrics, write_json
from initlab.signals import STOPPING, install_handlers

log = logging.getLogger("initlab")

FINAL = ("ok", "diverged", "failed", "interrupted")  # a summary with one of these is the study's own verdict
POLL_S = 0.2  # how often a job looks for a Ctrl-C in the stop file


def how_it_died(exitcode: int | None) -> str:
    """'SIGKILL' for an exit code of -9, 'exit code 3' for a plain non-zero exit."""
    if exitcode is None or exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def record_death(run_dir: Path, how: str) -> None:
    """A study whose process ended without its own verdict: summary.json says `failed` and how
    it died; every part it flushed stays (initlab-report draws them)."""
    layout = RunLayout(run_dir)
    if not run_dir.is_dir():
        return
    try:
        if json.loads(layout.summary.read_text()).get("status") in FINAL:
            return  # it wrote its verdict before dying (e.g. while drawing)
    except (OSError, ValueError):
        pass
    try:
        steps = len(read_metrics(run_dir))
    except Exception:  # a part torn by the death: the count is unknown, the verdict is not
        steps = None
    write_json(layout.summary, {
        "status": "failed",
        "error": f"the job's process died ({how}: killed, or out of memory?) before writing its summary",
        "steps_done": steps,
        "note": "parts flushed before the death are kept; `initlab-report` draws them",
    })
    layout.lock.unlink(missing_ok=True)  # its owner is gone


def stop_signals(sweep_dir: Path) -> list[int]:
    """The signals the sweep's process has taken so far, oldest first."""
    try:
        return [int(s) for s in SweepLayout(sweep_dir).stop.read_text().split()]
    except (OSError, ValueError):
        return []


def _context() -> Any:
    if multiprocessing.get_start_method(allow_none=True) not in multiprocessing.get_all_start_methods():
        # a loky worker's default is loky's own method, which the forkserver's children are told
        # to use and cannot find; the worker runs nothing but this job
        multiprocessing.set_start_method("forkserver", force=True)
    ctx = multiprocessing.get_context("forkserver")  # fork from a clean, single-threaded server
    ctx.set_forkserver_preload(["initlab.app.cli", "initlab.app.study"])  # torch imported once per job process
    return ctx


def _child(conn: Any, job: Callable[[DictConfig], Any], cfg: DictConfig, hydra_node: dict, cwd: str) -> None:
    """The study, in the job's Hydra context: its config, its log file, its directory."""
    os.setpgrp()  # a terminal's Ctrl-C reaches it once, through the stop file, not twice
    install_handlers((signal.SIGINT,))  # SIGTERM keeps its default until the run installs its own
    hydra_cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
    with open_dict(hydra_cfg.hydra):  # keys beside Hydra's schema (hydra.env)
        hydra_cfg.merge_with({"hydra": hydra_node})
    HydraConfig.instance().set_config(hydra_cfg)
    configure_log(hydra_cfg.hydra.job_logging, hydra_cfg.hydra.verbose)
    os.chdir(cwd)
    conn.send(job(cfg))


def run_isolated(job: Callable[[DictConfig], Any], cfg: DictConfig, run_dir: Path, sweep_dir: Path) -> Any:
    """`job(cfg)` in a child process; its return value, or None for a job that died (its
    summary then says how) or that the sweep's Ctrl-C stopped before it started."""
    if stop_signals(sweep_dir):
        discard_unused(run_dir)  # never started: no directory named like a run
        return None
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    # the Hydra node as plain values, resolved here: its schema classes, which the launcher's
    # plugins define, do not pickle between processes
    hydra_node = OmegaConf.to_container(HydraConfig.get(), resolve=True)
    proc = ctx.Process(target=_child, args=(send, job, cfg, hydra_node, os.getcwd()),
                       name=f"initlab-{run_dir.name}")

    def forward(signum: int, frame: object) -> None:  # a scheduler's SIGTERM (scancel, preemption)
        if proc.pid is not None:
            os.kill(proc.pid, signum)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C arrives through the stop file
    old = {s: signal.signal(s, forward) for s in STOPPING}
    try:
        proc.start()
        send.close()
        forwarded = 0
        while not recv.poll(POLL_S):  # True on a result and on the child's end alike
            signals = stop_signals(sweep_dir)
            for signum in signals[forwarded:]:
                os.kill(proc.pid, signum)
            forwarded = len(signals)
        try:
            result = recv.recv()
        except EOFError:  # the process ended without sending its verdict
            result = None
            proc.join()
            how = how_it_died(proc.exitcode)
            log.error("failed  %s: the study's process died (%s)", run_dir.name, how)
            record_death(run_dir, how)
        proc.join()
        return result
    finally:
        recv.close()
        for s, h in old.items():
            signal.signal(s, h)
