"""Whole studies in-process: every model x init x bn trains; files, statuses, determinism."""

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from initlab.init import apply_init
from initlab.models import MODELS as MODEL_REGISTRY
from initlab.models import build_model
from initlab.models.external import EXTERNAL
from initlab.rundir.store import load_run

MODELS = sorted(set(MODEL_REGISTRY) - set(EXTERNAL))  # the zoo; external models: test_external
INITS = ["default", "xavier", "kaiming", "normal", "orthogonal"]


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_init_bn_trains_two_steps(make_cfg, model: str, init: str, bn: bool) -> None:
    norm = ("layer" if model == "vit" else "batch") if bn else "none"  # tokens take no BatchNorm
    cfg = make_cfg(f"model={model}", f"init={init}", f"norm={norm}")
    torch.manual_seed(0)
    shape = tuple(cfg.data.shape)
    net = build_model(model, dict(cfg.model), shape, cfg.data.num_classes, norm=norm)
    apply_init(net, dict(cfg.init), cfg.model.act)
    if (model, init, norm) == ("vit", "kaiming", "none"):  # a result, not a bug: Kaiming's gain 2 on every
        with torch.no_grad():  # residual branch and no norm multiply the stream ~4x per block
            assert F.cross_entropy(net(torch.randn(8, *shape)), torch.randint(0, 10, (8,))).item() > 100
        return
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        loss = F.cross_entropy(net(torch.randn(8, *shape)), torch.randint(0, 10, (8,)))
        loss.backward()
        assert math.isfinite(loss.item())
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()


@pytest.mark.parametrize("model", MODELS)
def test_run_writes_every_file(run, model: str) -> None:
    summary, run_dir = run(f"model={model}", "train.steps=4", "train.eval_every=2", "plots=true")
    assert summary["status"] == "ok" and summary["steps_done"] == 4
    for f in ("stats.parquet", "metrics.parquet", "summary.json", "plots/step0_std.png",
              "plots/telemetry.png", "plots/metrics.png"):
        assert (run_dir / f).exists(), f
    data = load_run(run_dir)
    required = {"step", "layer", "layer_idx", "module_type", "kind", "mean", "std",
                "min", "max", "zero_frac", "nonfinite"}
    assert required <= set(data.stats.columns)
    assert {"act", "grad", "weight", "weight_grad", "update"} <= set(data.stats["kind"])
    assert not data.hist.empty and {"bin", "lo", "hi", "count"} <= set(data.hist.columns)
    assert data.stats["step"].min() == 0
    assert {"step", "loss", "accuracy", "lr", "step_time", "val_loss", "val_accuracy"} <= set(data.metrics.columns)
    assert list(data.metrics["step"]) == [0, 1, 2, 3]
    assert data.config["model"]["name"] == model  # config travels in the parquet metadata
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["versions"]["torch"] == torch.__version__
    assert on_disk["params"] > 0 and on_disk["macs"] > 0
    assert math.isfinite(on_disk["final"]["val_loss"])


def test_probe_takes_one_forward_backward_and_no_update(run) -> None:
    summary, run_dir = run("model=mlp", "train.steps=0")
    data = load_run(run_dir)
    assert summary["status"] == "ok" and summary["steps_done"] == 0
    assert list(data.metrics["step"]) == [0]
    assert set(data.stats["step"]) == {0}


def test_same_seed_same_stats(run) -> None:
    a = load_run(run("seed=3", "train.steps=3")[1]).stats
    b = load_run(run("seed=3", "train.steps=3")[1]).stats
    c = load_run(run("seed=4", "train.steps=3")[1]).stats
    pd.testing.assert_frame_equal(a, b)
    assert not a["std"].equals(c["std"])


def test_telemetry_off_records_metrics_only(run) -> None:
    summary, run_dir = run("telemetry=off", "train.steps=3")
    assert summary["status"] == "ok"
    data = load_run(run_dir)
    assert data.stats.empty and len(data.metrics) == 3


def test_parts_are_flushed_during_the_run(run) -> None:
    _, run_dir = run("telemetry=full", "train.steps=7", "telemetry.flush_every=2")
    parts = sorted((run_dir / "stats.parquet").glob("part-*.parquet"))
    assert len(parts) == 4  # 7 logged steps in parts of 2: 2+2+2+1
    assert sorted(load_run(run_dir).stats["step"].unique()) == list(range(7))


def test_diverging_training_is_a_result(run) -> None:
    summary, run_dir = run("model=mlp", "init=normal", "init.std=3.0", "optim.lr=1e6",
                           "train.steps=30", "telemetry.first=1", "telemetry.every=1000", "plots=true")
    assert summary["status"] == "diverged"
    d = summary["diverged"]
    assert 0 < d["step"] < 30
    data = load_run(run_dir)
    assert d["step"] in set(data.stats["step"])  # the unscheduled step was looked at again
    assert data.metrics["step"].max() == d["step"]
    assert (run_dir / "plots" / "metrics.png").exists()


def test_the_last_line_says_held_out_results_and_where(run, caplog) -> None:
    """The run's last line: held-out loss and accuracy and the training loss over the last
    steps, each labelled, and the run directory, whatever the status."""
    import logging

    from initlab.app.study import final_words

    with caplog.at_level(logging.INFO, logger="initlab"):
        _, run_dir = run("train.steps=4", "data.val_size=16")
    last = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done")][-1]
    assert last.startswith("done    status=ok held-out loss=") and "held-out accuracy=" in last
    assert "training loss (last 4 steps)=" in last and last.endswith(f"-> {run_dir}")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="initlab"):
        _, run_dir = run("model=mlp", "model.depth=40", "model.act=linear", "init=normal", "init.std=1.0",
                         "data.shape=[256]", "train.steps=0")
    last = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done")][-1]
    assert last.startswith("done    status=diverged") and last.endswith(f"-> {run_dir}")
    assert final_words({"loss": 2.3}) == "no loss recorded (a probe at init)"
