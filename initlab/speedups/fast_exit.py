"""The `initlab` command's exit without the interpreter's module-by-module teardown.

After a run the interpreter frees every module's objects one by one (torch, numba, pandas):
1-2 s on a 2-core CPU, longer than a short run's own set-up. Every file is written and closed
by then. `exit_now` does what a normal exit does first (joins non-daemon threads, runs the
atexit handlers, shuts logging down, flushes the streams) and then ends the process.

Fail-soft: where the interpreter lacks `threading._shutdown` or `atexit._run_exitfuncs`, and
with INITLAB_SPEEDUPS=0, it is `sys.exit(code)`.
"""

import atexit
import logging
import os
import sys
import threading
from typing import NoReturn

from initlab.speedups import enabled, fell_back


def exit_now(code: object) -> NoReturn:
    """Exit with `code` as sys.exit(code) would (a string is printed, status 1)."""
    join_threads = getattr(threading, "_shutdown", None)
    run_exit_hooks = getattr(atexit, "_run_exitfuncs", None)
    if not enabled() or join_threads is None or run_exit_hooks is None:
        if enabled():
            fell_back("fast_exit", "this interpreter lacks threading._shutdown or atexit._run_exitfuncs")
        sys.exit(code)
    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    join_threads()  # what the interpreter's own shutdown does first: its exit hooks (a process
    run_exit_hooks()  # pool's waits for its work), then every non-daemon thread
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`initlab ... | head`)
            pass
    os._exit(code or 0)
