"""The child side of conftest.run_cli: one `initlab` command line in a process forked from a
server that has already imported torch, initlab and the plotting stack (preloaded once per
test session), so each command pays for its own work, not for the ~7 s of imports.
What only a fresh interpreter shows (the import graph, start-up time, signals at start-up,
sitecustomize) is tested with real subprocesses elsewhere."""

import os
import sys
import warnings
from pathlib import Path

PRELOAD = ["torch", "torch._dynamo", "initlab.app.cli", "initlab.app.study", "initlab.report.plots", "initlab.report.build",
           "initlab.rundir.sweep_table", "tests.cli_child"]


def run_initlab(args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """As `python -m initlab ARGS` in `cwd` with `env`, stdout and stderr into files; the
    process's exit code is the command's."""
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if env.get("PYTHONWARNINGS") == "ignore":  # read at interpreter start-up, which this process skipped
        warnings.simplefilter("ignore")
    import initlab
    from initlab.app import cli

    sys.argv = [str(Path(initlab.__file__).with_name("__main__.py")), *args]
    cli.main()
