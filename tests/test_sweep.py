"""Multirun studies: every job leaves a verdict, the sweep leaves a table and plots."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from initlab import load_sweep
from initlab.report.cli import main as report_main
from tests.conftest import run_cli

SMALL = ["train.steps=3", "train.batch_size=16", "train.eval_every=0", "data.train_size=64",
         "data.val_size=16", "train.progress=false", "device=cpu"]


def _sweep_dir(root: Path) -> Path:
    found = list(root.glob("outputs/multirun/*/*/multirun.yaml"))
    assert len(found) == 1, found
    return found[0].parent


@pytest.mark.slow  # 29 s on the 2-core CPU (four jobs with plots); the failing-job sweep test stays fast
def test_2x2_sweep_builds_table_and_plots(tmp_path: Path) -> None:
    proc = run_cli(["-m", "init=default,kaiming", "bn=false,true", *SMALL], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    sweep = _sweep_dir(tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1", "2", "3"]
    table = pd.read_parquet(sweep / "sweep.parquet")
    assert len(table) == 4 and set(table["status"]) == {"ok"}
    assert set(table["init"]) == {"default", "kaiming"} and table["bn"].dtype == bool  # typed overrides
    assert table["act_std_first"].notna().all() and table["grad_std_ratio_first_last"].notna().all()
    for png in ("grid_final_loss.png", "step0_std_overlay.png", "loss_curves.png"):
        assert (sweep / "plots" / png).exists(), png
    # The classic comparison: kaiming keeps the last conv's activations larger than default.
    by_init = table.groupby("init")["act_std_last"].mean()
    assert by_init["kaiming"] > 3 * by_init["default"]
    # Python access, with every job's stats tagged by its overrides
    t, stats = load_sweep(sweep, stats=True)
    assert len(t) == 4 and {"init", "bn", "job"} <= set(stats.columns) and stats["job"].nunique() == 4
    # Rebuilt from the files alone
    (sweep / "sweep.parquet").unlink()
    assert report_main([str(sweep)]) == 0 and (sweep / "sweep.parquet").exists()


def test_load_sweep_and_a_table_rebuilt_from_the_files(tmp_path: Path) -> None:
    """The fast share of the 2x2 test above: two jobs of two steps, no figures."""
    proc = run_cli(["-m", "init=default,kaiming", *SMALL, "plots=false"],
                   cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    sweep = _sweep_dir(tmp_path)
    t, stats = load_sweep(sweep, stats=True)
    assert sorted(t["init"]) == ["default", "kaiming"] and set(t["status"]) == {"ok"}
    assert {"init", "job"} <= set(stats.columns) and stats.groupby("init")["job"].nunique().to_dict() == {
        "default": 1, "kaiming": 1}
    before = pd.read_parquet(sweep / "sweep.parquet")
    (sweep / "sweep.parquet").unlink()
    assert len(load_sweep(sweep)) == 2  # built from the job directories when the table is missing
    assert report_main([str(sweep)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(sweep / "sweep.parquet"), before)


def test_a_failing_job_does_not_stop_the_sweep(tmp_path: Path) -> None:
    proc = run_cli(["-m", "device=cpu,cuda:7", *[a for a in SMALL if not a.startswith("device")]],
                   cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert "1 of 2 jobs failed" in proc.stderr
    sweep = _sweep_dir(tmp_path)
    table = pd.read_parquet(sweep / "sweep.parquet").set_index("device")
    assert table.loc["cpu", "status"] == "ok"
    assert table.loc["cuda:7", "status"] == "failed"
    assert "device='cuda:7' is invalid" in table.loc["cuda:7", "error"]
    failed_dir = sweep / table.loc["cuda:7", "path"]
    assert json.loads((failed_dir / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_joblib_sweep(tmp_path: Path) -> None:
    proc = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "init=default,xavier", *SMALL],
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_parquet(_sweep_dir(tmp_path) / "sweep.parquet")
    assert len(table) == 2 and set(table["status"]) == {"ok"}


def _start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "120", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "initlab", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_locks(root: Path, n: int, proc: subprocess.Popen, timeout: float = 120,
                    job: str = "*") -> list[Path]:
    """The lock files ("pid host") of the first `n` jobs (or of job `job`) to start, once they
    all hold one."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        locks = sorted(root.glob(f"outputs/multirun/*/*/{job}/.initlab.lock"))
        if len(locks) >= n and all(p.read_text().strip() for p in locks):
            return locks
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no {n} running jobs after {timeout} s")


