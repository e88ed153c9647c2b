"""Who owns a run or sweep directory: `.initlab.lock`, holding the owner's pid, host and process
start time. A lock is stale only when this host can prove it: its pid is gone, or that pid now
belongs to a process started at another time (pids are reused). A lock from another host (a
container, a Slurm node on a shared filesystem) is never presumed stale: the error says how to
clear it by hand."""

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from initlab.errors import RunDirTaken
from initlab.rundir.layout import (
    HIST_DIR,
    HYDRA_DIR,
    LOCK_FILE,
    METRICS_DIR,
    MULTIRUN_FILE,
    STATS_DIR,
    SUMMARY_FILE,
    SWEEP_FILE,
)


class Owner(NamedTuple):
    pid: int
    host: str
    started: str | None  # the process's start time where the OS tells it (Linux: /proc), else None


def _started(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # after the command name, which may hold spaces


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def me() -> Owner:
    return Owner(os.getpid(), socket.gethostname(), _started(os.getpid()))


def owner(lock: Path) -> Owner | None:
    """The lock's owner as written, or None while it is unreadable or half written."""
    try:
        fields = lock.read_text().split()
        return Owner(int(fields[0]), fields[1], fields[2] if len(fields) > 2 and fields[2] != "-" else None)
    except (OSError, ValueError, IndexError):
        return None


def live(who: Owner) -> bool:
    """Whether the owner may still be running: always, for another host's process."""
    if who.host != socket.gethostname():
        return True
    if not _alive(who.pid):
        return False
    now = _started(who.pid)
    return who.started is None or now is None or now == who.started


def in_use(directory: Path) -> str | None:
    """Why `directory` is being written by another live initlab right now, or None."""
    lock = Path(directory) / LOCK_FILE
    who = owner(lock)
    if who is None or (who.pid, who.host) == (os.getpid(), socket.gethostname()) or not live(who):
        return None
    if who.host != socket.gethostname():
        return (f"{directory} is locked by initlab pid {who.pid} on host {who.host}: a lock from another "
                f"host is never taken over; if nothing runs there any more, remove {lock}")
    return f"{directory} is in use by a running initlab (pid {who.pid})"


def _holds_run(run_dir: Path) -> bool:
    return (run_dir / SUMMARY_FILE).exists() or any(
        any((run_dir / d).glob("*.parquet")) for d in (STATS_DIR, METRICS_DIR, HIST_DIR))


def _holds_sweep(directory: Path) -> bool:
    return (directory / MULTIRUN_FILE).exists() or (directory / SWEEP_FILE).exists()


def _not_for_a_run(run_dir: Path) -> str | None:
    if _holds_run(run_dir):
        return (f"{run_dir} already holds a run: a run owns its directory, so choose another "
                "(e.g. hydra.run.dir=..., or a new `out`) or remove that one")
    if _holds_sweep(run_dir):
        return f"{run_dir} is a sweep directory: a run cannot write into it, so choose another"
    return None


def _not_for_a_sweep(sweep_dir: Path) -> str | None:
    if _holds_sweep(sweep_dir) or _holds_run(sweep_dir) or any(sweep_dir.glob(f"*/{HYDRA_DIR}")):
        return (f"{sweep_dir} already holds a sweep or a run: a sweep owns its directory, so choose another "
                "(hydra.sweep.dir=...) or remove that one")
    return None


def claim_run(run_dir: Path) -> Path:
    """A run directory for one run: refused if it holds a run's files or a sweep, or another live
    process holds it."""
    return _claim(run_dir, _not_for_a_run)


def claim_sweep(sweep_dir: Path) -> Path:
    """A sweep directory for one sweep: refused if it holds a sweep's or a run's files, or another
    live process holds it (two sweeps started in the same second, a sweep directory reused)."""
    return _claim(sweep_dir, _not_for_a_sweep)


def _claim(directory: Path, refuse: Callable[[Path], str | None]) -> Path:
    """Make `directory` this process's: refused (RunDirTaken) with `refuse(directory)`'s reason,
    or while another live process holds its lock; a stale lock is taken over. Returns the lock
    file, removed by `release`."""
    directory = Path(directory)
    reason = refuse(directory)
    if reason:
        raise RunDirTaken(reason)
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_FILE
    mine = me()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            who = owner(lock)
            if who is not None and (who.pid, who.host) == (mine.pid, mine.host):
                return lock  # this process holds it already (the CLI claims before its watch does)
            if who is None and time.time() - lock.stat().st_mtime < 5:  # being written right now
                time.sleep(0.2)
                continue
            busy = in_use(directory)
            if busy:
                raise RunDirTaken(f"{busy}: it owns that directory, so choose another") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{mine.pid} {mine.host} {mine.started or '-'}\n")
        return lock
    raise RunDirTaken(f"{directory} is in use by another initlab: it owns that directory, so choose another")


def release(lock: Path | None) -> None:
    if lock is not None:
        who = owner(lock)
        if who is not None and (who.pid, who.host) == (os.getpid(), socket.gethostname()):
            lock.unlink(missing_ok=True)
