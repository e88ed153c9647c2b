"""Signals: the handlers that count each Ctrl-C and SIGTERM, and the block that holds them while a
step's records are written, so what is on disk describes whole steps."""

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, NoReturn

from initlab.errors import Interrupted

# Every SIGINT/SIGTERM the CLI's handlers took. Python drops an exception raised inside a
# finalizer or a callback it calls for itself ("Exception ignored in ..."), so a Ctrl-C landing
# there is lost; the training loop and the CLI read this instead of trusting the exception alone.
SIGNALLED: list[int] = []
# SIGHUP (the terminal closed) ends a run as SIGTERM does: its summary is written
STOPPING = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class Watchdog:
    """A long loop's check for a Ctrl-C or SIGTERM whose exception Python dropped since the loop
    began (see SIGNALLED): `check()` at each boundary raises what the handler meant to raise."""

    def __init__(self) -> None:
        self.seen = len(SIGNALLED)

    def check(self) -> None:
        if len(SIGNALLED) > self.seen:
            if SIGNALLED[-1] == signal.SIGINT:
                raise KeyboardInterrupt
            raise Interrupted(f"signal {SIGNALLED[-1]}")


def raise_keyboard_interrupt(signum: int, frame: object) -> NoReturn:
    """SIGINT (and, outside a run, SIGTERM): counted, then raised as Python's own handler would."""
    SIGNALLED.append(signum)
    raise KeyboardInterrupt


def raise_interrupted(signum: int, frame: object) -> NoReturn:
    """SIGTERM inside a run: counted, then raised as an exception the run turns into `interrupted`."""
    SIGNALLED.append(signum)
    raise Interrupted(f"signal {signum}")


def _quiet_dropped_interrupt(args: Any, *, then: Callable[[Any], object]) -> None:
    """Python prints the traceback of an exception it had to drop. A counted Ctrl-C dropped so
    (e.g. landing in numba's LLVM callback while a kernel compiles) is not a crash: the loop
    stops at the next step boundary, so saying nothing is the truthful report."""
    if SIGNALLED and isinstance(args.exc_value, (KeyboardInterrupt, Interrupted)):
        return
    then(args)


def install_handlers(signums: tuple[int, ...] = (signal.SIGINT, *STOPPING)) -> None:
    """What a process that runs initlab jobs needs: Ctrl-C (and SIGTERM) counted and raised, and
    the interrupts Python drops kept quiet (the CLI's process and each joblib job's)."""
    for signum in signums:  # the run itself turns SIGTERM into Interrupted
        signal.signal(signum, raise_keyboard_interrupt)
    if getattr(sys.unraisablehook, "func", None) is not _quiet_dropped_interrupt:  # once, not around itself
        sys.unraisablehook = partial(_quiet_dropped_interrupt, then=sys.unraisablehook)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM arriving inside are held until the block is done, then handled as they
    would have been, so an interrupted run's summary agrees with the rows it recorded.
    (Masking the signal would not do: another thread may take it for the process.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, Any]] = []
    old = {s: signal.signal(s, lambda n, f: caught.append((n, f))) for s in (signal.SIGINT, *STOPPING)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if caught:
            signum, frame = caught[0]
            handler = old[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler != signal.SIG_IGN:
                signal.raise_signal(signum)
