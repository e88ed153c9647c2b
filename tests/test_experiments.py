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
    assert kaiming["final_loss"] < default["final_loss"] - 0.1


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
    assert xavier["final_loss"] > 2.25  # it does not train: chance level is ln 10 = 2.303
    assert kaiming["final_loss"] < xavier["final_loss"] - 0.2


@pytest.mark.slow  # 35-120 s on the 2-core CPU: `make test-all` runs it
def test_d2l_bn_lenet(tmp_path: Path) -> None:
    df = sweep("d2l_bn_lenet", tmp_path, f"data.root={tmp_path / 'no-data'}")
    plain, bn = one(df, bn=False), one(df, bn=True)
    assert plain["summary"]["data"]["name"] == "synthetic (fallback for fashion_mnist)"
    assert bn["final_loss"] < plain["final_loss"] - 0.5
    assert bn["grad_std_ratio_first_last"] > 100 * plain["grad_std_ratio_first_last"]


@pytest.mark.slow  # 35-120 s on the 2-core CPU: `make test-all` runs it
def test_resnet_bn_ablation(tmp_path: Path) -> None:
    df = sweep("resnet_bn_ablation", tmp_path, f"data.root={tmp_path / 'no-data'}")
    assert len(df) == 4
    assert one(df, bn=False, init="default")["act_std_ratio"] < 0.1  # default init: residual nets shrink
    assert one(df, bn=False, init="kaiming")["act_std_ratio"] > 3  # Kaiming: every add stacks variance
    for init in ("default", "kaiming"):
        row = one(df, bn=True, init=init)
        assert 0.3 < row["act_std_ratio"] < 2 and row["status"] == "ok"


@pytest.mark.slow  # 35-120 s on the 2-core CPU: `make test-all` runs it
def test_bn_position(tmp_path: Path) -> None:
    df = sweep("bn_position", tmp_path)
    assert len(df) == 6
    by = df.groupby("model.bn_position")[["final_loss", "act_std_ratio"]].mean()
    assert by.loc["after_act", "final_loss"] < by.loc["before_act", "final_loss"]
    assert by.loc["after_act", "act_std_ratio"] > by.loc["before_act", "act_std_ratio"] + 0.15


@pytest.mark.slow  # 35-120 s on the 2-core CPU: `make test-all` runs it
def test_lsuv(tmp_path: Path) -> None:
    df = sweep("lsuv", tmp_path)
    lsuv, default, kaiming = one(df, init="lsuv"), one(df, init="default"), one(df, init="kaiming")
    records = [r for r in lsuv["summary"]["init"] if "lsuv_iters" in r]
    assert len(records) == 21 and all(r["lsuv_converged"] for r in records)
    assert 0.9 < lsuv["act_std_ratio"] < 1.1
    assert default["grad_std_ratio_first_last"] < 1e-4 and default["flag_vanishing_grad"]
    assert max(lsuv["final_loss"], kaiming["final_loss"]) < default["final_loss"] - 0.5


@pytest.mark.parametrize("name", ["seed_mlp100", "fastai_conv4", "glorot_tanh", "he_deep_relu", "d2l_bn_lenet",
                                  "resnet_bn_ablation", "bn_position", "lsuv"])
def test_every_experiment_is_a_documented_multirun(name: str) -> None:
    conf = (Path(__file__).parents[1] / "conf" / "experiment" / f"{name}.yaml").read_text()
    assert "mode: MULTIRUN" in conf and f"initlab experiment={name}" in conf
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"experiment={name}" in readme