def _wait_for_step(job_dir: Path, timeout: float = 60) -> None:
    """Until the job has flushed its step-0 statistics: it is training."""
    end = time.monotonic() + timeout
    while not any((job_dir / "stats.parquet").glob("part-*.parquet")):
        assert time.monotonic() < end, f"{job_dir} never reached step 0"
        time.sleep(0.2)


LONG = [*(a for a in SMALL if not a.startswith("train.steps")), "plots=false"]  # per-job figures are not the point here


def test_joblib_sweep_survives_a_killed_job(tmp_path: Path) -> None:  # ~23 s, kept fast: it guards every sweep
    """Break 4 of issue 15: under the stock plugin a SIGKILLed job broke loky's pool, killed its
    sibling, ran nothing after it and wrote no report (traceback, exit 1)."""
    proc = _start_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "train.steps=5000,20,20", *LONG],
                      tmp_path)
    (lock,) = _wait_for_locks(tmp_path, 1, proc, job="0")
    _wait_for_step(lock.parent)
    os.kill(int(lock.read_text().split()[0]), signal.SIGKILL)  # as the OOM killer would
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "1 of 3 jobs failed" in err and "Traceback" not in err
    sweep = _sweep_dir(tmp_path)
    table = pd.read_parquet(sweep / "sweep.parquet").set_index("job")
    assert list(table["status"]) == ["failed", "ok", "ok"]  # the sibling and the job after it both ran
    assert "SIGKILL" in table.loc["0", "error"]
    killed = sweep / "0"
    assert not (killed / ".initlab.lock").exists()
    assert report_main([str(killed)]) == 0  # what it flushed before dying still draws


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow  # ~16 s; the killed-study and Ctrl-C tests above guard the path every sweep takes
def test_a_launcher_that_breaks_still_leaves_the_report_of_what_ran(tmp_path: Path) -> None:
    """Killing a job's own process (a loky worker, not its study) breaks the stock pool: Hydra
    reports the launcher's error, and the sweep's report still covers the jobs' files."""
    proc = _start_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "train.steps=5000,20", *LONG],
                      tmp_path)
    (lock,) = _wait_for_locks(tmp_path, 1, proc, job="0")
    study = int(lock.read_text().split()[0])
    worker = _parent(_parent(study))  # study <- forkserver <- the job's process
    _wait_for_step(lock.parent)
    try:
        os.kill(worker, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        for pid in (study, _parent(study) if Path(f"/proc/{study}").exists() else None):
            if pid:
                os.kill(pid, signal.SIGKILL)  # orphaned by its job's process (Slurm would kill it with the job)
    assert proc.returncode == 1, err
    assert "sweep stopped by its launcher; the jobs that ran are in" in err
    assert (_sweep_dir(tmp_path) / "sweep.parquet").exists()
    assert not (_sweep_dir(tmp_path) / ".initlab.lock").exists()  # the sweep's directory is free again


def test_ctrl_c_stops_a_joblib_sweep(tmp_path: Path) -> None:
    """One Ctrl-C stops the whole sweep: running jobs write `interrupted`, the rest never start,
    the report covers what ran, exit 130."""
    proc = _start_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2", "train.steps=5000",
                       *LONG], tmp_path)
    for lock in _wait_for_locks(tmp_path, 2, proc):
        _wait_for_step(lock.parent)
    proc.send_signal(signal.SIGINT)  # the launcher forwards it to each running job
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "sweep interrupted" in err
    sweep = _sweep_dir(tmp_path)
    table = pd.read_parquet(sweep / "sweep.parquet")
    assert sorted(table["job"]) == ["0", "1"] and set(table["status"]) == {"interrupted"}
    assert (table["steps_done"] >= 1).all()  # each kept the steps it had done
    assert not (sweep / "2").exists()  # never started


