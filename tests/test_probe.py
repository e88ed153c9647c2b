"""probe.seeds=N: step 0 over N weight draws, same batch, with the spread."""

import numpy as np
import pandas as pd
import pytest

from initlab.rundir.store import load_run

MLP = ["model=mlp", "model.depth=6", "model.width=64", "data.shape=[64]", "train.batch_size=32"]


def test_probe_repeats_step0_over_seeds_and_reports_the_spread(run) -> None:
    summary, run_dir = run(*MLP, "init=kaiming", "train.steps=0", "probe.seeds=4", "seed=7", "plots=true")
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


KEY = ["seed", "kind", "layer_idx", "param"]
EXACT = ["numel", "nonfinite"]
CLOSE = ["mean", "std", "min", "max", "zero_frac", "dead_frac", "dead_units", "norm", "ratio", "absmax"]


@pytest.mark.parametrize("arch", [MLP, ["model=conv4"], ["model=conv4", "bn=true"], ["model=conv4", "norm=group"],
                                  [*MLP, "norm=rms"]], ids=["mlp", "conv4", "conv4_bn", "conv4_gn", "mlp_rms"])
@pytest.mark.parametrize("start", ["auto", "kernels"])  # 3 draws: tensor ops on both sides; or the CPU kernels
def test_the_stacked_probe_gives_the_per_draw_rows(run, arch, start, monkeypatch) -> None:
    """One vmapped pass over the stacked draws and one draw at a time: the same rows (kinds,
    layers, parameters, BatchNorm rows), the same numbers within float32 tolerance."""
    from initlab.telemetry import reducers

    monkeypatch.setattr(reducers, "START", start)
    summary, stacked_dir = run(*arch, "train.steps=0", "probe.seeds=3", "plots=false")
    ref_summary, ref_dir = run(*arch, "train.steps=0", "probe.seeds=3", "plots=false", "probe.stacked=false")
    assert summary["probe"]["path"] == "stacked" and ref_summary["probe"]["path"].startswith("per draw")
    got, ref = load_run(stacked_dir).probe, load_run(ref_dir).probe
    assert len(got) == len(ref) and not got.duplicated(KEY).any()
    _assert_same_rows(got, ref)
    if "bn=true" in arch:
        assert {"bn_running_mean", "bn_batch_var"} <= set(got["kind"])
    if "norm=group" in arch:
        assert {"norm_mean", "norm_var"} <= set(got["kind"])
    if "norm=rms" in arch:  # RMSNorm divides by the root mean square: no mean row
        assert "norm_var" in set(got["kind"]) and "norm_mean" not in set(got["kind"])
    # the headline the summary reports is the same
    for key in ("act_std_last_over_first", "grad_std_first_over_last"):
        assert summary["probe"][key]["mean"] == pytest.approx(ref_summary["probe"][key]["mean"], rel=1e-4)


def test_models_the_stacked_probe_cannot_take_run_one_draw_at_a_time() -> None:
    """Dropout draws a mask per draw: the stacked path says so and the per-draw path runs."""
    import torch
    from torch import nn

    from initlab.probe import probe
    from initlab.telemetry import TelemetryConfig

    def make(init: str, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))

    batch = (torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
    table, how = probe(make, batch, [("default", 0), ("default", 1)], TelemetryConfig(), torch.device("cpu"))
    assert how.startswith("per draw") and "Dropout" in how and "random mask" in how
    assert sorted(table["seed"].unique()) == [0, 1] and (table["kind"] == "act").sum() == 8


def test_probe_inits_draws_every_scheme_in_one_pass(run) -> None:
    """probe.inits=[...]: the same seeds under each scheme, side by side in one table and one
    figure; the run's own scheme gives the run's own step 0."""
    summary, run_dir = run(*MLP, "init=kaiming", "train.steps=0", "probe.seeds=2", "probe.inits=[kaiming,normal]",
                           "plots=true")
    data = load_run(run_dir)
    probe = data.probe
    assert summary["probe"]["path"] == "stacked"
    assert set(probe.groupby("init")["seed"].unique().apply(tuple)) == {(0, 1)}
    assert set(summary["probe"]["inits"]) == {"kaiming", "normal"}
    mine = probe[(probe.init == "kaiming") & (probe.seed == 0)].set_index(["kind", "layer_idx", "param"])["std"]
    main = data.stats[data.stats.step == 0].set_index(["kind", "layer_idx", "param"])["std"]
    assert np.allclose(mine.sort_index(), main.reindex(mine.sort_index().index), rtol=1e-5)
    # N(0, 0.01^2) weights shrink the activations layer after layer; Kaiming keeps them
    ratio = {k: v["act_std_last_over_first"]["mean"] for k, v in summary["probe"]["inits"].items()}
    assert ratio["normal"] < 1e-3 < 0.2 < ratio["kaiming"] < 5, ratio
    assert (run_dir / "plots" / "probe.png").exists()


def test_the_stacked_probe_on_the_queued_path_gives_the_same_rows(monkeypatch) -> None:
    """The CUDA/MPS reduction (one queued tensor-op reduction over the stack per tensor),
    forced on the CPU: the same rows as one draw at a time through the CPU kernels."""
    import torch
    from torch import nn

    from initlab.nn.norms import GroupNorm
    from initlab.probe import probe
    from initlab.telemetry import TelemetryConfig, reducers

    def make(init: str, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        # no conv bias before the BN (as in the zoo): its gradient is rounding noise around 0
        return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 36, 8), GroupNorm(2, 8), nn.ReLU(), nn.Linear(8, 3))

    batch = (torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2]))
    draws = [("default", s) for s in range(3)]
    monkeypatch.setattr(reducers, "START", "kernels")
    ref, _ = probe(make, batch, draws, TelemetryConfig(), torch.device("cpu"), stacked=False)
    monkeypatch.setattr(reducers, "START", "tensor")  # as on a GPU: no CPU kernels for the stack
    got, how = probe(make, batch, draws, TelemetryConfig(), torch.device("cpu"))
    assert how == "stacked" and len(got) == len(ref) and (got["kind"] == "norm_var").sum() == 3
    _assert_same_rows(got, ref, atol=1e-7)  # float32 sums in another order: |mean| ~ 1e-9 differs by 1e-8


