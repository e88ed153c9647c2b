"""The published phenomena, asserted numerically."""

import numpy as np
import pandas as pd

from initlab.rundir.store import load_run
from tests.conftest import only_run_dir, run_cli

LESSON = ["model=mlp", "model.depth=100", "model.width=256", "model.act=linear", "data=synthetic",
          "data.shape=[256]", "train.steps=0", "train.batch_size=16"]


def _linear_act_std(stats: pd.DataFrame) -> pd.Series:
    d = stats[(stats.step == 0) & (stats.kind == "act") & (stats.module_type == "Linear")]
    return d.sort_values("layer_idx").set_index("layer_idx")["std"]


def test_100_layers_n01_explode_to_nonfinite_within_about_30(tmp_path) -> None:
    """The lesson's command, verbatim: N(0,1) weights multiply the std by sqrt(256)=16 per layer."""
    proc = run_cli([*LESSON, "init=normal", "init.std=1.0"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # non-finite values are a result, not a crash
    run = load_run(only_run_dir(tmp_path / "outputs"))
    std = _linear_act_std(run.stats)
    assert 12 < std[0] < 20  # about 16
    first_bad = int(std[~np.isfinite(std)].index.min())
    assert 28 <= first_bad <= 34
    assert run.summary["status"] == "diverged"
    assert run.summary["diverged"]["step"] == 0
    assert 28 <= run.summary["diverged"]["layer_idx"] <= 34
    assert (run.path / "plots" / "step0_std.png").exists()


def test_100_layers_scaled_by_one_over_sqrt_n_stay_near_one(run) -> None:
    summary, run_dir = run(*LESSON, "init=normal", "init.std=0.0625")  # 1/sqrt(256)
    std = _linear_act_std(load_run(run_dir).stats)
    assert summary["status"] == "ok"
    assert len(std) == 101 and ((std > 0.5) & (std < 2)).all(), std.describe()


def test_conv4_default_init_vanishes_relative_to_kaiming(run) -> None:
    def last_conv_std(init: str) -> float:
        _, run_dir = run("model=conv4", f"init={init}", "train.steps=0", "train.batch_size=64")
        s = load_run(run_dir).stats
        convs = s[(s.kind == "act") & (s.module_type == "Conv2d")]
        return float(convs.sort_values("layer_idx")["std"].iloc[-1])

    default, kaiming = last_conv_std("default"), last_conv_std("kaiming")
    assert kaiming / default >= 10, (default, kaiming)
