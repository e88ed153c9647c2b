"""Speed-ups that lean on more than another library's public API, kept in one place.

Each one is fail-soft (a name it needs that is missing or changed falls back to the plain
behaviour, said once at debug level on the `initlab.speedups` logger) and switchable:
`INITLAB_SPEEDUPS=0` turns every one off, and the plain path is what runs. Nothing outside
this package may use a private name of torch, matplotlib, Hydra, submitit or the interpreter
(tests/test_layout.py holds it).

| module | what it saves | what it leans on |
| --- | --- | --- |
| `eager_optim` | torch.optim's first-call import of torch._dynamo (1-3 s of a short run) | torch's wrapper functions' code objects |
| `fast_exit` | the interpreter's module-by-module teardown after a run (1-2 s) | `threading._shutdown`, `atexit._run_exitfuncs` |
| `collector` | full cycle collections while modules load and figures draw | `gc` thresholds (public; switchable with the rest) |
| `allocator` | page faults on a CPU step's large tensors (glibc `mallopt`) | glibc's malloc parameters through ctypes |
"""

import logging
import os

log = logging.getLogger("initlab.speedups")
ENV = "INITLAB_SPEEDUPS"
_said: set[str] = set()


def enabled() -> bool:
    """False when INITLAB_SPEEDUPS is 0/false/no/off: every speed-up then takes the plain path."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def fell_back(name: str, why: str) -> None:
    """Say once per process, at debug level, that a speed-up took the plain path and why."""
    if name not in _said:
        _said.add(name)
        log.debug("speed-up %s off: %s", name, why)
