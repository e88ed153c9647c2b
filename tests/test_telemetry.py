"""Every statistic equals a direct torch computation on known tensors."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from initlab.telemetry import (
    STATS,
    Binner,
    CpuPath,
    CpuReducer,
    HistSpec,
    Schedule,
    Telemetry,
    TelemetryConfig,
    dead_region,
    first_nonfinite,
    group_stats,
    hist_codes,
    tensor_stats,
)

THRESH = {"tanh": 0.97, "sigmoid_low": 0.03, "sigmoid_high": 0.97}


def _row(x: torch.Tensor, queued: bool, dead=None) -> np.ndarray:
    """A tensor's row on the CPU path (single-pass kernels) or the queued tensor-op path."""
    return tensor_stats(x, dead).numpy() if queued else np.array(CpuReducer(None).act_row(x, dead)[0])


def _stats(x: torch.Tensor, queued: bool = False) -> dict[str, float]:
    return dict(zip(STATS, _row(x, queued).tolist()))


BOTH_PATHS = pytest.mark.parametrize("queued", [False, True], ids=["cpu-kernels", "queued-ops"])


@BOTH_PATHS
def test_stats_match_torch(queued: bool) -> None:
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1)).clamp_min(0)
    s = _stats(x, queued)
    assert s["mean"] == pytest.approx(x.mean().item(), rel=1e-5)
    assert s["std"] == pytest.approx(x.std().item(), rel=1e-5)
    assert s["min"] == x.min().item() and s["max"] == x.max().item()
    assert s["zero_frac"] == pytest.approx((x == 0).float().mean().item())
    assert s["nonfinite"] == 0 and s["numel"] == x.numel()
    assert math.isnan(s["dead_frac"])  # not an activation: no dead region


@BOTH_PATHS
def test_huge_finite_values_keep_a_finite_std(queued: bool) -> None:
    # Float32 squares overflow above ~1.8e19; the 100-layer lesson reaches 1e37.
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 1e36
    s = _stats(x, queued)
    ref = x.double().std().item()
    assert math.isfinite(s["std"]) and s["std"] == pytest.approx(ref, rel=1e-4)
    assert s["mean"] == pytest.approx(x.double().mean().item(), rel=1e-3, abs=ref * 1e-4)


@BOTH_PATHS
def test_nonfinite_values_are_counted_and_propagate(queued: bool) -> None:
    x = torch.tensor([1.0, float("inf"), float("nan"), 0.0, -float("inf")])
    s = _stats(x, queued)
    assert s["nonfinite"] == 3
    assert s["zero_frac"] == pytest.approx(0.2)
    assert not math.isfinite(s["std"]) and not math.isfinite(s["mean"])


def _run_layer(module: nn.Module, x: torch.Tensor) -> tuple[dict, dict, torch.Tensor]:
    model = nn.Sequential(module)
    tel = Telemetry(model, TelemetryConfig(params=False, thresholds=THRESH))
    with tel.record():
        out = model(x.requires_grad_())
        out.retain_grad()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    stats, hist = tel.collect(0)
    return stats, hist, out


def test_tanh_saturation_and_dead_units() -> None:
    x = torch.randn(200, 6) * 3
    x[:, 2] = 10.0  # unit 2 is saturated on every sample
    stats, _, out = _run_layer(nn.Tanh(), x)
    act = np.flatnonzero(stats["kind"] == "act")[0]
    sat = out.detach().abs() > 0.97
    assert stats["dead_frac"][act] == pytest.approx(sat.float().mean().item())
    assert stats["dead_units"][act] == pytest.approx(1 / 6)


def test_sigmoid_saturation() -> None:
    x = torch.randn(50, 40) * 6
    stats, _, out = _run_layer(nn.Sigmoid(), x)
    a = out.detach()
    act = np.flatnonzero(stats["kind"] == "act")[0]
    assert stats["dead_frac"][act] == pytest.approx(((a < 0.03) | (a > 0.97)).float().mean().item())


