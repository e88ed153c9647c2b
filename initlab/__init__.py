"""initlab: weight-initialisation and normalisation studies in PyTorch.

    import initlab
    initlab.apply_init(model, "kaiming", act="relu")
    with initlab.watch(model, optimizer, out="runs/x", total_steps=1000) as w: ...
    run = initlab.load_run("runs/x")
    table = initlab.load_runs("runs/*")  # runs side by side: the config keys they differ on, their verdicts
    groups = initlab.parametrize(model, "mup", base=make_model(128), optimizer="adamw", lr=3e-3)
    result = initlab.coord_check(make_model, widths=[128, 256, 512], batches=loader, param=["sp", "mup"])

Names are imported on first use, so `import initlab` (and `initlab --help`) stays cheap.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("initlab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_LAZY = {
    "apply_init": "initlab.init",
    "watch": "initlab.record.watcher",
    "Watch": "initlab.record.watcher",
    "TelemetryConfig": "initlab.telemetry",
    "load_run": "initlab.rundir.store",
    "load_sweep": "initlab.rundir.sweep_table",
    "load_runs": "initlab.rundir.sweep_table",
    "parametrize": "initlab.width.parametrize",
    "coord_check": "initlab.width.coord",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'initlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["TelemetryConfig", "Watch", "__version__", "apply_init", "coord_check", "load_run", "load_runs", "load_sweep",
           "parametrize", "watch"]
