"""Nothing mixed, nothing lost, no false verdict: the cases of the hostile-input run (issue 37),
each as it was reproduced, and the neighbours found beside them. docs/reliability.md keeps the
category table."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import initlab
from initlab.errors import InitlabError, Interrupted, RunDirTaken
from initlab.record.watcher import Watch
from initlab.report.cli import main as report_main
from initlab.rundir.layout import LOCK_FILE
from initlab.rundir.lock import claim_run, in_use, release
from initlab.rundir.store import read_metrics, read_stats
from initlab.rundir.sweep_table import sweep_table
from initlab.telemetry.columns import nonfinite_rows
from tests.conftest import compose_cfg, run_cli, watched_steps

SMOKE = ["experiment=smoke", "train.progress=false", "plots=false"]


def _loop(w: Watch, model: nn.Module, opt: torch.optim.Optimizer, steps: range, pause: float = 0.0) -> None:
    watched_steps(w, model, opt, steps, (4, 3), pause)


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


# -- 1. two sweeps into one directory ---------------------------------------------------------

def test_a_second_sweep_into_a_sweep_directory_is_refused_before_any_job(tmp_path: Path) -> None:
    first = run_cli(["-m", *SMOKE, "init=default,kaiming", "hydra.sweep.dir=S"], tmp_path)
    assert first.returncode == 0, first.stderr[-800:]
    before = (tmp_path / "S" / "sweep.parquet").read_bytes()
    second = run_cli(["-m", *SMOKE, "init=xavier,orthogonal", "hydra.sweep.dir=S"], tmp_path)
    errors = [ln for ln in second.stderr.splitlines() if ln.startswith("initlab: error:")]
    assert second.returncode == 2 and len(errors) == 1 and "already holds a sweep" in errors[0], second.stderr[-800:]
    assert (tmp_path / "S" / "sweep.parquet").read_bytes() == before
    table = pd.read_parquet(tmp_path / "S" / "sweep.parquet")
    assert sorted(table["init"]) == ["default", "kaiming"] and set(table["status"]) == {"ok"}
    assert not (tmp_path / "S" / LOCK_FILE).exists()  # the first sweep gave its directory back


def test_a_live_sweep_holds_its_directory(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "S").mkdir()
        (tmp_path / "S" / LOCK_FILE).write_text(f"{sleeper.pid} {socket.gethostname()} -\n")
        out = run_cli(["-m", *SMOKE, "init=default,kaiming", "hydra.sweep.dir=S"], tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert out.returncode == 2 and f"in use by a running initlab (pid {sleeper.pid})" in out.stderr
    assert sorted(p.name for p in (tmp_path / "S").iterdir()) == [LOCK_FILE]  # no job ran


def test_a_job_whose_directory_holds_another_runs_files_is_a_failed_row(tmp_path: Path) -> None:
    """The row's labels come from what the sweep asked; the numbers only from a run that recorded
    those same overrides (Hydra rewrites .hydra/overrides.yaml; the run's summary keeps its own)."""
    out = run_cli(["-m", *SMOKE, "init=default,kaiming", "hydra.sweep.dir=S"], tmp_path)
    assert out.returncode == 0, out.stderr[-600:]
    job = tmp_path / "S" / "0"
    (job / ".hydra" / "overrides.yaml").write_text("- experiment=smoke\n- init=xavier\n")  # a later sweep's job
    row = sweep_table(tmp_path / "S").set_index("job").loc["0"]
    assert row["init"] == "xavier" and row["status"] == "failed" and "another run's files" in row["error"]
    assert pd.isna(row["final_loss"]) and pd.isna(row["val_accuracy"])


def test_the_shipped_sweep_directory_is_unique_to_the_microsecond() -> None:
    import yaml

    hydra = yaml.safe_load((Path(initlab.__file__).parents[1] / "conf" / "config.yaml").read_text())["hydra"]
    assert "%f" in hydra["sweep"]["dir"] and "%f" in hydra["run"]["dir"]


# -- 2. locks ---------------------------------------------------------------------------------

def test_a_lock_from_another_host_is_never_taken_over(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / LOCK_FILE).write_text(f"{os.getpid() + 1} othernode 1234\n")
    with pytest.raises(RunDirTaken, match=r"locked by initlab pid \d+ on host othernode: .* remove .*\.initlab\.lock"):
        initlab.watch(nn.Linear(2, 2), out=tmp_path / "d")
    assert (tmp_path / "d" / LOCK_FILE).read_text().split()[1] == "othernode"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc")
def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / LOCK_FILE).write_text(f"{sleeper.pid} {socket.gethostname()} 1\n")  # started at tick 1: not it
        lock = claim_run(tmp_path / "d")
        assert lock.read_text().split()[0] == str(os.getpid())
        release(lock)
        (tmp_path / "d" / LOCK_FILE).write_text(f"{sleeper.pid} {socket.gethostname()} "
                                                f"{Path(f'/proc/{sleeper.pid}/stat').read_text().rsplit(')', 1)[1].split()[19]}\n")
        with pytest.raises(RunDirTaken, match=f"pid {sleeper.pid}"):
            claim_run(tmp_path / "d")
    finally:
        sleeper.kill()
        sleeper.wait()


