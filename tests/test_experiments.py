"""The classic studies, one command each: every shipped experiment runs as a user types it
(`initlab experiment=NAME`, a multirun from its own config) and shows its headline number.
Plots are off to save time; everything else is the shipped config."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli


def sweep(name: str, tmp_path: Path, *extra: str) -> pd.DataFrame:
    out = tmp_path / name
    proc = run_cli([f"experiment={name}", f"hydra.sweep.dir={out}", "plots=false", "train.progress=false", *extra],
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_parquet(out / "sweep.parquet")
    df["summary"] = [json.loads((out / p / "summary.json").read_text()) for p in df["path"]]
    return df


def one(df: pd.DataFrame, **where: object) -> pd.Series:
    rows = df
    for k, v in where.items():
        rows = rows[rows[k] == v]
    assert len(rows) == 1, (where, len(rows))
    return rows.iloc[0]


def test_seed_mlp100(tmp_path: Path) -> None:
    df = sweep("seed_mlp100", tmp_path)
    assert len(df) == 6
    n01 = one(df, **{"init.std": 1.0, "model.act": "linear"})
    assert n01["status"] == "diverged" and n01["diverged_layer"] == "layers.31"  # float32 overflows at x16/layer
    assert 14 < n01["act_std_first"] < 18
    assert one(df, **{"init.std": 1.0, "model.act": "relu"})["status"] == "diverged"
    tanh = one(df, **{"init.std": 1.0, "model.act": "tanh"})  # finite loss, gradients overflow going back
    assert tanh["status"] == "diverged" and tanh["diverged_step"] == 0
    assert tanh["grad_std_ratio_first_last"] == np.inf  # non-finite, not a 1e39 from the finite layers
    assert 0.8 < one(df, **{"init.std": 0.0625, "model.act": "linear"})["act_std_ratio"] < 1.25  # N(0,1/n) holds
    assert one(df, **{"init.std": 0.0625, "model.act": "tanh"})["act_std_ratio"] < 0.2  # tanh slowly vanishes
    assert one(df, **{"init.std": 0.0625, "model.act": "relu"})["act_std_ratio"] < 1e-12  # 2^-50: ReLU halves it


def test_fastai_conv4(tmp_path: Path) -> None:
    df = sweep("fastai_conv4", tmp_path)
    default, kaiming = one(df, init="default"), one(df, init="kaiming")
    assert default["act_std_ratio"] < 0.1 and default["flag_vanishing_act"]
    assert kaiming["act_std_ratio"] > 0.4 and not kaiming.get("flag_vanishing_act", False)
    # no MNIST here: the real digits stand in; both train, Kaiming's training loss is the lower
    # (seed 0: 0.023 vs 0.063; over seeds 0-2 the ranges separate, the held-out ones do not)
    assert default["summary"]["data"]["name"] == "digits (fallback for mnist)"
    assert kaiming["loss_avg"] < 0.7 * default["loss_avg"]
    assert min(default["val_accuracy"], kaiming["val_accuracy"]) > 0.85


def test_glorot_tanh(tmp_path: Path) -> None:
    df = sweep("glorot_tanh", tmp_path)
    default = one(df, init="default")["summary"]["probe"]["act_std_last_over_first"]
    xavier = one(df, init="xavier")["summary"]["probe"]["act_std_last_over_first"]
    assert default["n"] == xavier["n"] == 5
    assert default["max"] < 0.12 and xavier["min"] > 0.3  # over 5 seeds, the spreads do not overlap


@pytest.mark.slow  # 35-120 s on the 2-core CPU: `make test-all` runs it
def test_he_deep_relu(tmp_path: Path) -> None:
    df = sweep("he_deep_relu", tmp_path)
    xavier, kaiming = one(df, init="xavier"), one(df, init="kaiming")
    assert xavier["act_std_ratio"] < 1e-3 and xavier["flag_vanishing_act"]
    assert 0.3 < kaiming["act_std_ratio"] < 2 and not kaiming.get("flag_vanishing_act", False)
    # on the stream neither leaves chance (ln 10 = 2.303) in 300 steps at lr 0.01: the studies page says
    # "no difference at this budget" (the 2.02 once quoted for Kaiming was a fixed set memorised)
    assert xavier["loss_avg"] > 2.25 and kaiming["loss_avg"] > 2.2


@pytest.mark.slow  # 35-120 s on the 2-core CPU: `make test-all` runs it
def test_d2l_bn_lenet(tmp_path: Path) -> None:
    df = sweep("d2l_bn_lenet", tmp_path, f"data.root={tmp_path / 'no-data'}")
    plain, bn = one(df, bn=False), one(df, bn=True)
    assert plain["summary"]["data"]["name"] == "digits (fallback for fashion_mnist)"
    assert plain["loss_avg"] > 2.25 and plain["val_accuracy"] < 0.2  # the sigmoid LeNet stays at chance
    assert bn["loss_avg"] < 0.3 and bn["val_accuracy"] > 0.9  # with BN it learns the real digits


@pytest.mark.slow  # 35-120 s on the 2-core CPU: `make test-all` runs it
def test_resnet_bn_ablation(tmp_path: Path) -> None:
    df = sweep("resnet_bn_ablation", tmp_path, f"data.root={tmp_path / 'no-data'}")
    assert len(df) == 4
    assert one(df, bn=False, init="default")["act_std_ratio"] < 0.1  # default init: residual nets shrink
    assert one(df, bn=False, init="kaiming")["act_std_ratio"] > 3  # Kaiming: every add stacks variance
    assert one(df, bn=False, init="kaiming")["status"] == "diverged"
    assert one(df, bn=False, init="default")["loss_avg"] > 2.2  # shrunk: it does not leave chance
    for init in ("default", "kaiming"):
        row = one(df, bn=True, init=init)
        assert 0.3 < row["act_std_ratio"] < 2 and row["status"] == "ok"
        assert row["loss_avg"] < 0.2 and row["val_accuracy"] > 0.9  # with BN both train (real digits)


@pytest.mark.slow  # 35-120 s on the 2-core CPU: `make test-all` runs it
def test_bn_position(tmp_path: Path) -> None:
    df = sweep("bn_position", tmp_path)
    assert len(df) == 6
    by = df.groupby("model.norm_position")
    mean_ratio = by["act_std_ratio"].mean()
    assert mean_ratio["after_act"] > mean_ratio["before_act"] + 0.15
    # training: the studies page says "no difference at this budget"; this fails when the seeds separate
    lo, hi = by["loss_avg"].min(), by["loss_avg"].max()
    assert lo["after_act"] < hi["before_act"] and lo["before_act"] < hi["after_act"]


@pytest.mark.slow  # 35-120 s on the 2-core CPU: `make test-all` runs it
def test_lsuv(tmp_path: Path) -> None:
    df = sweep("lsuv", tmp_path)
    lsuv, default, kaiming = one(df, init="lsuv"), one(df, init="default"), one(df, init="kaiming")
    records = [r for r in lsuv["summary"]["init"] if "lsuv_iters" in r]
    assert len(records) == 21 and all(r["lsuv_converged"] for r in records)
    assert 0.9 < lsuv["act_std_ratio"] < 1.1
    assert default["grad_std_ratio_first_last"] < 1e-4 and default["flag_vanishing_grad"]
    assert lsuv["grad_std_ratio_first_last"] > 5  # unit forward variance, a backward gain > 1 (seed 0: 14.7)
    # on the stream after 300 steps: leaky Kaiming < LSUV < default (seeds 0-2 separate by >= 0.06)
    assert kaiming["loss_avg"] < lsuv["loss_avg"] - 0.03 and lsuv["loss_avg"] < default["loss_avg"] - 0.03


def last_quarter_loss(df: pd.DataFrame, tmp_path: Path, name: str) -> pd.Series:
    """Each job's training loss averaged over its last quarter of steps: at a fixed sample
    budget the same samples seen at every batch size (one minibatch of 2 is noise)."""
    from initlab import load_run

    def one_job(path: str) -> float:
        m = load_run(tmp_path / name / path).metrics
        return float(m.loc[m["step"] >= len(m) * 3 // 4, "loss"].mean())

    return df["path"].map(one_job)


@pytest.mark.slow  # about 3 min on the 2-core CPU (4096 steps at batch 2)
def test_small_batch_norm(tmp_path: Path) -> None:
    df = sweep("small_batch_norm", tmp_path)
    df["train_q4"] = last_quarter_loss(df, tmp_path, "small_batch_norm")
    loss = df.pivot(index="train.batch_size", columns="norm", values="train_q4")
    assert list(loss.index) == [2, 4, 16, 64] and (df["steps_done"] * df["train.batch_size"] == 8192).all()
    # BatchNorm's training loss degrades as the batch shrinks; GroupNorm's and LayerNorm's do not
    assert loss.loc[2, "batch"] > loss.loc[64, "batch"] + 0.15
    assert loss["batch"].is_monotonic_decreasing
    for norm in ("group", "layer"):
        assert loss.loc[2, norm] < loss.loc[64, norm] + 0.05
    assert loss.loc[2, "batch"] > max(loss.loc[2, "group"], loss.loc[2, "layer"]) + 0.05
    assert loss.loc[64, "batch"] < min(loss.loc[64, "group"], loss.loc[64, "layer"]) - 0.05


def test_norm_zoo(tmp_path: Path) -> None:
    df = sweep("norm_zoo", tmp_path)
    by = df.set_index("norm")
    assert set(by.index) == {"none", "batch", "group", "layer", "instance", "rms"} and (by["status"] == "ok").all()
    # every norm re-anchors the scale: the default init's vanishing activations are gone
    assert by.loc["none", "act_std_ratio"] < 0.1
    assert all(0.4 < by.loc[n, "act_std_ratio"] < 1.5 for n in by.index if n != "none")
    # BatchNorm trains fastest (over seeds 0-2 its range separates from every other norm's)
    assert by.loc["batch", "loss_avg"] < min(by.loc[n, "loss_avg"] for n in by.index if n != "batch") - 0.03


def mlp_grad_ratios(run_dir: Path) -> np.ndarray:
    """Per weight draw at init (probe.parquet): the MLP blocks' last Linear (`mlp.fc2`), its
    weight-gradient norm in the last block over the first block's."""
    p = pd.read_parquet(run_dir / "probe.parquet")
    g = p[(p.kind == "weight_grad") & (p.param == "weight") & p.layer.str.endswith("mlp.fc2")]
    g = g.sort_values("layer_idx").groupby("seed")["norm"]
    return (g.last() / g.first()).to_numpy()


