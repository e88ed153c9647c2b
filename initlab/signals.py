"""Signals held while a step's records are written, so what is on disk describes whole steps."""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Every SIGINT/SIGTERM the CLI's handlers took. Python drops an exception raised inside a
# finalizer or a callback it calls for itself ("Exception ignored in ..."), so a Ctrl-C landing
# there is lost; the training loop and the CLI read this instead of trusting the exception alone.
SIGNALLED: list[int] = []


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM arriving inside are held until the block is done, then handled as they
    would have been, so an interrupted run's summary agrees with the rows it recorded.
    (Masking the signal would not do: another thread may take it for the process.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, Any]] = []
    old = {s: signal.signal(s, lambda n, f: caught.append((n, f))) for s in (signal.SIGINT, signal.SIGTERM)}
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