def test_ctrl_c_stops_a_sweep_run_in_this_process(tmp_path: Path) -> None:
    """The basic launcher ran the next job after an interrupted one; now one Ctrl-C ends it."""
    proc = _start_cli(["-m", "seed=0,1,2", "train.steps=100000", *LONG], tmp_path)
    (lock,) = _wait_for_locks(tmp_path, 1, proc)
    _wait_for_step(lock.parent)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    sweep = _sweep_dir(tmp_path)
    table = pd.read_parquet(sweep / "sweep.parquet")
    assert list(table["job"]) == ["0"] and list(table["status"]) == ["interrupted"]
    assert not (sweep / "1").exists()


LAUNCHERS = {
    # a local Ray of 2 CPUs on loopback (ray.init's node address), no dashboard, started and stopped by the plugin
    "ray": ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false",
            "+hydra.launcher.ray.init._node_ip_address=127.0.0.1"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],  # ~45 s: a python per job
}


@pytest.mark.parametrize("launcher", [pytest.param("ray"), pytest.param("submitit_local", marks=pytest.mark.slow)])
def test_a_four_job_sweep_on_a_stock_launcher_survives_a_killed_job(tmp_path: Path, launcher: str) -> None:
    """The plugins as they ship: one job's study SIGKILLed (as the OOM killer would), three ok,
    one failed naming the signal, the report built, exit 1."""
    pytest.importorskip({"ray": "hydra_plugins.hydra_ray_launcher", "submitit_local": "submitit"}[launcher])
    proc = _start_cli(["-m", *LAUNCHERS[launcher], "train.steps=5000,20,20,20", *LONG], tmp_path)
    (lock,) = _wait_for_locks(tmp_path, 1, proc, job="0", timeout=180)
    _wait_for_step(lock.parent)
    os.kill(int(lock.read_text().split()[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "1 of 4 jobs failed" in err, err[-3000:]
    sweep = _sweep_dir(tmp_path)
    table = pd.read_parquet(sweep / "sweep.parquet").set_index("job")
    assert list(table["status"]) == ["failed", "ok", "ok", "ok"] and "SIGKILL" in table.loc["0", "error"]
    assert (sweep / "plots").is_dir()  # the sweep's figures, from the jobs' files


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path: Path) -> None:
    proc = run_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                    "init=default,normal", *SMALL], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_parquet(_sweep_dir(tmp_path) / "sweep.parquet")
    assert len(table) == 2 and set(table["status"]) == {"ok"}


def test_the_slurm_pages_command_composes_for_the_stock_plugin(tmp_path: Path) -> None:
    """docs/slurm.md's command (no cluster here): every key lands where submitit's plugin reads it."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    page = (Path(__file__).parents[1] / "docs" / "slurm.md").read_text()
    block = page.split("initlab -m hydra/launcher=submitit_slurm", 1)[1].split("```", 1)[0]
    args = ["hydra/launcher=submitit_slurm", *(a for a in block.replace("\\\n", " ").split() if a.startswith("hydra."))]
    proc = run_cli([*args, "--cfg", "hydra", "--package", "hydra.launcher"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for key, value in (("partition", "gpu"), ("gpus_per_node", "1"), ("cpus_per_task", "8"), ("mem_gb", "32"),
                       ("timeout_min", "60"), ("array_parallelism", "32")):
        assert f"{key}: {value}" in proc.stdout, key
    assert "SlurmLauncher" in proc.stdout