def test_relu_dead_fraction_units_and_grad_stats() -> None:
    x = torch.randn(32, 5, 4, 4)
    x[:, 1] = -1.0  # channel 1 never fires
    stats, _, out = _run_layer(nn.ReLU(), x)
    act = np.flatnonzero(stats["kind"] == "act")[0]
    grad = np.flatnonzero(stats["kind"] == "grad")[0]
    assert stats["dead_frac"][act] == pytest.approx((out.detach() <= 0).float().mean().item())
    assert stats["dead_units"][act] == pytest.approx(1 / 5)
    g = out.grad
    assert stats["std"][grad] == pytest.approx(g.std().item(), rel=1e-5)
    assert stats["absmax"][grad] == pytest.approx(g.abs().max().item())
    assert stats["norm"][grad] == pytest.approx(g.norm().item(), rel=1e-5)


def test_histogram_counts_sum_to_sample_and_bins_are_fixed() -> None:
    spec = HistSpec(min_abs=1e-3, max_abs=1e3, bins_per_decade=2, sample=1000)
    x = torch.cat([torch.zeros(10), torch.full((5,), 1e-5), torch.full((7,), -5e4),
                   torch.full((3,), float("inf")), torch.full((2,), float("nan")), torch.randn(4973)])
    model = nn.Sequential(nn.Identity(), nn.Dropout(0.0))  # Identity is skipped; Dropout passes x on
    tel = Telemetry(model, TelemetryConfig(params=False, hist=spec))
    with tel.record(), torch.no_grad():
        model(x)
    stats, hist = tel.collect(0)
    sampled = x[:: max(1, -(-x.numel() // spec.sample))]
    assert hist["count"].sum() == (~torch.isnan(sampled)).sum().item()  # NaN is not binned
    lo, hi = spec.bounds()
    assert np.all(lo[:-1] <= lo[1:]) and np.all(lo <= hi) and len(lo) == spec.n_bins == 2 * 12 + 5
    zero_bin = spec.k + 2
    by_bin = dict(zip(hist["bin"], hist["count"]))
    assert by_bin.get(zero_bin, 0) == (sampled == 0).sum().item()
    assert by_bin.get(zero_bin + 1, 0) == ((sampled > 0) & (sampled < 1e-3)).sum().item()
    assert by_bin.get(zero_bin - 1, 0) == ((sampled < 0) & (sampled > -1e-3)).sum().item()
    assert by_bin.get(0, 0) == (sampled < -1e3).sum().item()  # negative overflow
    assert by_bin.get(spec.n_bins - 1, 0) == (sampled > 1e3).sum().item()  # +overflow, inf included
    # each bin holds exactly the sampled values within its bounds
    for b, c in by_bin.items():
        if b not in (zero_bin - 1, zero_bin, zero_bin + 1):
            inside = (sampled.abs() >= min(abs(lo[b]), abs(hi[b]))) & (sampled.abs() < max(abs(lo[b]), abs(hi[b])))
            same_sign = sampled > 0 if hi[b] > 0 else sampled < 0
            assert (inside & same_sign).sum().item() == c or b in (0, spec.n_bins - 1)


@pytest.mark.parametrize("spec", [HistSpec(), HistSpec(min_abs=1e-3, max_abs=5e2, bins_per_decade=3)],
                         ids=["shipped", "uneven"])
def test_cpu_lookup_binning_equals_bucketize_on_edges(spec: HistSpec) -> None:
    """The CPU kernel's lookup-table binning and the queued bucketize/histc path give the
    counts of the definition (bucketize over the float32 edges) exactly: on the edges
    themselves, one float32 step either side of each, zeros, denormals, infinities and NaN."""
    spec = dataclasses.replace(spec, sample=10**6)  # every value binned
    edges = torch.tensor(spec.edges(), dtype=torch.float32)
    up, down = torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1)
    mags = torch.cat([edges, up, down, torch.logspace(-44, 38, 30001), torch.tensor([0.0, 1e-45, 3e38, 3.4e38])])
    x = torch.cat([mags, -mags, torch.tensor([float("inf"), -float("inf"), float("nan"), -float("nan")])])
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    rows = [x[:5000], x[5000:5001], x[5001:]]
    expected = []
    for r in rows:
        c = hist_codes(r, edges)
        expected.append(torch.bincount((c[~torch.isnan(c)] + spec.k + 2).long(), minlength=spec.n_bins))
    expected = torch.cat(expected).double()
    assert expected.sum() == len(x) - 2
    cpu = CpuReducer(spec)
    kernel = np.concatenate([cpu.hist(CpuReducer.host(r))[:-1] for r in rows])
    np.testing.assert_array_equal(kernel, expected.numpy())
    assert sum(cpu.hist(CpuReducer.host(r))[-1] for r in rows) == 2  # the NaN column
    assert torch.equal(Binner(spec)(torch.cat(rows), [len(r) for r in rows]), expected)


def test_update_and_grad_ratios_match_direct_computation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tel = Telemetry(model, TelemetryConfig(hist=None))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with tel.record():
        model(torch.randn(16, 30)).pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    tel.before_step()
    opt.step()
    tel.after_step(True)
    stats, _ = tel.collect(0)
    def row(kind: str, layer: str, pname: str) -> int:
        mask = (stats["kind"] == kind) & (stats["layer"] == layer) & (stats["param"] == pname)
        return int(np.flatnonzero(mask)[0])

    for name, p in model.named_parameters():
        layer, pname = name.rsplit(".", 1)
        w_std = p.detach().std().item()
        upd = (p.detach() - before[name]).std().item()
        assert stats["std"][row("weight", layer, pname)] == pytest.approx(w_std, rel=1e-5)
        assert stats["ratio"][row("update", layer, pname)] == pytest.approx(upd / w_std, rel=1e-4)
        assert stats["ratio"][row("weight_grad", layer, pname)] == pytest.approx(grads[name].std().item() / w_std, rel=1e-4)
        assert stats["layer_idx"][row("weight", layer, pname)] == int(layer)


def test_batchnorm_running_and_batch_statistics() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    model = nn.Sequential(bn)
    tel = Telemetry(model, TelemetryConfig(params=False, hist=None))
    x = torch.randn(8, 4, 5, 5) * 3 + 2
    with tel.record():
        model(x)
    stats, _ = tel.collect(0)
    row = lambda kind: np.flatnonzero(stats["kind"] == kind)[0]  # noqa: E731
    batch_mean = x.mean(dim=(0, 2, 3))
    batch_var = x.var(dim=(0, 2, 3), unbiased=True)
    assert stats["mean"][row("bn_batch_mean")] == pytest.approx(batch_mean.mean().item(), rel=1e-4)
    assert stats["mean"][row("bn_batch_var")] == pytest.approx(batch_var.mean().item(), rel=1e-4)
    assert stats["mean"][row("bn_running_mean")] == pytest.approx(bn.running_mean.mean().item(), rel=1e-5)
    assert stats["max"][row("bn_running_var")] == pytest.approx(bn.running_var.max().item(), rel=1e-5)


def test_hooks_record_in_forward_order_then_vanish() -> None:
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    tel = Telemetry(model, TelemetryConfig(params=False))
    x = torch.randn(11, 5)
    with tel.record():
        model(x).pow(2).mean().backward()
    stats, _ = tel.collect(step=3)
    assert (stats["step"] == 3).all()
    act = stats["kind"] == "act"
    assert list(stats["module_type"][act]) == ["Linear", "Tanh", "Linear"]
    assert list(stats["layer_idx"][act]) == [0, 1, 2]
    model(x).sum().backward()  # outside record(): no hooks, nothing pending
    assert tel.collect(step=4) is None
    assert all(not m._forward_hooks for m in model.modules())


def test_module_filter() -> None:
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    assert [n for n, _ in Telemetry(model, TelemetryConfig(modules=["ReLU"])).modules] == ["1"]
    assert [n for n, _ in Telemetry(model, TelemetryConfig(modules=["2"])).modules] == ["2"]


def test_first_nonfinite_picks_the_earliest_layer() -> None:
    cols = {"kind": np.array(["act", "act", "grad", "act"], dtype=object),
            "nonfinite": np.array([0, 3, 5, 9]), "numel": np.array([4, 4, 4, 4]), "mean": np.zeros(4),
            "layer_idx": np.array([0, 4, 1, 2]),
            "layer": np.array(["a", "e", "b", "c"], dtype=object)}
    assert first_nonfinite(cols) == ("c", 2)
    assert first_nonfinite(None) is None


def test_schedule() -> None:
    sched = Schedule(total=100, first=5, every=20)
    assert [s for s in range(100) if sched(s)] == [0, 1, 2, 3, 4, 20, 40, 60, 80, 99]
    logsched = Schedule(total=1000, first=20, every=1000, log_points=20)
    logged = [s for s in range(1000) if logsched(s)]
    assert logged[:20] == list(range(20)) and 999 in logged and len(logged) < 45


def test_schedule_counts_its_logged_steps() -> None:
    """Schedule.count() (what CpuPath plans with) equals counting step by step."""
    import itertools

    for total, first, every, points in itertools.product(
            [0, 1, 2, 5, 10, 37, 100, 1000, 4097], [0, 1, 3, 10, 50], [1, 2, 7, 50, 1000], [0, 5, 20]):
        sched = Schedule(total, first, every, points)
        assert sched.count() == sum(sched(s) for s in range(total)), (total, first, every, points)
    assert Schedule(None, 5, 20).count() is None


@pytest.mark.parametrize("module", [nn.ReLU(), nn.LeakyReLU(), nn.Tanh(), nn.Sigmoid(), None])
def test_queued_rows_reduced_together_equal_each_alone(module) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 6, 3, 3, generator=g) * 4
    x = module(x) if module is not None else x
    dead = dead_region(module, THRESH)
    alone = tensor_stats(x, dead)
    y = torch.randn(16, 6, 3, 3, generator=g)
    grouped = group_stats([y, x, y * 0], [None, dead, None])
    torch.testing.assert_close(grouped[1], alone, rtol=1e-5, atol=1e-7, equal_nan=True)
    torch.testing.assert_close(grouped[0], tensor_stats(y), rtol=1e-5, atol=1e-7, equal_nan=True)
    assert grouped[2, 4] == 1.0 and grouped[2, 1] == 0.0  # all zeros: zero_frac 1, std 0


@pytest.mark.parametrize("module", [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(), nn.GELU(), nn.Tanh(), nn.Sigmoid(), None],
                         ids=["relu", "relu6", "leaky", "gelu", "tanh", "sigmoid", "plain"])
@pytest.mark.parametrize("shape", [(64, 8, 4, 4), (64, 100), (5000,), (3, 2, 7, 1, 5), (2, 4096)],
                         ids=["4d", "2d", "1d", "5d", "whole-rows"])  # 1d, 2d: the plain kernel's rows of 4096, the last shorter
def test_kernel_row_equals_exact_statistics(module, shape) -> None:
    """The CPU kernel's row equals the exact centred tensor-op computation,
    dead fraction and dead units included."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g) * 3
    if len(shape) > 1:
        x[:, 1] = -10.0  # a unit that never fires (or saturates)
    x = module(x) if module is not None else x
    dead = dead_region(module, THRESH)
    exact = tensor_stats(x, dead).numpy()
    row = _row(x, queued=False, dead=dead)
    np.testing.assert_allclose(row, exact, rtol=1e-5, atol=1e-7)
    if dead is not None and len(shape) > 1:  # GELU has no dead region (acts.py): no dead count at all
        assert row[STATS.index("dead_units")] >= 1 / shape[1]
    if isinstance(module, nn.GELU):
        assert dead is None and np.isnan(row[STATS.index("dead_units")])


@pytest.mark.parametrize("case", ["mean-dominated", "constant", "tiny", "float64", "half", "transposed", "empty",
                                  "nan", "inf"])
def test_kernel_row_edge_cases(case: str) -> None:
    """Where the float64 sums would cancel (a mean 10^5 times the spread, a constant) the
    kernel path centres; other dtypes and layouts are read as float32; non-finite values and
    empty tensors take the exact path."""
    g = torch.Generator().manual_seed(2)
    x = {
        "mean-dominated": 1e5 + torch.randn(300, 7, generator=g),
        "constant": torch.full((64, 9), 0.3),
        "tiny": torch.randn(50, 4, generator=g) * 1e-30,
        "float64": torch.randn(40, 5, generator=g, dtype=torch.float64),
        "half": torch.randn(40, 5, generator=g).half(),
        "transposed": torch.randn(5, 40, generator=g).t(),
        "empty": torch.zeros(0, 4),
        "nan": torch.tensor([[1.0, float("nan")], [0.0, 2.0]]),
        "inf": torch.tensor([[1.0, float("inf")], [0.0, -float("inf")]]),
    }[case]
    dead = dead_region(nn.ReLU(), THRESH)
    row = _row(x, queued=False, dead=dead)
    ref = x.double() if x.dtype == torch.float64 else x.float().double()
    if case in ("nan", "inf"):
        assert row[STATS.index("nonfinite")] == (~torch.isfinite(x)).sum().item()
        assert not math.isfinite(row[0])
    elif case == "empty":
        assert row[STATS.index("numel")] == 0
    else:
        assert row[0] == pytest.approx(ref.mean().item(), rel=1e-6, abs=1e-37)
        assert row[1] == pytest.approx(ref.std().item(), rel=1e-5, abs=1e-37)
        assert row[2] == pytest.approx(ref.min().item()) and row[3] == pytest.approx(ref.max().item())
        unit_dead = (ref <= 0).all(dim=0).double().mean().item()
        assert row[STATS.index("dead_units")] == pytest.approx(unit_dead)


def test_queued_device_path_equals_cpu_path() -> None:
    """The path CUDA/MPS take (every statistic a queued tensor op, one transfer), forced on
    the CPU, gives the CPU path's rows: same stats, ratios and histogram counts."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Tanh(),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 10), nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(32, 3, 10, 10)
    out = {}
    for queued in (False, True):
        model.load_state_dict(dict(state := {k: v.clone() for k, v in model.state_dict().items()}))
        opt.state.clear()
        opt.zero_grad(set_to_none=True)
        tel = Telemetry(model, TelemetryConfig(thresholds=THRESH), queued=queued)
        with tel.record():
            model(x).sum().backward()
        tel.before_step()
        opt.step()
        tel.after_step(True)
        out[queued] = tel.collect(0)
        model.load_state_dict(state)
    (cpu, cpu_hist), (queued, queued_hist) = out[False], out[True]
    assert list(cpu["kind"]) == list(queued["kind"]) and {"update", "bn_batch_var", "grad"} <= set(cpu["kind"])
    for col in (*STATS, "absmax", "norm", "ratio"):
        bad = ~np.isclose(queued[col], cpu[col], rtol=1e-4, atol=1e-6, equal_nan=True)
        assert not bad.any(), (col, list(zip(cpu["kind"][bad], cpu["layer"][bad], queued[col][bad], cpu[col][bad])))
    np.testing.assert_array_equal(queued_hist["count"], cpu_hist["count"])


@pytest.mark.parametrize("queued", [False, True], ids=["cpu-kernels", "queued-ops"])
def test_every_act_and_grad_row_matches_torch(queued: bool) -> None:
    """Large and small tensors, same-shaped ones reduced together on the queued path: each
    row equals its own torch statistics, zeros counted for gradients too."""
    torch.manual_seed(0)
    layers = [m for _ in range(4) for m in (nn.Linear(8, 8), nn.ReLU())]
    model = nn.Sequential(nn.Linear(8, 300), nn.ReLU(), nn.Linear(300, 8), *layers, nn.Tanh())
    tel = Telemetry(model, TelemetryConfig(thresholds=THRESH), queued=queued)
    outs: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        outs.append(out)

    hooks = [m.register_forward_hook(keep) for m in model]
    with tel.record():
        model(torch.randn(64, 8)).sum().backward()
    for h in hooks:
        h.remove()
    stats, _ = tel.collect(0)
    assert len(stats["kind"]) == len(set(zip(stats["kind"], stats["layer"], stats["param"])))  # no duplicates
    for idx, out in enumerate(outs):
        for kind, ref in (("act", out.detach()), ("grad", out.grad)):
            i = np.flatnonzero((stats["kind"] == kind) & (stats["layer_idx"] == idx))
            assert len(i) == 1, (kind, idx)
            assert stats["std"][i[0]] == pytest.approx(ref.std().item(), rel=1e-4, abs=1e-7)
            assert stats["mean"][i[0]] == pytest.approx(ref.mean().item(), rel=1e-4, abs=1e-7)
            assert stats["max"][i[0]] == pytest.approx(ref.max().item())
            assert stats["zero_frac"][i[0]] == pytest.approx((ref == 0).float().mean().item())
    relu = np.flatnonzero((stats["kind"] == "act") & (stats["module_type"] == "ReLU"))
    np.testing.assert_allclose(stats["dead_frac"][relu], [(outs[i] <= 0).float().mean().item()
                                                          for i in stats["layer_idx"][relu]])


@pytest.mark.parametrize("path", ["kernels", "tensor"])
def test_param_rows_centre_where_the_mean_dwarfs_the_spread(path: str) -> None:
    """Weights near a large mean (1e5 +- 0.1) and an update that is mostly its mean (every
    bias moved by 1 +- 1e-6) keep an exact std on both paths (the float64 sums alone would
    lose it), and a constant tensor has std 0 exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.BatchNorm1d(256))
    with torch.no_grad():
        model[0].weight.mul_(2).add_(1e5)
        model[0].bias.fill_(0.1)
    tel = Telemetry(model, TelemetryConfig(hist=None), path=CpuPath(start=path))
    with tel.record():
        model(torch.randn(4, 256)).sum().backward()
    before = model[0].bias.detach().clone()
    tel.before_step()
    with torch.no_grad():
        model[0].bias.add_(1.0 + 1e-6 * torch.randn(256))
    tel.after_step(True)
    stats, _ = tel.collect(0)
    w, b = model[0].weight.detach().double(), model[0].bias.detach()

    def row(kind: str, param: str) -> int:
        return int(np.flatnonzero((stats["kind"] == kind) & (stats["param"] == param))[0])

    upd = (b - before).double()
    assert stats["mean"][row("update", "bias")] == pytest.approx(upd.mean().item(), rel=1e-9)
    assert stats["std"][row("update", "bias")] == pytest.approx(upd.std().item(), rel=1e-6)
    assert stats["std"][row("weight", "weight")] == pytest.approx(w.std().item(), rel=1e-6)
    bn_weight = np.flatnonzero((stats["kind"] == "weight") & (stats["layer"] == "1") & (stats["param"] == "weight"))
    assert stats["std"][bn_weight].tolist() == [0.0] and stats["mean"][bn_weight].tolist() == [1.0]


def test_without_numba_the_cpu_takes_the_tensor_op_path(monkeypatch) -> None:
    """Where numba cannot be imported the CPU runs the queued tensor ops, even when the
    kernels are asked for: same rows."""
    from initlab.telemetry import reducers

    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh())
    x = torch.randn(9, 6)
    out = {}
    for name in ("kernels", "no numba"):
        if name == "no numba":
            monkeypatch.setattr(reducers, "_kernels", False)  # what a failed `import numba` leaves
        tel = Telemetry(model, TelemetryConfig(thresholds=THRESH), path=CpuPath(start="kernels"))
        assert (tel._cpu is None) == (name == "no numba")
        with tel.record():
            model(x).sum().backward()
        tel.before_step()
        tel.after_step(False)
        out[name] = tel.collect(0)
        model.zero_grad()
    (a, a_hist), (b, b_hist) = out["kernels"], out["no numba"]
    for col in ("mean", "std", "min", "max", "zero_frac", "dead_frac", "nonfinite"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(a_hist["count"], b_hist["count"])


def test_cpu_path_takes_the_kernels_once_they_pay(fresh_process) -> None:
    """In a fresh process the CPU starts on tensor ops. With the run's length known, the
    kernels take over after the first logged step whose cost times the logged steps still
    ahead reaches the cost of loading them; with it unknown, once the steps done have cost
    that much."""
    reducers = fresh_process
    budget = reducers.KERNEL_LOAD_ROWS
    short, long = CpuPath(steps=10), CpuPath(steps=100)
    rows = budget // 20  # 9 steps ahead cost 0.45 budgets, 99 steps 4.95
    assert not short.kernels and not long.kernels
    assert [short.step_done(rows, 0) for _ in range(10)] == [False] * 10
    assert long.step_done(rows, 0) is True and long.kernels
    reducers._kernels, reducers._process_spent = None, 0.0  # fresh again
    elements = -(-budget * reducers.ROW_ELEMENTS // 3)  # a third of a budget a step, in elements only
    unknown = CpuPath()
    assert [unknown.step_done(0, elements) for _ in range(4)] == [False, False, True, True]
    assert CpuPath(start="tensor").step_done(10 * budget, 0) is False  # forced: never
    with pytest.raises(ValueError, match="auto, kernels or tensor"):
        CpuPath(start="numba")


def test_short_runs_of_one_process_share_the_cost_of_the_kernels(fresh_process) -> None:
    """Many short runs in one process (a notebook, a sweep on the basic launcher): each is too
    short to pay for the kernels, but once the process has spent their cost on tensor ops
    they load, and every later run takes them from its first step."""
    reducers = fresh_process
    rows = -(-reducers.KERNEL_LOAD_ROWS // 8)  # a step of an eighth of the budget; 2 logged steps a run
    runs = []  # which steps of each run the kernels reduce
    for _ in range(6):
        path, on_kernels = CpuPath(steps=2), []
        for _step in range(2):
            on_kernels.append(path.kernels)
            path.step_done(rows, 0)
        runs.append(on_kernels)
    assert runs == [[False, False]] * 4 + [[True, True]] * 2  # the 8th step's cost reached the budget
    assert reducers._kernels
    assert CpuPath(start="tensor").kernels is False  # a forced path is its own
    assert CpuPath().for_work(1, 0)  # a stacked probe takes the loaded kernels too


def test_a_stacked_probe_loads_the_kernels_when_its_work_pays(fresh_process) -> None:
    budget = fresh_process.KERNEL_LOAD_ROWS
    assert not CpuPath().for_work(budget - 1, 0)
    assert CpuPath().for_work(budget, 0)


def test_a_run_moves_to_the_kernels_between_steps_with_the_same_rows(monkeypatch, fresh_process) -> None:
    """Through `Watch` (the CLI's recorder): a run of 3 logged steps whose steps ahead pay for
    the kernels takes step 0 as tensor ops and steps 1-2 on the kernels; its rows equal a
    run on the kernels throughout; a 1-step run never loads them."""
    from initlab.record.watcher import Watch
    from initlab.telemetry import reducers

    def run(start: str | None, steps: int) -> tuple[list[bool], list]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        w = Watch(model, opt, telemetry="full", total_steps=steps,
                  cpu_path=CpuPath(steps, start) if start else None)
        on_kernels = []
        for step in range(steps):
            on_kernels.append(w.telemetry._cpu is not None)
            with w.step(step):
                loss = model(torch.randn(8, 12, generator=torch.Generator().manual_seed(step))).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        w.flush()
        return on_kernels, w.collected

    per_step = 2 * 3 + 3 * 4  # act and grad of 3 modules; weight, weight_grad and update of 4 parameters
    monkeypatch.setattr(reducers, "KERNEL_LOAD_ROWS", 2 * per_step)  # the 2 steps ahead of step 0 pay
    moved, got = run(None, 3)
    assert moved == [False, True, True]
    always, ref = run("kernels", 3)
    assert always == [True, True, True] and len(got) == len(ref) == 3
    for (a, _), (b, _) in zip(got, ref):
        assert list(a["kind"]) == list(b["kind"]) and list(a["layer"]) == list(b["layer"])
        for col in ("mean", "std", "min", "max", "zero_frac", "dead_frac"):
            np.testing.assert_allclose(a[col], b[col], rtol=1e-5, atol=1e-7, err_msg=col)
    monkeypatch.setattr(reducers, "_kernels", None)  # the "kernels" run loaded them
    assert run(None, 1)[0] == [False]


def test_the_tensor_path_counts_what_comparisons_count() -> None:
    """The tensor-op path counts zeros, dead and saturated values and non-finite values as
    float sums of 0/1 elements: the same integers as x == 0, x <= 0, |x - c| > w and
    ~isfinite count, with NaN, ±inf, -0.0 and subnormals among the values, rows reduced
    together."""
    from initlab.telemetry.reducers import DeadRegion, group_stats

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, 3, 5, generator=g) for _ in range(3)]
    xs[0][0, 0, :3] = torch.tensor([0.0, -0.0, 1e-44])
    xs[1][1, 2, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0])
    xs[2] = torch.relu(xs[2])
    rows = group_stats(xs, [DeadRegion(relu=True)] * 3)
    names = ["mean", "std", "min", "max", "zero_frac", "dead_frac", "dead_units", "nonfinite", "numel"]
    for x, row in zip(xs, rows):
        r = dict(zip(names, row.tolist()))
        n = x.numel()
        assert r["zero_frac"] == (x == 0).sum().item() / n
        assert r["nonfinite"] == (~torch.isfinite(x)).sum().item()
        assert r["dead_frac"] == (x <= 0).sum().item() / n  # relu: x <= 0 is dead (NaN is not)
    band = DeadRegion(False, 0.5, 0.47)  # a sigmoid's: |x - 0.5| > 0.47 is saturated
    for x, row in zip(xs, group_stats(xs, [band] * 3)):
        assert dict(zip(names, row.tolist()))["dead_frac"] == ((x - 0.5).abs() > 0.47).sum().item() / x.numel()