# -- 3. odd w.log values ----------------------------------------------------------------------

def test_an_odd_logged_value_costs_nothing_already_buffered(tmp_path: Path) -> None:
    model, opt = _model()
    with initlab.watch(model, opt, out=tmp_path / "r", plots=False) as w:
        _loop(w, model, opt, range(3))
        w.log(big=10**30, flag=True)  # stored as floats: one type per column, whatever comes later
        _loop(w, model, opt, range(3, 5))
        w.log(flag=0.5)
        with pytest.raises(InitlabError, match=r"w.log\(z=...\) takes real numbers.*not complex"):
            w.log(z=1 + 2j)
        w.log(phase="warmup")
        with pytest.raises(InitlabError, match=r"w.log\(phase=...\) was logged as a text before"):
            w.log(phase=1.0)
    run = initlab.load_run(tmp_path / "r")
    assert run.summary["status"] == "ok" and run.metrics["loss"].notna().sum() == 5
    assert run.metrics["big"].dropna().tolist() == [1e30] and run.metrics["flag"].dropna().tolist() == [1.0, 0.5]


# -- 4. a damaged part ------------------------------------------------------------------------

def test_a_part_with_damaged_pages_behind_an_intact_footer_is_skipped_and_named(tmp_path: Path) -> None:
    model, opt = _model()
    with initlab.watch(model, opt, out=tmp_path / "r", plots=False, telemetry={"flush_every": 1, "every": 1}) as w:
        _loop(w, model, opt, range(4))
    parts = sorted((tmp_path / "r" / "stats.parquet").glob("*.parquet"))
    assert len(parts) >= 3
    victim = parts[1]
    data = bytearray(victim.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for i in range(4, len(data) - footer):  # every page byte, the footer kept
        data[i] = 0xFF
    victim.write_bytes(bytes(data))
    pq.ParquetFile(victim).close()  # its footer still opens
    with pytest.warns(UserWarning, match=f"skipped an unreadable part {victim}"):
        stats = read_stats(tmp_path / "r")
    assert stats["step"].nunique() == 3
    with pytest.warns(UserWarning, match="skipped an unreadable part"):
        assert report_main([str(tmp_path / "r")]) == 0


# -- 5. a SIGKILL loses at most flush_seconds, logged step or not ----------------------------

def test_unlogged_steps_reach_the_disk_within_flush_seconds(tmp_path: Path) -> None:
    model, opt = _model()
    w = initlab.watch(model, opt, out=tmp_path / "r", plots=False, total_steps=1000,
                      telemetry={"flush_seconds": 0.2})
    _loop(w, model, opt, range(30), pause=0.05)  # the default schedule logs few of these steps
    on_disk = read_metrics(tmp_path / "r")["step"].max()  # what a SIGKILL here would leave
    assert on_disk >= 30 - 1 - 6, on_disk  # 0.2 s of 0.05 s steps, and the step in hand
    w.finish()


# -- 6. ownership holes -----------------------------------------------------------------------

def test_a_finished_watch_writes_nothing_more(tmp_path: Path) -> None:
    model, opt = _model()
    with initlab.watch(model, opt, out=tmp_path / "r", plots=False) as w:
        _loop(w, model, opt, range(2))
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "r").rglob("*"))
    for call in (lambda: w.log(step=5, loss=1.0), w.flush, lambda: w.step(5).__enter__()):
        with pytest.raises(InitlabError, match="after the run finished"):
            call()
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "r").rglob("*")) == files


def test_a_run_cannot_write_into_a_sweep_directory(tmp_path: Path) -> None:
    out = run_cli(["-m", *SMOKE, "init=default", "hydra.sweep.dir=S"], tmp_path)
    assert out.returncode == 0, out.stderr[-600:]
    run = run_cli(["train.steps=1", "train.progress=false", "plots=false", "hydra.run.dir=S"], tmp_path)
    assert run.returncode == 2 and "is a sweep directory" in run.stderr
    assert not (tmp_path / "S" / "summary.json").exists()


def test_the_report_of_a_live_run_waits_for_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, opt = _model()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with initlab.watch(model, opt, out=tmp_path / "r", plots=False) as w:
            _loop(w, model, opt, range(2))
        (tmp_path / "live").mkdir()
        (tmp_path / "live" / "metrics.parquet").mkdir()
        (tmp_path / "live" / LOCK_FILE).write_text(f"{sleeper.pid} {socket.gethostname()} -\n")
        assert in_use(tmp_path / "live")
        assert report_main([str(tmp_path / "live")]) == 2
        assert "report it when that run ends" in capsys.readouterr().err
        assert sorted(p.name for p in (tmp_path / "live").iterdir()) == [LOCK_FILE, "metrics.parquet"]
    finally:
        sleeper.kill()
        sleeper.wait()


# -- 10-13. verdicts --------------------------------------------------------------------------

