"""Every statistic equals a direct torch computation on known tensors."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from initlab.telemetry import STATS, Telemetry, first_nonfinite, is_logged, tensor_stats


def _stats(x: torch.Tensor) -> dict[str, float]:
    return dict(zip(STATS, tensor_stats(x).tolist()))


def test_stats_match_torch() -> None:
    x = torch.randn(64, 32).clamp_min(0)  # about half exactly zero
    s = _stats(x)
    assert s["mean"] == pytest.approx(x.mean().item(), rel=1e-5)
    assert s["std"] == pytest.approx(x.std().item(), rel=1e-5)
    assert s["min"] == x.min().item() and s["max"] == x.max().item()
    assert s["zero_frac"] == pytest.approx((x == 0).float().mean().item())
    assert s["nonfinite"] == 0 and s["numel"] == x.numel()


def test_huge_finite_values_keep_a_finite_std() -> None:
    # Float32 squares overflow above ~1.8e19; the 100-layer lesson reaches 1e37.
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 1e36
    s = _stats(x)
    ref = x.double().std().item()
    assert math.isfinite(s["std"]) and s["std"] == pytest.approx(ref, rel=1e-4)
    assert s["mean"] == pytest.approx(x.double().mean().item(), rel=1e-3, abs=ref * 1e-4)


def test_nonfinite_values_are_counted_and_propagate() -> None:
    x = torch.tensor([1.0, float("inf"), float("nan"), 0.0])
    s = _stats(x)
    assert s["nonfinite"] == 2
    assert s["zero_frac"] == 0.25
    assert not math.isfinite(s["std"]) and not math.isfinite(s["mean"])


def test_hooks_record_act_and_grad_in_forward_order_then_vanish() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    tel = Telemetry(model)
    x = torch.randn(11, 5)
    outs: dict[str, torch.Tensor] = {}
    with tel.record():
        h = model[0](x)
        h.retain_grad()
        a = model[1](h)
        a.retain_grad()
        out = model[2](a)
        out.retain_grad()
        outs = {"0": h, "1": a, "2": out}
        (out**2).mean().backward()
    cols = tel.collect(step=3)
    assert cols is not None and set(cols["kind"]) == {"act", "grad"}
    assert (cols["step"] == 3).all()
    for i in range(len(cols["layer"])):
        t = outs[cols["layer"][i]]
        ref = t if cols["kind"][i] == "act" else t.grad
        assert cols["std"][i] == pytest.approx(ref.std().item(), rel=1e-5)
        assert cols["layer_idx"][i] == int(cols["layer"][i])
    assert list(cols["module_type"][cols["kind"] == "act"]) == ["Linear", "Tanh", "Linear"]
    # Outside record(): no hooks, nothing pending.
    model(x).sum().backward()
    assert tel.collect(step=4) is None
    assert all(not m._forward_hooks for m in model.modules())


def test_first_nonfinite_picks_the_earliest_layer() -> None:
    cols = {"kind": np.array(["act", "act", "grad", "act"], dtype=object),
            "nonfinite": np.array([0, 3, 5, 9]), "layer_idx": np.array([0, 4, 1, 2]),
            "layer": np.array(["a", "e", "b", "c"], dtype=object)}
    assert first_nonfinite(cols) == ("c", 2)
    assert first_nonfinite(None) is None


def test_schedule() -> None:
    logged = [s for s in range(100) if is_logged(s, last=99, first=5, every=20)]
    assert logged == [0, 1, 2, 3, 4, 20, 40, 60, 80, 99]
