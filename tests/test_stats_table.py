"""The declared statistics table (initlab/telemetry/stats.py) against every path that computes
it: a statistic declared but missing from a path, or computed in the wrong place of its row,
fails here; so does one a path computes that no test below knows how to check."""

import numpy as np
import pytest
import torch
from torch import nn

from initlab.record.watcher import watch
from initlab.report.tensorboard import LAYER_STATS
from initlab.telemetry import CpuReducer, dead_region, param_rows, tensor_stats
from initlab.telemetry.columns import Slot, stats_columns
from initlab.telemetry.reducers import load_kernels, stacked_stats
from initlab.telemetry.stats import BY_NAME, DERIVED, INTEGER, NOT_FOR_PARAMS, STATS, TABLE

THRESH = {"tanh": 0.97, "sigmoid_low": 0.03, "sigmoid_high": 0.97}


def _dead(x: torch.Tensor) -> torch.Tensor:
    return x <= 0  # ReLU's region


# Each reduced statistic computed directly from an activation (a ReLU output [B, C, H, W]).
DIRECT = {
    "mean": lambda x: x.double().mean(),
    "std": lambda x: x.double().std(),
    "min": lambda x: x.min(),
    "max": lambda x: x.max(),
    "zero_frac": lambda x: (x == 0).double().mean(),
    "dead_frac": lambda x: _dead(x).double().mean(),
    "dead_units": lambda x: _dead(x).all(dim=0).all(dim=-1).all(dim=-1).double().mean(),
    "nonfinite": lambda x: (~torch.isfinite(x)).sum(),
    "numel": lambda x: x.numel(),
}


def _activation() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, 5, 5, generator=g)
    x[:, 2] = -1.0  # a dead channel
    return torch.relu(x)


def _paths(x: torch.Tensor) -> dict[str, np.ndarray]:
    dead = dead_region(nn.ReLU(), THRESH)
    rows = {"tensor ops": tensor_stats(x, dead).numpy(), "stacked": stacked_stats(x[None], dead)[0].numpy()}
    if load_kernels() is not None:
        rows["numba kernels"] = np.array(CpuReducer(None).act_row(x, dead)[0])
    return rows


def test_every_reduced_statistic_has_a_direct_check() -> None:
    assert set(DIRECT) == set(STATS)
    assert set(STATS) | set(DERIVED) == set(BY_NAME) and len(TABLE) == len(BY_NAME)


@pytest.mark.parametrize("stat", STATS)
def test_every_path_computes_each_statistic_in_its_place(stat: str) -> None:
    x = _activation()
    expected = float(DIRECT[stat](x))
    for path, row in _paths(x).items():
        assert len(row) == len(STATS), path
        assert row[STATS.index(stat)] == pytest.approx(expected, rel=1e-6, abs=1e-9), (path, stat)


def test_parameter_rows_leave_out_what_parameters_do_not_record() -> None:
    w = torch.randn(8, 4)
    rows = {"tensor ops": param_rows([w])[0].numpy()}
    if load_kernels() is not None:
        rows["numba kernels"] = np.array(CpuReducer(None).param_row(w))
    for path, row in rows.items():
        assert len(row) == len(STATS), path
        for stat in STATS:
            value = row[STATS.index(stat)]
            if stat in NOT_FOR_PARAMS:
                assert np.isnan(value), (path, stat)
            else:
                assert value == pytest.approx(float(DIRECT[stat](w)), rel=1e-6, abs=1e-9), (path, stat)


def test_the_columns_hold_every_declared_statistic_with_its_dtype() -> None:
    x = _activation()
    row = tensor_stats(x, dead_region(nn.ReLU(), THRESH)).numpy()
    cols = stats_columns(0, [Slot("relu", "ReLU", 0)], ["act"], [None], np.array([1]), row[None], 0)
    for stat in TABLE:
        assert stat.name in cols, stat.name
        assert (cols[stat.name].dtype == np.int64) is (stat.name in INTEGER), stat.name
    assert cols["absmax"][0] == pytest.approx(float(x.abs().max()))
    assert cols["norm"][0] == pytest.approx(float(x.double().norm()), rel=1e-5)  # from float32 mean and std


def test_a_watched_steps_rows_have_every_declared_column() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, out=None, telemetry="full") as w:
        with w.step(0):
            loss = model(torch.randn(5, 4)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    stats, _hist = w.collected[0]
    assert set(BY_NAME) <= set(stats)


def test_the_tensorboard_export_names_only_declared_statistics() -> None:
    assert {s for names in LAYER_STATS.values() for s in names} <= set(BY_NAME)