def test_sigterm_while_the_figures_are_drawn_is_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from initlab.app.study import run_study
    from initlab.report import build

    def stopped(*args: object, **kwargs: object) -> None:
        raise Interrupted("signal 15")

    monkeypatch.setattr(build, "report_run", stopped)
    summary = run_study(compose_cfg(["train.steps=2", "train.batch_size=8", "data.val_size=16",
                                     "train.progress=false", "device=cpu"]), tmp_path / "r")
    assert summary["status"] == "interrupted" and summary["interrupted_during"] == "plots"
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "interrupted"


def test_a_probe_whose_every_draw_diverges_is_a_diverged_run(tmp_path: Path) -> None:
    out = run_cli(["model=mlp", "model.depth=40", "model.act=linear", "init=normal", "init.std=1.0",
                   "data.shape=[256]", "train.steps=0", "probe.seeds=2", "plots=false", "hydra.run.dir=r"], tmp_path)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "diverged", out.stderr[-800:]
    assert summary["probe"]["act_std_last_over_first"] == {"nonfinite_draws": 2}
    assert "2 of 2 draws non-finite" in out.stdout + out.stderr


def test_a_non_finite_weight_is_a_divergence_with_its_layer_and_kind(tmp_path: Path) -> None:
    class Spare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.spare = nn.Linear(3, 2), nn.Linear(2, 2)  # the spare is never called

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    model = Spare()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with initlab.watch(model, opt, out=tmp_path / "r", plots=False, telemetry="full") as w:
        _loop(w, model, opt, range(1))
        with torch.no_grad():
            model.spare.weight.fill_(float("inf"))
        _loop(w, model, opt, range(1, 3))
    d = initlab.load_run(tmp_path / "r").summary
    assert d["status"] == "diverged" and d["diverged"]["step"] == 1
    assert d["diverged"]["layer"] == "spare" and d["diverged"]["kind"] == "weight"


def test_non_finite_rows_mean_overflow_too_but_never_an_empty_tensor() -> None:
    import numpy as np

    cols = {"nonfinite": np.array([0, 0, 0, 1, 0]), "numel": np.array([10, 0, 1, 10, 10]),
            "mean": np.array([1.0, np.nan, 2.0, 1.0, np.inf]), "std": np.array([1.0, np.nan, np.nan, 1.0, 1.0]),
            "norm": np.array([3.0, 0.0, np.nan, 3.0, np.inf])}
    assert nonfinite_rows(cols).tolist() == [False, False, False, True, True]


def test_no_accuracy_from_non_finite_logits(tmp_path: Path) -> None:
    out = run_cli(["model=mlp", "model.depth=20", "model.act=general_relu", "model.act_slope=0.1", "init=lsuv",
                   "train.steps=30", "plots=false", "train.progress=false", "hydra.run.dir=r"], tmp_path)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "diverged", out.stderr[-600:]
    assert summary["final"]["loss"] == "nan" and summary["final"]["accuracy"] == "nan"


# -- 15. one line, never a traceback ----------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["model=mlp", "model.width=2000000", "model.depth=3"], "parameters: with gradients and optimizer state"),
    (["data.shape=[1,28,28"], "data.shape=[1,28,28 cannot be read"),
    (["init=kaimnig"], "init=kaimnig is not one of the init options: did you mean init=kaiming?"),
    (["optim.lr=0.1,0.01"], "which is a sweep: add -m"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    out = run_cli([*args, "train.steps=1", "plots=false", "hydra.run.dir=r"], tmp_path)
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("initlab: error:")]
    assert out.returncode == 2 and len(errors) == 1 and message in errors[0], out.stderr[-800:]
    assert "Traceback" not in out.stderr


def test_a_damaged_summary_or_a_full_disk_is_one_line_from_the_report(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    model, opt = _model()
    with initlab.watch(model, opt, out=tmp_path / "r", plots=False) as w:
        _loop(w, model, opt, range(2))
    summary = tmp_path / "r" / "summary.json"
    summary.write_text(summary.read_text()[:40])
    assert report_main([str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"initlab-report: error: cannot read {tmp_path / 'r'}")
    summary.unlink()
    (tmp_path / "r" / "plots").write_text("a file where the folder goes")  # writing fails as on a full disk
    assert report_main([str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the report of" in err[0]


def test_watch_refuses_a_file_as_out_and_a_model_on_meta(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InitlabError, match="is a file, not a directory"):
        initlab.watch(nn.Linear(2, 2), out=tmp_path / "f")
    with torch.device("meta"):
        meta = nn.Linear(2, 2)
    with pytest.raises(InitlabError, match="on the meta device"):
        initlab.watch(meta, out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


# -- 16. the page shows the config ------------------------------------------------------------

def test_report_html_of_a_cli_run_shows_its_config(tmp_path: Path) -> None:
    out = run_cli(["train.steps=2", "train.progress=false", "plots=false", "report.html=true", "init=kaiming",
                   "hydra.run.dir=r"], tmp_path)
    assert out.returncode == 0, out.stderr[-600:]
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<h2>Config</h2>" in page and "&quot;kaiming&quot;" in page and "init=kaiming" in page