@pytest.mark.slow  # about 4 min on the 2-core CPU
def test_ln_position(tmp_path: Path) -> None:
    df = sweep("ln_position", tmp_path)
    assert (df["status"] == "ok").all()
    df["train_q4"] = last_quarter_loss(df, tmp_path, "ln_position")
    first = df[df["optim.warmup_steps"] == 0].set_index(["model.depth", "model.norm_position"])
    ratios = {key: mlp_grad_ratios(tmp_path / "ln_position" / path) for key, path in first["path"].items()}
    for depth in (6, 12):  # over 3 draws each, the ranges do not overlap: post-LN's is the higher
        assert len(ratios[(depth, "post")]) == 3
        assert ratios[(depth, "post")].min() > 1.5 * ratios[(depth, "pre")].max()
    assert np.median(ratios[(12, "pre")]) < np.median(ratios[(6, "pre")])  # pre-LN's last block: less with depth
    loss = df.set_index(["model.depth", "model.norm_position", "optim.warmup_steps"])["train_q4"]
    # at lr 0.003 post-LN without warm-up stays at chance (ln 10 = 2.30), with it trains; pre-LN
    # trains without (measured on the stream: 2.30 / 1.99-2.02 / 2.00-2.07 at depths 6 and 12)
    for depth in (6, 12):
        assert loss[(depth, "post", 0)] > 2.2
        assert loss[(depth, "post", 75)] < loss[(depth, "post", 0)] - 0.1
        assert loss[(depth, "pre", 0)] < loss[(depth, "post", 0)] - 0.1


