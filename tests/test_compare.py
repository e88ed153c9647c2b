"""Comparing one's own runs: `initlab.load_runs` (a table like a sweep's) and
`initlab-report --compare RUN RUN ... --out DIR` (a sweep's figures for them)."""

from pathlib import Path

import pandas as pd
import pytest
import torch

import initlab
from initlab.report.cli import main as report_main
from tests.scripts.ddp_reference import train_watched


def _watched(out: Path, lr: float, tags: list[str]) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)) for _ in range(12)]
    train_watched(model, torch.optim.SGD(model.parameters(), lr=lr), batches, out,
                  config={"lr": lr, "note": "same"}, tags=tags, telemetry={"first": 0, "every": 5})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    _watched(root / "slow", 0.01, ["baseline"])
    _watched(root / "fast", 0.5, ["hot"])
    return root


def test_load_runs_is_one_table_with_the_keys_the_configs_differ_on(two_runs: Path) -> None:
    df = initlab.load_runs(str(two_runs / "*"))
    assert list(df["run"]) == ["fast", "slow"]  # a glob, sorted
    assert {"lr", "tags"} <= set(df.columns) and "note" not in df.columns  # only what differs
    assert dict(zip(df["run"], df["lr"])) == {"fast": 0.5, "slow": 0.01}
    assert set(df["status"]) == {"ok"} and df["final_loss"].notna().all()
    assert list(initlab.load_runs([two_runs / "slow", two_runs / "fast"])["run"]) == ["slow", "fast"]  # order given
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        initlab.load_runs([two_runs])


def test_report_compare_draws_the_sweep_figures_for_the_runs(two_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert report_main(["--compare", str(two_runs / "slow"), str(two_runs / "fast"), "--out", str(out)]) == 0
    table = pd.read_parquet(out / "runs.parquet")
    assert list(table["run"]) == ["slow", "fast"]
    drawn = sorted(p.name for p in (out / "plots").iterdir())
    assert drawn == ["grid_final_loss.png", "loss_curves.png", "step0_std_overlay.png"], drawn


def test_report_compare_refuses_in_one_line(two_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert report_main(["--compare", str(two_runs / "slow"), "--out", str(tmp_path / "one")]) == 2
    assert report_main(["--compare", str(two_runs / "slow"), str(two_runs / "fast"), "--out", str(two_runs / "slow")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "needs two runs" in err[0] and "holds a run" in err[1]
    assert not (tmp_path / "one").exists()
