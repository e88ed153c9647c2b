"""The first hour at the console (issue 38): a sweep ends with its job table, runs are named by
their overrides, the model table is folded and printed once per sweep, the progress bar's rate
is smoothed and it says when the held-out evaluation runs, a closed terminal (SIGHUP) still
leaves a summary."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from initlab.app.naming import run_name
from initlab.models.summary import folded
from initlab.train import ProgressBar
from tests.conftest import run_cli, watched_steps

SMALL = ["model=mlp", "model.depth=2", "model.width=16", "data.shape=[32]", "data.train_size=64",
         "data.val_size=16", "train.batch_size=8", "train.progress=false", "plots=false", "device=cpu"]


def test_a_sweep_ends_with_its_job_table_and_prints_the_model_once(tmp_path: Path) -> None:
    out = run_cli(["-m", *SMALL, "train.steps=3", "init=default,kaiming", "hydra.sweep.dir=S"], tmp_path)
    assert out.returncode == 0, out.stderr[-800:]
    text = out.stderr
    table = text[text.rindex("┏"):]  # the last table: the sweep's
    for needle in ("job", "init", "status", "held-out loss", "held-out acc.", "default", "kaiming", "ok"):
        assert needle in table, needle
    assert text.count("mlp (norm=none)") == 1  # the model table once, not once a job


def test_runs_are_named_by_their_overrides(tmp_path: Path) -> None:
    assert run_name("model=mlp,model.depth=3,init=kaiming", "mlp", "kaiming") == "mlp_depth=3_init=kaiming"
    assert run_name("", "conv4", "default") == "conv4_default"
    assert run_name("data.root=/a b/c,data.shape=[1,28,28]", "conv4", "default") == "conv4_root=-a-b-c_shape=-1-28-28"
    assert len(run_name("optim.lr=" + "1" * 200, "mlp", "default")) <= 60
    for depth in (2, 3):
        out = run_cli(["model=mlp", f"model.depth={depth}", "train.steps=1", "plots=false"], tmp_path)
        assert out.returncode == 0, out.stderr[-600:]
    names = sorted(p.parent.name.split("_", 1)[1] for p in (tmp_path / "outputs").rglob("summary.json"))
    assert names == ["mlp_depth=2_plots=false_steps=1", "mlp_depth=3_plots=false_steps=1"], names


def test_the_model_table_folds_repeated_blocks() -> None:
    rows = [("layers.0", "Linear", "[256]", 100)]
    rows += [(f"layers.{i}", "ReLU" if i % 2 else "Linear", "[256]", 0 if i % 2 else 65792) for i in range(1, 99)]
    rows += [("head", "Linear", "[10]", 2570)]
    assert folded(rows) == [("layers.0", "Linear", "[256]", 100), ("layers.1 … layers.97 (×49)", "ReLU", "[256]", 0),
                            ("layers.2 … layers.98 (×49)", "Linear", "[256]", 65792), ("head", "Linear", "[10]", 2570)]
    assert folded(rows[:3]) == rows[:3]  # fewer than three repeats stay as they are


def test_the_rate_is_smoothed_and_leaves_out_the_warm_up() -> None:
    bar = ProgressBar(batch_size=64)
    bar.on_fit_start(10)
    try:
        bar.on_step_end(0, {"step_time": 10.0, "loss": 1.0})  # the first step's warm-up
        assert bar.step_time is None
        for step in range(1, 5):
            bar.on_step_end(step, {"step_time": 0.01, "loss": 1.0})
        bar.on_step_end(5, {"step_time": 1.0, "loss": 1.0})  # one slow step moves it by a tenth
        assert abs(bar.step_time - (0.9 * 0.01 + 0.1 * 1.0)) < 1e-12
        bar.on_eval_start(5)
        assert bar.progress.tasks[0].fields["phase"] == "held-out eval"
    finally:
        bar.on_fit_end(None)


def test_a_closed_terminal_still_leaves_a_summary(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "initlab", *SMALL, "train.steps=100000000", "train.eval_every=0",
                             "hydra.run.dir=r"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "r" / "metrics.parquet").glob("*.parquet")) and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and proc.returncode == 130, err[-600:]


def test_a_watch_run_records_its_optimizer_its_size_and_the_callers_config(tmp_path: Path) -> None:
    import torch
    from omegaconf import OmegaConf
    from torch import nn

    import initlab

    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95))
    cfg = OmegaConf.create({"experiment": "mine", "model": {"width": 8}})
    with initlab.watch(model, opt, out=tmp_path / "r", plots=False, config=cfg, tags=["baseline"]) as w:
        watched_steps(w, model, opt, range(1), (5, 4))
    config = initlab.load_run(tmp_path / "r").config
    assert config["model"] == {"name": "Sequential", "params": 58, "width": 8}
    assert config["optim"]["name"] == "AdamW" and config["optim"]["lr"] == 3e-4 and config["optim"]["betas"] == [0.9, 0.95]
    assert config["experiment"] == "mine" and config["tags"] == ["baseline"] and config["source"] == "watch"


def test_gelu_gets_its_own_gain_and_no_dead_fraction() -> None:
    import math

    import torch
    from torch import nn

    from initlab.init import apply_init
    from initlab.nn import acts

    z = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    second = float(torch.nn.functional.gelu(z).pow(2).mean())  # Monte Carlo against the quadrature
    assert acts.gain("gelu") == pytest_approx(1 / math.sqrt(second), rel=2e-3)
    assert acts.gain("relu") == math.sqrt(2)  # the same argument gives He's number
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.GELU())
    report = apply_init(model, {"name": "kaiming"}, "gelu")
    assert "gain=1.534" in report[0]["init"]
    assert abs(model[0].weight.std().item() - acts.gain("gelu") / math.sqrt(512)) < 2e-3
    assert acts.lookup(nn.GELU()).region is None and acts.lookup(nn.SiLU()).region is None


def pytest_approx(value: float, rel: float) -> object:
    import pytest

    return pytest.approx(value, rel=rel)


def test_probing_several_inits_prints_each_schemes_depth_ratios(tmp_path: Path) -> None:
    out = run_cli([*SMALL, "model.depth=6", "probe.inits=[default,kaiming]", "probe.seeds=2", "train.steps=0"], tmp_path)
    assert out.returncode == 0, out.stderr[-800:]
    table = out.stderr[out.stderr.index("probe: 2 weight draw(s) per init"):]
    assert "activation std last/first" in table and "│ default" in table and "│ kaiming" in table


def test_the_sweep_page_shows_what_was_swept_first_and_no_empty_columns(tmp_path: Path) -> None:
    out = run_cli(["-m", *SMALL, "train.steps=2", "init=default,kaiming", "report.html=true", "hydra.sweep.dir=S"],
                  tmp_path)
    assert out.returncode == 0, out.stderr[-800:]
    page = (tmp_path / "S" / "report.html").read_text()
    header = page[page.index('class="dataframe jobs"'):]
    header = header[:header.index("</tr>")]
    names = [h.split(">")[-1] for h in header.split("</th>")[:-1]]
    assert names[:2] == ["job", "init"] and "diverged_step" not in names and "diverged_layer" not in names
    job = (tmp_path / "S" / "1" / "report.html").read_text()
    assert "<title>initlab run" in job and "init=kaiming" in job[:job.index("</title>")]