@pytest.mark.parametrize("name", ["seed_mlp100", "fastai_conv4", "glorot_tanh", "he_deep_relu", "d2l_bn_lenet",
                                  "resnet_bn_ablation", "bn_position", "lsuv", "small_batch_norm", "norm_zoo",
                                  "ln_position"])
def test_every_experiment_is_a_documented_multirun(name: str) -> None:
    conf = (Path(__file__).parents[1] / "conf" / "experiment" / f"{name}.yaml").read_text()
    assert "mode: MULTIRUN" in conf and f"initlab experiment={name}" in conf
    page = (Path(__file__).parents[1] / "docs" / "studies.md").read_text()
    assert f"experiment={name}" in page


# Fast shrunk cases of the slow studies above: each experiment as shipped, at step 0 or a short
# budget, asserting its step-0 headline (the slow tests keep the training claims).

def test_he_deep_relu_at_init(tmp_path: Path) -> None:
    df = sweep("he_deep_relu", tmp_path, "train.steps=0")
    xavier, kaiming = one(df, init="xavier"), one(df, init="kaiming")
    assert xavier["act_std_ratio"] < 1e-3 and xavier["flag_vanishing_act"]  # 2^-15 after 30 ReLUs
    assert 0.3 < kaiming["act_std_ratio"] < 2 and not kaiming.get("flag_vanishing_act", False)


