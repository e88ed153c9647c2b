"""probe.seeds=N: step 0 over N weight draws, same batch, with the spread."""

import numpy as np
import pandas as pd
import pytest

from initlab.store import load_run

MLP = ["model=mlp", "model.depth=6", "model.width=64", "data.shape=[64]", "train.batch_size=32"]


def test_probe_repeats_step0_over_seeds_and_reports_the_spread(run) -> None:
    summary, run_dir = run(*MLP, "init=kaiming", "train.steps=0", "probe.seeds=4", "seed=7")
    data = load_run(run_dir)
    probe = data.probe
    assert sorted(probe["seed"].unique()) == [7, 8, 9, 10]
    assert summary["probe"]["seeds"] == [7, 8, 9, 10]
    # the run's own seed is the same draw on the same batch: identical step-0 statistics
    mine = probe[probe.seed == 7].set_index(["kind", "layer_idx", "param"])["std"]
    main = data.stats[data.stats.step == 0].set_index(["kind", "layer_idx", "param"])["std"]
    joined = pd.concat([mine, main], axis=1, keys=["probe", "run"]).dropna()
    assert len(joined) == len(mine) and np.allclose(joined["probe"], joined["run"], rtol=1e-6)
    # other seeds are other draws
    other = probe[(probe.seed == 8) & (probe.kind == "act")]["std"].to_numpy()
    assert not np.allclose(other, probe[(probe.seed == 7) & (probe.kind == "act")]["std"].to_numpy())
    # the summary's spread is the spread of the per-seed depth ratios
    ratios = []
    for _, g in probe[(probe.kind == "act") & probe.module_type.eq("Linear")].groupby("seed"):
        g = g.sort_values("layer_idx")
        ratios.append(g["std"].iloc[-1] / g["std"].iloc[0])
    got = summary["probe"]["act_std_last_over_first"]
    assert got["mean"] == pytest.approx(np.mean(ratios)) and got["sd"] == pytest.approx(np.std(ratios, ddof=1))
    assert got["min"] <= got["mean"] <= got["max"] and got["n"] == 4
    assert (run_dir / "plots" / "probe.png").exists()


def test_probe_after_training_uses_the_initial_weights(run) -> None:
    summary, run_dir = run(*MLP, "train.steps=3", "probe.seeds=2")
    probe = load_run(run_dir).probe
    assert sorted(probe["seed"].unique()) == [0, 1]
    assert set(probe["kind"]) >= {"act", "grad", "weight", "weight_grad"} and "update" not in set(probe["kind"])


def test_probe_seeds_must_be_positive(run) -> None:
    from initlab.errors import InitlabError

    with pytest.raises(InitlabError, match="probe.seeds"):
        run(*MLP, "probe.seeds=0")
