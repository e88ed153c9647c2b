"""Tests compose the real config, shrink it, and finish in seconds on CPU."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from initlab.study import run_study

# Small enough for a 2-core CPU, large enough to exercise every stage.
SHRINK = [
    "train.steps=2", "train.batch_size=8", "train.eval_every=0", "train.progress=false",
    "data.train_size=64", "data.val_size=16", "device=cpu",
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


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real command line, as a user types it, in `cwd`."""
    env = {**os.environ, "COLUMNS": "120", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "initlab", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=env,
    )


def only_run_dir(root: Path) -> Path:
    dirs = [p.parent for p in root.rglob("summary.json")]
    assert len(dirs) == 1, f"expected one run under {root}, found {dirs}"
    return dirs[0]
