"""Python's cycle collector, kept off the work where it only walks what the process holds for good.

A full collection walks every object the process holds: with torch, pandas and matplotlib
loaded that is 300,000-450,000 objects and about 0.2 s a collection on 2 cores. CPython starts
one each time the objects that outlived the younger collections grow by a quarter, so it
runs again and again while torch, numba and matplotlib import, and while a run's figures are
drawn (they allocate a lot that lives for a figure). Inside `paused()` no full collection
starts; what outlived the younger collections there is walked by the next full one after it.

`freeze_loaded()` sets what is loaded aside for good (`gc.freeze`): later collections walk
the run's own objects only. Only the `initlab` command calls it, once, after its imports; a
library caller's process keeps its own collector settings. Both do nothing with
INITLAB_SPEEDUPS=0.
"""

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from initlab.speedups import enabled

_frozen = False
NEVER = 2**30  # collections of the middle generation before a full one: none inside `paused()`


@contextmanager
def paused() -> Iterator[None]:
    """No full collection inside (imports, drawing); the younger ones run as usual, so short-lived
    cycles are still freed. The thresholds as they were after. Nests."""
    if not enabled():
        yield
        return
    young, middle, full = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)
    try:
        yield
    finally:
        gc.set_threshold(young, middle, full)


def freeze_loaded() -> None:
    """Once per process: what is alive now (modules, classes, the config) is left out of every
    later collection. Garbage cycles among it stay in memory until the process exits: after
    the CLI's imports (younger collections ran), 81 objects here."""
    global _frozen
    if not _frozen and enabled():
        gc.freeze()
        _frozen = True
