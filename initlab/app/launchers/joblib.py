"""`hydra/launcher=joblib` (hydra_plugins.initlab_launchers): joblib schedules the jobs, `n_jobs` at a time, but each job runs
in a process of its own, forked from a forkserver that imported initlab once and placed in
its own process group. A job that dies is that job's `failed` (see initlab.app.launchers).

Ctrl-C (or SIGTERM) reaches the launcher alone: no further job starts and each running job
is sent that one signal, so it stops at a step boundary and writes its own `interrupted`
summary; the sweep report covers what ran. A second Ctrl-C is forwarded as the second.
"""

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from joblib import Parallel, delayed
from omegaconf import open_dict

from initlab.app.launchers import dead_job, how_it_died, job_dir, log
from initlab.app.sweep import current
from initlab.signals import install_handlers


def _child(conn: Any, blob: bytes) -> None:
    """One job in its own process: what the plugin's execute_job does in a loky worker, with
    the job directory sent first so the parent can speak for a job that dies."""
    os.setpgrp()  # the terminal's Ctrl-C goes to the launcher, which forwards exactly one
    # Ctrl-C as in the CLI's process (one Python drops is still counted); SIGTERM keeps its
    # default until the run installs its own, so a job terminated before it began is that job's failure
    install_handlers((signal.SIGINT,))
    num, overrides, hydra_context, config, task_function, singleton_state = cloudpickle.loads(blob)
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{num}"
        sweep_config.hydra.job.num = num
    HydraConfig.instance().set_config(sweep_config)
    conn.send(("dir", str(job_dir(sweep_config))))
    ret = run_job(hydra_context=hydra_context, config=sweep_config, task_function=task_function,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    conn.send(("ret", cloudpickle.dumps(ret)))


class _Jobs:
    """The running job processes: a Ctrl-C stops new ones and reaches the live ones."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.RLock()  # with n_jobs=1 the main thread both starts jobs and takes Ctrl-C
        self.live: dict[int, Any] = {}

    def forward(self, signum: int) -> None:
        with self.lock:
            for proc in self.live.values():
                try:
                    os.kill(proc.pid, signum)
                except (ProcessLookupError, TypeError):
                    pass


@contextmanager
def _signals_stop(jobs: _Jobs) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if not jobs.stop.is_set():
            log.warning("interrupted: no further job starts; running jobs stop at their next step and "
                        "write their summaries")
        jobs.stop.set()
        current().stopped_by = signum
        jobs.forward(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")  # fork from a clean, single-threaded server
    ctx.set_forkserver_preload(["initlab.app.cli", "initlab.app.study"])  # torch and initlab imported once, not per job
    return ctx


def _run_isolated(jobs: _Jobs, num: int, overrides: list[str], blob: bytes) -> JobReturn | None:
    ctx = _context()
    with jobs.lock:  # a Ctrl-C either stops this job from starting or reaches it
        if jobs.stop.is_set():
            return None  # never started: the sweep was interrupted
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(send, blob), name=f"initlab-job-{num}")
        proc.start()
        jobs.live[num] = proc
    send.close()
    run_dir, ret = None, None
    try:
        while ret is None:
            kind, value = recv.recv()
            if kind == "dir":
                run_dir = Path(value)
            else:
                ret = cloudpickle.loads(value)
    except EOFError:  # the process ended without sending its verdict
        pass
    finally:
        recv.close()
        proc.join()
        with jobs.lock:
            jobs.live.pop(num, None)
    return ret if ret is not None else dead_job(num, filter_overrides(overrides), run_dir,
                                                how_it_died(proc.exitcode))


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    """The joblib plugin's `launch`, each job in a process of its own (see the module doc)."""
    setup_globals()
    assert launcher.config is not None and launcher.task_function is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    n_jobs = int(launcher.joblib.get("n_jobs") or -1)
    n_jobs = (os.cpu_count() or 1) if n_jobs < 0 else n_jobs
    log.info("joblib  %d jobs, %d at a time, each in a process of its own -> %s", len(job_overrides), n_jobs,
             sweep_dir)
    state = Singleton.get_state()
    work = []
    for i, overrides in enumerate(job_overrides):
        num = initial_job_idx + i
        log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
        blob = cloudpickle.dumps((num, list(overrides), launcher.hydra_context, launcher.config,
                                  launcher.task_function, state))
        work.append((num, list(overrides), blob))
    jobs = _Jobs()
    with _signals_stop(jobs):
        runs = Parallel(n_jobs=n_jobs, backend="threading", verbose=int(launcher.joblib.get("verbose") or 0))(
            delayed(_run_isolated)(jobs, num, overrides, blob) for num, overrides, blob in work)
    return [r for r in runs if r is not None]
