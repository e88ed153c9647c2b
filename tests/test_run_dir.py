"""A run owns its directory, and what it recorded reaches the disk by time as well as by
count: a reused or shared directory is refused, a stale lock taken over, and a SIGKILL
with the shipped settings keeps step 0 and whatever the last flush window held."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import initlab
from initlab.report import main as report_main
from initlab.store import LOCK_FILE, RunDirTaken, claim, release
from tests.conftest import run_cli

SMALL = ["model=mlp", "model.depth=2", "model.width=16", "data.shape=[32]", "data.train_size=64",
         "data.val_size=16", "train.batch_size=8", "train.progress=false", "plots=false", "device=cpu"]


def test_a_second_run_into_the_same_directory_is_refused(tmp_path: Path) -> None:
    first = run_cli([*SMALL, "hydra.run.dir=runs/x", "train.steps=6"], tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "runs" / "x"
    before = (run_dir / "summary.json").read_text()
    second = run_cli([*SMALL, "hydra.run.dir=runs/x", "train.steps=2", "seed=7", "init=kaiming"], tmp_path)
    lines = [ln for ln in second.stderr.splitlines() if ln.startswith("initlab: error:")]
    assert second.returncode == 2 and len(lines) == 1 and "already holds a run" in lines[0], second.stderr[-600:]
    assert (run_dir / "summary.json").read_text() == before  # nothing of the first run changed
    run = initlab.load_run(run_dir)
    assert list(run.metrics["step"]) == list(range(6)) and run.summary["steps_done"] == 6
    assert not (run_dir / LOCK_FILE).exists()


def test_a_live_lock_is_refused_and_a_stale_one_taken_over(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = tmp_path / "busy"
        run_dir.mkdir()
        (run_dir / LOCK_FILE).write_text(f"{sleeper.pid} {socket.gethostname()}\n")
        with pytest.raises(RunDirTaken, match=f"in use by a running initlab \\(pid {sleeper.pid}\\)"):
            claim(run_dir)
        with pytest.raises(RunDirTaken):
            initlab.watch(nn.Linear(2, 2), out=run_dir)
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = claim(run_dir)  # its process is gone: stale, taken over
    assert lock.read_text().split()[0] == str(os.getpid())
    release(lock)
    assert not lock.exists()


def test_two_runs_started_together_in_one_directory(tmp_path: Path) -> None:
    args = [*SMALL, "hydra.run.dir=runs/shared", "train.steps=400"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-m", "initlab", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-500:] for o in outs]
    refused = outs[[p.returncode for p in procs].index(2)][1]
    assert "initlab: error:" in refused and ("in use by" in refused or "already holds a run" in refused)
    run = initlab.load_run(tmp_path / "runs" / "shared")
    assert list(run.metrics["step"]) == list(range(400)) and run.summary["status"] == "ok"


def test_sigkill_with_the_shipped_settings_keeps_step_0_and_the_flush_window(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "initlab", *SMALL, "train.steps=100000000",
                             "train.eval_every=0"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        stats_parts: list[Path] = []
        while time.monotonic() < deadline and not stats_parts:
            stats_parts = list(tmp_path.glob("outputs/runs/*/*/stats.parquet/part-*.parquet"))
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert stats_parts, "step 0 was not flushed at once"
        run_dir = stats_parts[0].parent.parent
        time.sleep(6.5)  # past flush_seconds (5 s): the metrics of those steps reach the disk too
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stats = pd.read_parquet(run_dir / "stats.parquet")
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert 0 in set(stats["step"]) and len(metrics) > 100
    assert stats["step"].max() <= metrics["step"].max()  # parts cover whole steps, metrics first
    assert not (run_dir / "summary.json").exists()
    assert report_main([str(run_dir)]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "incomplete"


def test_watch_releases_its_lock_and_a_finished_directory_stays_closed(tmp_path: Path) -> None:
    model = nn.Linear(3, 3)
    with initlab.watch(model, out=tmp_path / "w", plots=False) as w:
        with w.step(0):
            model(torch.randn(2, 3)).sum().backward()
    assert not (tmp_path / "w" / LOCK_FILE).exists()
    with pytest.raises(RunDirTaken, match="already holds a run"):
        initlab.watch(model, out=tmp_path / "w")
