"""Tests compose the real config, shrink it, and finish in seconds on CPU."""

import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from initlab.app.study import run_study

# Small enough for a 2-core CPU, large enough to exercise every stage. Figures are drawn by
# the tests that look at them ("plots=true"): drawing is most of a shrunk run's time.
SHRINK = [
    "train.steps=2", "train.batch_size=8", "train.eval_every=0", "train.progress=false",
    "data.train_size=64", "data.val_size=16", "device=cpu", "plots=false",
]


def compose_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_module(config_module="initlab.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture
def make_cfg() -> Callable[..., DictConfig]:
    """Compose the shipped config with the test shrink, then the test's overrides."""
    return lambda *overrides: compose_cfg([*SHRINK, *overrides])


@pytest.fixture
def run(tmp_path: Path, make_cfg) -> Callable[..., tuple[dict, Path]]:
    """Run a study in-process into a fresh directory; returns (summary, run_dir)."""
    counter = iter(range(10_000))

    def _run(*overrides: str) -> tuple[dict, Path]:
        run_dir = tmp_path / f"run{next(counter)}"
        run_dir.mkdir()
        return run_study(make_cfg(*overrides), run_dir), run_dir

    return _run


_FORKSERVER = None


def _forkserver():
    """A multiprocessing forkserver with the CLI's imports preloaded, started on first use."""
    global _FORKSERVER
    if _FORKSERVER is None:
        import multiprocessing

        from tests.cli_child import PRELOAD

        _FORKSERVER = multiprocessing.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(PRELOAD)
    return _FORKSERVER


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real command line, as a user types it, in `cwd`: `initlab.app.cli.main()` with these
    arguments in a fresh process (forked from a server that has imported the CLI's modules
    once, see tests/cli_child.py); its exit code, stdout and stderr."""
    from tests.cli_child import run_initlab

    env = {**os.environ, "COLUMNS": "120", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as capture:
        out, err = Path(capture) / "stdout", Path(capture) / "stderr"
        proc = _forkserver().Process(target=run_initlab, args=(list(args), str(cwd), env, str(out), str(err)))
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["initlab", *args], timeout)
        return subprocess.CompletedProcess(["initlab", *args], proc.exitcode, out.read_text(), err.read_text())


def only_run_dir(root: Path) -> Path:
    dirs = [p.parent for p in root.rglob("summary.json")]
    assert len(dirs) == 1, f"expected one run under {root}, found {dirs}"
    return dirs[0]


def watched_steps(w, model, opt, steps, inputs: tuple[int, ...], pause: float = 0.0) -> None:
    """The README's plain loop through `w` for `steps`: a squared-output loss on fresh Gaussian
    inputs of shape `inputs`, one optimizer step each, the loss logged."""
    import time

    import torch

    for s in steps:
        with w.step(s):
            loss = model(torch.randn(*inputs)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        w.log(loss=loss)
        time.sleep(pause)


@pytest.fixture
def speedups_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed-ups on, whatever INITLAB_SPEEDUPS the suite runs under (`make test-speedups-off`):
    for the tests of what a speed-up does when it is on (its subprocesses inherit it too)."""
    monkeypatch.setenv("INITLAB_SPEEDUPS", "1")


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch):
    """The CPU path's process-wide state as a fresh process has it: numba's kernels not loaded,
    nothing spent on tensor ops yet (earlier tests of the suite load them; a run in a process
    that has them takes them from its first step). Yields initlab.telemetry.reducers."""
    from initlab.telemetry import reducers

    monkeypatch.setattr(reducers, "_kernels", None)
    monkeypatch.setattr(reducers, "_process_spent", 0.0)
    return reducers
