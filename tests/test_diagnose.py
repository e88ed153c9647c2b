"""Diagnosis flags fire where the lessons say something is wrong, and only there."""

import json

from tests.conftest import only_run_dir, run_cli

DEEP_RELU = ["model=mlp", "model.depth=30", "model.width=256", "model.act=relu", "data.shape=[256]",
             "train.steps=0", "train.batch_size=64"]


def _flags(summary: dict) -> set[str]:
    return {f["flag"] for f in summary["flags"]}


def test_xavier_on_deep_relu_vanishes_kaiming_does_not(run) -> None:
    xavier, _ = run(*DEEP_RELU, "init=xavier")
    kaiming, _ = run(*DEEP_RELU, "init=kaiming")
    assert "vanishing_act" in _flags(xavier)
    assert _flags(kaiming) == set(), kaiming["flags"]


def test_n01_explodes_and_diverges(run) -> None:
    summary, _ = run("model=mlp", "model.depth=10", "model.width=256", "model.act=linear", "data.shape=[256]",
                     "train.steps=0", "init=normal", "init.std=1.0")
    assert {"exploding_act", "exploding_grad"} <= _flags(summary)


def test_too_large_learning_rate_is_flagged(run) -> None:
    """A step far too large for the weights: the median update:data ratio is over 0.1, while the
    run itself stays finite (the flag is the warning before the divergence)."""
    summary, _ = run("model=mlp", "data.shape=[64]", "init=kaiming", "optim=sgd", "optim.lr=1.0",
                     "optim.momentum=0.0", "train.steps=3", "telemetry=full")
    assert summary["status"] == "ok"
    assert "update_ratio" in _flags(summary), summary["flags"]
    summary, _ = run("model=mlp", "data.shape=[64]", "init=kaiming", "optim=sgd", "optim.lr=0.01",
                     "optim.momentum=0.0", "train.steps=3", "telemetry=full")
    assert "update_ratio" not in _flags(summary)


def test_saturated_layers_are_flagged_dead(run) -> None:
    """tanh after N(0, 3²) weights on 256 inputs: pre-activations of std ~50, nearly every unit at ±1."""
    saturated, _ = run("model=mlp", "model.depth=3", "model.act=tanh", "init=normal", "init.std=3.0",
                       "data.shape=[256]", "train.steps=0")
    dead = next(f for f in saturated["flags"] if f["flag"] == "dead_layers")
    assert len(dead["layers"]) == 3 and all(layer.startswith("layers.") for layer in dead["layers"])
    healthy, _ = run("model=mlp", "model.depth=3", "model.act=tanh", "init=xavier", "data.shape=[256]",
                     "train.steps=0")
    assert "dead_layers" not in _flags(healthy)


def test_flags_are_printed_and_stored(tmp_path) -> None:
    proc = run_cli([*DEEP_RELU, "init=xavier"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "vanishing_act" in proc.stderr
    summary = json.loads((only_run_dir(tmp_path / "outputs") / "summary.json").read_text())
    assert "vanishing_act" in _flags(summary)


def test_non_finite_statistics_give_a_non_finite_ratio_and_say_what_went_non_finite() -> None:
    """Gradients that overflow in some layers: the depth ratio is inf (the scale is lost),
    not the ratio of the layers that stayed finite; the diverged flag names a gradient."""
    import numpy as np
    import pandas as pd

    from initlab.diagnose import depth_ratio, diagnose

    rows = [{"step": 0, "kind": k, "layer_idx": i, "layer": f"l{i}", "module_type": "Linear", "std": std, "param": "", "ratio": np.nan,
             "nonfinite": bad} for k in ("act", "grad")
            for i, (std, bad) in enumerate([(1.0, 0), (np.nan, 62), (1e30, 0), (0.5, 0)])]
    stats = pd.DataFrame(rows)
    assert depth_ratio(stats, "grad") == np.inf and depth_ratio(stats, "act") == np.inf
    finite = stats.assign(std=[1.0, 2.0, 3.0, 4.0] * 2, nonfinite=0)
    assert depth_ratio(finite, "act") == 4.0
    summary = {"status": "diverged", "diverged": {"step": 0, "loss": None, "layer": "l1", "kind": "grad"}}
    flags = {f["flag"]: f for f in diagnose(stats, summary)}
    assert flags["diverged"]["detail"] == "non-finite grad at step 0; first non-finite layer l1"
    assert "non-finite values" in flags["exploding_grad"]["detail"] and flags["exploding_grad"]["ratio"] == np.inf