def test_resnet_bn_ablation_at_init(tmp_path: Path) -> None:
    df = sweep("resnet_bn_ablation", tmp_path, f"data.root={tmp_path / 'no-data'}", "train.steps=0",
               "train.batch_size=32")
    assert one(df, bn=False, init="default")["act_std_ratio"] < 0.1  # default init: residual nets shrink
    assert one(df, bn=False, init="kaiming")["act_std_ratio"] > 3  # Kaiming: every add stacks variance
    for init in ("default", "kaiming"):
        assert 0.3 < one(df, bn=True, init=init)["act_std_ratio"] < 2  # BN re-anchors every block


def test_bn_position_at_init(tmp_path: Path) -> None:
    df = sweep("bn_position", tmp_path, "train.steps=0")
    mean_ratio = df.groupby("model.norm_position")["act_std_ratio"].mean()
    assert mean_ratio["after_act"] > mean_ratio["before_act"] + 0.15  # after the ReLU: a zero-mean unit input


def test_lsuv_at_init_and_the_vanishing_grad_flag(tmp_path: Path) -> None:
    df = sweep("lsuv", tmp_path, "train.steps=0")
    lsuv, default = one(df, init="lsuv"), one(df, init="default")
    records = [r for r in lsuv["summary"]["init"] if "lsuv_iters" in r]
    assert len(records) == 21 and all(r["lsuv_converged"] for r in records)
    assert 0.9 < lsuv["act_std_ratio"] < 1.1
    assert default["grad_std_ratio_first_last"] < 1e-4 and default["flag_vanishing_grad"]
    assert "vanishing_grad" in default["flags"].split(",")
    assert lsuv["grad_std_ratio_first_last"] > 5 and not lsuv.get("flag_vanishing_grad", False)


def test_d2l_bn_lenet_shrunk(tmp_path: Path) -> None:
    """60 steps: with BN the sigmoid LeNet already leaves chance on the real digits, without it not."""
    df = sweep("d2l_bn_lenet", tmp_path, f"data.root={tmp_path / 'no-data'}", "train.steps=60", "train.eval_every=0")
    plain, bn = one(df, bn=False), one(df, bn=True)
    assert plain["loss_avg"] > 2.2 and bn["loss_avg"] < plain["loss_avg"] - 0.5
