"""The mean-field prediction beside the measurement."""

import math

import numpy as np
import pytest

from initlab.rundir.store import load_run
from initlab.theory import gaussian_moments

MLP10 = ["model=mlp", "model.depth=10", "model.width=256", "model.act=relu", "data.shape=[256]",
         "train.steps=0", "train.batch_size=64"]


@pytest.mark.parametrize("init", ["default", "xavier", "kaiming", "normal", "orthogonal"])
def test_predicted_std_within_1_5x_for_every_layer_of_a_10_layer_relu_mlp(run, init: str) -> None:
    """The prediction is an expectation over weight draws: per layer, the geometric mean
    of measured/predicted over three seeds is within 1.5x; a single draw may drift further
    at depth through finite width (seed 0 under kaiming reaches 0.62x at layer 18, as a
    direct simulation of that draw shows too), so single runs are held to 2x."""
    logs = []
    for seed in (0, 1, 2):
        _, run_dir = run(*MLP10, f"init={init}", f"seed={seed}")
        s = load_run(run_dir).stats
        d = s[(s.step == 0) & s.kind.isin(["act", "grad"])].sort_values(["kind", "layer_idx"])
        assert len(d) == 2 * 21 and d["theory_std"].notna().all()
        ratio = (d["std"] / d["theory_std"]).to_numpy()
        assert np.all((ratio > 0.5) & (ratio < 2)), d.assign(ratio=ratio)[["layer", "kind", "ratio"]]
        logs.append(np.log(ratio))
    geo = np.exp(np.mean(logs, axis=0))
    assert np.all((geo > 1 / 1.5) & (geo < 1.5)), geo


def test_gauss_hermite_moments_match_closed_forms() -> None:
    relu = lambda h: np.maximum(h, 0.0)  # noqa: E731
    mean, m2 = gaussian_moments(relu, 0.0, 4.0)
    assert mean == pytest.approx(2 / math.sqrt(2 * math.pi), rel=1e-2)  # sigma / sqrt(2 pi); ReLU's kink
    assert m2 == pytest.approx(2.0, rel=1e-3)  # var / 2
    _, m2_tanh = gaussian_moments(np.tanh, 0.0, 1.0)
    assert m2_tanh == pytest.approx(0.3943, abs=2e-3)  # E[tanh(Z)^2]


def test_conv_net_predicts_convs_and_skips_pooling(run) -> None:
    _, run_dir = run("model=conv4", "init=kaiming", "train.steps=0", "train.batch_size=64")
    s = load_run(run_dir).stats
    act = s[(s.step == 0) & (s.kind == "act")].set_index("module_type")
    assert act.loc["AdaptiveAvgPool2d", "theory_std"] != act.loc["AdaptiveAvgPool2d", "theory_std"]  # NaN
    convs = act.loc["Conv2d"]
    assert (convs["std"] / convs["theory_std"]).between(1 / 1.5, 1.5).all()


def test_residual_nets_get_no_prediction(run) -> None:
    _, run_dir = run("model=resnet", "model.width=4", "model.blocks=[1,1,1,1]", "train.steps=0")
    assert not (run_dir / "theory.parquet").exists()
    assert "theory_std" not in load_run(run_dir).stats
