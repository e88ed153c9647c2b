"""telemetry.formats: each format's zero, subnormal and overflow counts equal a real cast's, on
tensors built to straddle every rounding boundary, through the tensor-op path, the CPU kernels'
path and the stacked probe."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import initlab
from initlab.errors import ConfigError
from initlab.probe import probe_draws, probe_stacked
from initlab.telemetry import TelemetryConfig
from initlab.telemetry.formats import DTYPES, OUTCOMES, format_columns, format_rows, formats_of
from initlab.telemetry.reducers import CpuPath, load_kernels
from tests.conftest import watched_steps

NAMES = ["fp16", "bf16", "e4m3", "e5m2"]
FORMATS = formats_of(NAMES)


def _steps(x: torch.Tensor, k: int) -> torch.Tensor:
    toward = torch.tensor(0.0 if k < 0 else float("inf"))
    for _ in range(abs(k)):
        x = torch.nextafter(x, toward)
    return x


def straddling() -> torch.Tensor:
    """Every format's rounding midpoints and the float32 values three steps either side of
    them, both signs, with zeros, infinities, NaN and ordinary values."""
    xs = [float(_steps(torch.tensor(b, dtype=torch.float32), k)) for f in FORMATS
          for b in (f.zero, f.normal, f.overflow) for k in range(-3, 4)]
    xs += [0.0, 1.0, 3.0, 1e-30, 1e-45, 3e38, 1e-8, 448.0, 449.0, 57344.0, float("inf"), float("nan")]
    return torch.tensor(xs + [-v for v in xs], dtype=torch.float32)


def cast_counts(x: torch.Tensor, name: str) -> dict[str, float]:
    """The fractions by casting: flushed (a non-zero that casts to 0), subnormal (casts under the
    smallest normal), overflow (casts to inf; e4m3fn has no inf and torch's cast saturates, or gives
    NaN before torch 2.3, so its rounding is read by casting x/4, exact in its normal range, and
    scaling back)."""
    dt, fi = DTYPES[name], torch.finfo(DTYPES[name])
    a = x.abs().float()
    live = torch.isfinite(a) & (a > 0)
    c = a.to(dt).float()
    if name == "e4m3":  # a/4 is in e4m3's normal range for 256 < a <= 1792; beyond it every value overflows
        over = (a > 1792) | ((a > 256) & ((a / 4).to(dt).float() * 4 > fi.max))
    else:
        over = torch.isinf(c)
    n = int(live.sum())
    return {"zero": int((live & (c == 0)).sum()) / n, "subnormal": int((live & (c > 0) & (c < fi.tiny)).sum()) / n,
            "overflow": int((live & over).sum()) / n}


def test_counts_equal_a_real_cast_at_every_boundary() -> None:
    x = straddling()
    cols = format_columns(format_rows([x], FORMATS).numpy(), FORMATS)
    for name in NAMES:
        want = cast_counts(x, name)
        for outcome in OUTCOMES:
            assert cols[f"{name}_{outcome}"][0] == want[outcome], (name, outcome)
    live = x[torch.isfinite(x) & (x != 0)].abs()
    assert cols["amax"][0] == float(live.max()) and cols["amin"][0] == float(live.min())
    assert cols["range_bits"][0] == pytest.approx(np.log2(float(live.max()) / float(live.min())))


def test_half_precision_values_and_several_rows_at_once() -> None:
    x = straddling()
    halves = [x.to(torch.float16), x.to(torch.bfloat16)]
    cols = format_columns(format_rows([x, *halves, torch.zeros(3)], FORMATS).numpy(), FORMATS)
    for i, t in enumerate([x, *halves]):
        for name in NAMES:
            assert cols[f"{name}_zero"][i] == cast_counts(t.float(), name)["zero"]
    assert np.isnan(cols["fp16_zero"][3]) and np.isnan(cols["amax"][3])  # no non-zero values: no fraction


def test_an_unknown_format_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"telemetry.formats=\['fp8'\] is invalid: expected names from fp16, bf16"):
        formats_of(["fp8"])


def test_recorded_activations_equal_a_real_cast_on_both_paths() -> None:
    values = straddling().nan_to_num(0.0, 0.0, 0.0)

    class Emit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Linear(1, 1, bias=False)
            nn.init.ones_(self.scale.weight)
            self.out = nn.Dropout(0.0)  # a tracked module that passes the values through

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.scale(x) * values)

    per_path = {}
    for path in (["tensor", "kernels"] if load_kernels() is not None else ["tensor"]):
        model = Emit()
        w = initlab.record.watcher.Watch(model, telemetry={"formats": NAMES, "hist": None, "modules": ["out", "scale"]},
                                         cpu_path=CpuPath(start=path))
        with w.step(0):
            model(torch.ones(1, 1)).sum().backward()
        w.flush()
        stats = pd.DataFrame(w.collected[0][0])
        per_path[path] = stats
        act = stats[(stats["kind"] == "act") & (stats["layer"] == "out")].iloc[0]
        for name in NAMES:
            want = cast_counts(values, name)
            for outcome in OUTCOMES:
                assert act[f"{name}_{outcome}"] == want[outcome], (path, name, outcome)
    cols = [c for c in per_path["tensor"] if c.split("_")[0] in NAMES or c in ("amax", "amin", "range_bits")]
    if "kernels" in per_path:
        pd.testing.assert_frame_equal(per_path["tensor"][cols], per_path["kernels"][cols])


def test_the_stacked_probe_gives_the_draw_by_draw_numbers() -> None:
    def make(init: str, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        with torch.no_grad():
            m[0].weight.mul_(1e-4)  # small enough that some values land in fp16's subnormals
        return m

    batch = (torch.randn(8, 16), torch.randint(0, 4, (8,)))
    cfg = TelemetryConfig.of({"formats": NAMES, "hist": None})
    draws = [("default", 0), ("default", 1)]
    stacked = probe_stacked(make, batch, draws, cfg, torch.device("cpu"))
    each = probe_draws(make, batch, draws, cfg, torch.device("cpu"))
    keys = ["init", "seed", "kind", "layer", "param"]
    cols = [f"{n}_{o}" for n in NAMES for o in OUTCOMES]
    a = stacked.sort_values(keys).reset_index(drop=True)
    b = each[each["kind"].isin(a["kind"].unique())].sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[keys + cols], b[keys + cols])
    assert (a["fp16_subnormal"] > 0).any()


def test_a_watch_on_your_own_model_records_them_to_disk(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with initlab.watch(model, opt, out=tmp_path / "r", plots=False, telemetry={"formats": ["fp16", "e4m3"]}) as w:
        watched_steps(w, model, opt, range(3), (16, 4))
    stats = initlab.load_run(tmp_path / "r").stats
    for kind in ("act", "grad", "weight", "weight_grad", "update"):
        rows = stats[stats["kind"] == kind]
        assert len(rows) and rows["fp16_zero"].notna().all() and rows["e4m3_overflow"].notna().all(), kind
    assert "bf16_zero" not in stats


@pytest.mark.skipif(load_kernels() is None, reason="numba kernels unavailable")
def test_the_cpu_kernel_gives_the_tensor_ops_numbers() -> None:
    from initlab.telemetry.formats import CpuFormats

    kernel = CpuFormats(load_kernels(), FORMATS)
    x = straddling()
    tensors = [x, x.to(torch.float16), torch.randn(1000) * 1e-6, torch.zeros(5), torch.empty(0), x[None, :].expand(3, -1)]
    for t in tensors:
        want = format_rows([t], FORMATS).numpy()
        got = kernel.rows([t]).numpy()
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(kernel.rows(tensors).numpy(), format_rows(tensors, FORMATS).numpy())