def test_the_stacked_probe_in_chunks_gives_the_same_rows(monkeypatch) -> None:
    """Draws that do not fit one chunk are stacked a chunk at a time (here one draw each, with a
    BatchNorm's running statistics): the same rows as one draw at a time."""
    import torch
    from torch import nn

    from initlab.probe import probe
    from initlab.telemetry import TelemetryConfig, stacked

    def make(init: str, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    batch = (torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2]))
    draws = [("default", s) for s in range(3)]
    ref, _ = probe(make, batch, draws, TelemetryConfig(), torch.device("cpu"), stacked=False)
    calls = []
    real = torch.func.stack_module_state
    monkeypatch.setattr(torch.func, "stack_module_state", lambda group: calls.append(len(group)) or real(group))
    monkeypatch.setattr(stacked, "MEMORY_BUDGET", 1)  # less than one draw: a chunk of one
    got, how = probe(make, batch, draws, TelemetryConfig(), torch.device("cpu"))
    assert how == "stacked" and calls == [1, 1, 1] and {"bn_running_mean", "bn_batch_var"} <= set(got["kind"])
    _assert_same_rows(got, ref)


def _assert_same_rows(got, ref, atol: float = 0.0) -> None:
    j = got.merge(ref, on=KEY, how="outer", suffixes=("", "_ref"), validate="one_to_one", indicator=True)
    assert (j["_merge"] == "both").all()  # the same rows, no row only on one side
    assert (j["layer"] == j["layer_ref"]).all() and (j["module_type"] == j["module_type_ref"]).all()
    for col in EXACT:
        assert (j[col] == j[f"{col}_ref"]).all(), col
    for col in CLOSE:  # NaN exactly where the reference has NaN; numbers to float32 accuracy
        a, b = j[col].to_numpy(float), j[f"{col}_ref"].to_numpy(float)
        assert (np.isnan(a) == np.isnan(b)).all(), col
        scale = np.abs(b) + (j["std_ref"].to_numpy(float) if col == "mean" else 0) + 1e-12
        assert np.nanmax((np.abs(a - b) - atol).clip(0) / scale) < 1e-4, col


@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "per draw"])
def test_a_ctrl_c_python_dropped_still_stops_the_probe(stacked: bool, monkeypatch) -> None:
    """A Ctrl-C whose KeyboardInterrupt Python dropped (landing in numba's loading, say) is only
    counted (signals.SIGNALLED): the probe stops at the next draw instead of running all of
    them (a million-draw probe once ran on for minutes in CI)."""
    import signal

    import torch
    from torch import nn

    from initlab import signals
    from initlab.probe import probe
    from initlab.telemetry import TelemetryConfig

    built = []

    def make(init: str, seed: int) -> nn.Module:
        built.append(seed)
        if seed == 2:
            signals.SIGNALLED.append(signal.SIGINT)  # counted by the handler, its exception dropped
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    monkeypatch.setattr(signals, "SIGNALLED", list(signals.SIGNALLED))
    batch = (torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(KeyboardInterrupt):
        probe(make, batch, [("default", s) for s in range(1000)], TelemetryConfig(), torch.device("cpu"), stacked)
    assert len(built) <= 4  # draw 2 was built, the next check stopped it
