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
from initlab.errors import RunDirTaken
from initlab.report.cli import main as report_main
from initlab.rundir.layout import LOCK_FILE
from initlab.rundir.lock import claim_run as claim
from initlab.rundir.lock import release
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


FULL_DISK = """
import errno, pyarrow.parquet as pq
_real, _calls = pq.write_table, [0]
def write_table(table, where, *a, **k):
    _calls[0] += 1
    if _calls[0] > {ok}:  # the disk fills up after {ok} part files
        raise OSError(errno.ENOSPC, "No space left on device", str(where))
    return _real(table, where, *a, **k)
pq.write_table = write_table
"""


def test_a_disk_that_fills_up_mid_run_is_one_line_and_the_parts_agree(tmp_path: Path) -> None:
    """Only whole flushes reach the disk: the metrics and stats parts cover the same steps."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FULL_DISK.format(ok=3))  # step 0's metrics+stats+hist, then full
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "initlab", "model=mlp", "data.shape=[64]", "train.steps=400",
                           "telemetry=full", "telemetry.flush_every=5", "train.progress=false", "plots=false",
                           "device=cpu", "hydra.run.dir=run"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("initlab: error:")]
    run_dir = tmp_path / "run"
    assert errors == [f"initlab: error: cannot write the run to {run_dir}: No space left on device"]
    assert not list(run_dir.rglob(".part-*"))  # no half-written part left behind
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    stats = pd.read_parquet(run_dir / "stats.parquet")
    assert sorted(stats["step"].unique()) == [0] and sorted(metrics["step"]) == [0]


def test_an_output_directory_under_a_file_is_one_line_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    proc = run_cli(["hydra.run.dir=afile/run"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("initlab: error: hydra.run.dir=afile/run cannot be created: afile is a file, "
                                   "not a directory")


def test_a_read_only_output_directory_is_refused(tmp_path: Path, monkeypatch) -> None:
    """os.access answers for permissions and read-only mounts alike (root ignores permissions, so
    the read-only answer is stood in for)."""
    from initlab.app.cli import _output_dir_problem

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    assert _output_dir_problem([f"hydra.run.dir={ro}/x/${{now:%H}}"]) == (
        f"hydra.run.dir={ro}/x/${{now:%H}} cannot be created: {ro} is not writable (permissions or a read-only "
        "filesystem)")
    assert _output_dir_problem(["-m", f"hydra.sweep.dir={ro}/s"]).startswith(f"hydra.sweep.dir={ro}/s cannot")
    assert _output_dir_problem([f"hydra.run.dir={tmp_path}/fine"]) is None


def test_report_salvages_the_readable_parts_and_names_the_corrupt_one(run, capsys) -> None:
    _, run_dir = run("telemetry.flush_every=1", "telemetry.log_points=0", "train.steps=4")  # a part per step
    parts = sorted((run_dir / "stats.parquet").glob("part-*.parquet"))
    assert len(parts) >= 3
    bad = parts[1]
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # torn, as by a crash
    assert report_main([str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert f"skipped unreadable part {bad}" in err
    stats = initlab.load_run(run_dir).stats
    assert 0 < stats["step"].nunique() < 4  # every other part is read
    assert (run_dir / "plots" / "grad_flow.png").exists()


def test_report_on_a_failed_run_with_no_parts_says_so(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "failed"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "failed", "error": "device='cuda:7' is invalid"}))
    assert report_main([str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (f"initlab-report: error: {run_dir}: nothing to draw, the run recorded no readable "
                           "statistics or metrics (status failed: device='cuda:7' is invalid)")
    assert not (run_dir / "plots").exists()
